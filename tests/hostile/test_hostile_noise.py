"""The noise detector against hostile inputs: `diffparity noise` answers an unreadable, foreign, pickled, huge or
oddly shaped input with one line and exit 2 (never a hang on a FIFO, never an unpickled .npy), and
`detect_noise` raises only FramesError for arrays it cannot judge; NaN/inf frames are judged (flagged, exit 1).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hostile_helpers import HOSTILE, assert_one_line_error, fails_fast, make_fifo, make_symlink_loop
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from harness.noise.detector import FramesError, detect_noise


def png_bytes(width: int = 16, height: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, with a tiny (wrong) image data chunk: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_declaring(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A .npy header for `shape` followed by 16 bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16


def _pickled_npy() -> bytes:
    import pickle

    original = pickle.dumps  # dumping is fine; the suite forbids loading
    return b"\x93NUMPY\x01\x00" + _npy_header_for_object() + original([1, 2, 3], protocol=3)


def _npy_header_for_object() -> bytes:
    header = repr({"descr": "|O", "fortran_order": False, "shape": (3,)}).encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return struct.pack("<H", len(header)) + header


FILE_CASES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "png-zero-bytes": ("x.png", lambda: b"", "not a readable image"),
    "png-truncated": ("x.png", lambda: png_bytes()[:60], "not a readable image"),
    "png-is-text": ("x.png", lambda: b"hello, not an image", "not a readable image"),
    "png-bomb": ("x.png", lambda: png_declaring(100_000, 100_000), "not a readable image"),
    "png-zero-size": ("x.png", lambda: png_declaring(0, 0), "not a readable image"),
    "png-non-utf8-name": ("\udcff.png", png_bytes, None),  # a name that is not UTF-8: judged like any other
    "npy-zero-bytes": ("x.npy", lambda: b"", "not a readable .npy array"),
    "npy-pickled-objects": ("x.npy", _pickled_npy, "not a readable .npy array"),
    "npy-object-array": ("x.npy", lambda: npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
                         "not a readable .npy array"),
    "npy-huge-shape": ("x.npy", lambda: npy_declaring((100_000, 100_000, 3)), "not a readable .npy array"),
    "npy-overflowing-shape": ("x.npy", lambda: npy_declaring((2**62, 2**62)), "not a readable .npy array"),
    "npy-truncated": ("x.npy", lambda: npy_bytes(np.zeros((32, 32), np.float32))[:200], "not a readable .npy array"),
    "npy-bad-header": ("x.npy", lambda: b"\x93NUMPY\x01\x00\x10\x00{'descr': __import__('os')}", "not a readable"),
    "npy-strings": ("x.npy", lambda: npy_bytes(np.array([["a", "b"], ["c", "d"]])), "are not numbers"),
    "npy-complex": ("x.npy", lambda: npy_bytes(np.ones((8, 8), np.complex64)), "are not numbers"),
    "npy-structured": ("x.npy", lambda: npy_bytes(np.zeros((8, 8), dtype=[("a", "f4"), ("b", "i4")])),
                       "are not numbers"),
    "npy-datetime": ("x.npy", lambda: npy_bytes(np.zeros((8, 8), dtype="datetime64[s]")), "are not numbers"),
    "npy-scalar": ("x.npy", lambda: npy_bytes(np.float32(1.0)), "frames of shape ()"),
    "npy-empty": ("x.npy", lambda: npy_bytes(np.zeros((0, 8), np.float32)), "are empty"),
    "npy-5d": ("x.npy", lambda: npy_bytes(np.zeros((2, 2, 2, 8, 8), np.float32)), "frames of shape (2, 2, 2, 8, 8)"),
    "npy-tiny": ("x.npy", lambda: npy_bytes(np.zeros((2, 2), np.float32)), "smaller than 4x4 pixels"),
    "npy-int-range": ("x.npy", lambda: npy_bytes(np.full((8, 8), 10**12, np.int64)), "expected 0..255"),
    "unknown-suffix": ("x.bin", png_bytes, "unsupported file type"),
}


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_noise_refuses_an_unreadable_input(name: str, tmp_path: Path, cli) -> None:
    filename, make, needle = FILE_CASES[name]
    path = tmp_path / filename
    path.write_bytes(make())
    with fails_fast(seconds=20.0):
        code, out, err = cli(["noise", str(path)])
    if needle is None:
        assert code in (0, 1) and "Traceback" not in err, err
    else:
        assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_frames_are_flagged_not_errors(value: float, tmp_path: Path, cli) -> None:
    array = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    array[3, 4, 1] = value
    path = tmp_path / "x.npy"
    path.write_bytes(npy_bytes(array))
    code, out, err = cli(["noise", str(path)])
    assert code == 1 and "non_finite" in out and not err.strip(), (out, err)


def _device(path: Path) -> None:
    os.symlink("/dev/zero", path)


def _folder_of_mixed_shapes(path: Path) -> None:
    path.mkdir()
    (path / "a.npy").write_bytes(npy_bytes(np.zeros((8, 8), np.float32)))
    (path / "b.npy").write_bytes(npy_bytes(np.zeros((8, 16), np.float32)))


def _folder_with_folder(path: Path) -> None:
    path.mkdir()
    (path / "a.png").write_bytes(png_bytes())
    (path / "b.png").mkdir()


def _empty_folder(path: Path) -> None:
    path.mkdir()


PATH_CASES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "fifo-png": ("x.png", make_fifo, "is not a regular file"),  # opening it would block forever
    "fifo-npy": ("x.npy", make_fifo, "is not a regular file"),
    "dev-zero-npy": ("x.npy", _device, "is not a regular file"),
    "symlink-loop": ("x.png", make_symlink_loop, "no such file or folder"),
    "mixed-shapes": ("frames", _folder_of_mixed_shapes, "frames of different shapes"),
    "folder-named-png": ("frames", _folder_with_folder, "is not a regular file"),
    "empty-folder": ("frames", _empty_folder, "holds no image or .npy frames"),
}


@pytest.mark.parametrize("name", list(PATH_CASES))
def test_noise_refuses_a_bad_path(name: str, tmp_path: Path, cli) -> None:
    filename, make, needle = PATH_CASES[name]
    path = tmp_path / filename
    make(path)
    with fails_fast(seconds=20.0):
        code, _, err = cli(["noise", str(path)])
    assert_one_line_error(code, err, needle)


def test_noise_long_path(tmp_path: Path, cli) -> None:
    code, _, err = cli(["noise", str(tmp_path / ("x" * 5000 + ".png"))])
    assert_one_line_error(code, err)


# ---- property-based ---------------------------------------------------------------------------------------------

_DTYPES = st.sampled_from(["uint8", "uint16", "int8", "int32", "int64", "float16", "float32", "float64", "bool"])
_SHAPES = st.lists(st.integers(0, 9), min_size=0, max_size=5).map(tuple)


@HOSTILE
@given(shape=_SHAPES, dtype=_DTYPES, fill=st.sampled_from(["zeros", "ones", "random", "nan", "huge", "negative"]),
       video=st.booleans())
def test_detect_noise_judges_or_raises_frames_error(shape: tuple[int, ...], dtype: str, fill: str,
                                                    video: bool) -> None:
    rng = np.random.default_rng(0)
    values = {"zeros": np.zeros(shape), "ones": np.ones(shape), "random": rng.random(shape),
              "nan": np.full(shape, np.nan), "huge": np.full(shape, 1e30), "negative": -rng.random(shape)}[fill]
    with np.errstate(all="ignore"):
        array = values.astype(dtype)
    try:
        verdict = detect_noise(array, video=video)
    except FramesError as exc:
        assert "\n" not in str(exc)
        return
    assert verdict.verdict in ("ok", "flagged")
    verdict.to_dict()


@HOSTILE
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".png", ".npy", ".gif", ".tif", ".webp"]))
def test_random_bytes_as_an_input(data: bytes, suffix: str, tmp_path_factory: pytest.TempPathFactory,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from hostile_helpers import run_cli

    path = tmp_path_factory.mktemp("noise") / f"x{suffix}"
    path.write_bytes(data)
    code, _, err = run_cli(["noise", str(path)], capsys)
    if code == 2:
        assert_one_line_error(code, err)
    else:
        assert code in (0, 1) and "Traceback" not in err, err
