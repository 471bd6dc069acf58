"""Hostile conditioning images (`diffparity run CASE --image PATH`, harness/run/request_image.py): every image the
reference cannot take the same way is refused with one line and exit 2 before any model is built, leaving only
error.json in --out; the images it can take reach the parity run unchanged in meaning (gray, palette, JPEG).

The parity run itself is replaced by a stub that raises `Reached`, so a test knows an image got through validation.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from hostile_helpers import assert_one_line_error, assert_only_error_json, fails_fast, make_fifo, make_symlink_loop

from harness.cli.common import UsageError
from harness.run.request import GenerationRequest
from harness.run.request_image import (
    ImageInputError,
    RequestImage,
    image_from_array,
    load_image,
    refit_synthetic,
    synthetic_image,
)

CASE = "wan-i2v-tiny"  # requests 80x48 (aspect 1.67)


class Reached(UsageError):
    """Raised by the stub: validation let the image through to the parity run."""


@pytest.fixture()
def stubbed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import harness.run.parity

    def reached(*args: object, **kwargs: object) -> None:
        request = args[1]
        raise Reached(f"reached the parity run with image {request.image.width}x{request.image.height} "
                      f"sha256 {request.image.sha256[:12]}")

    monkeypatch.setattr(harness.run.parity, "run_parity", reached)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def rgb(width: int = 100, height: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def handmade_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written byte by byte (PIL writes no 16-bit RGB PNG, and no header larger than its pixels)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = zlib.compress(rows if rows is not None else b"\0")
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def write_bad(kind: str, folder: Path) -> Path:
    """The hostile file (or non-file) of `kind`, under `folder`."""
    path = folder / f"{kind}.png"
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        make_fifo(path)
    elif kind == "symlink-loop":
        make_symlink_loop(path)
    elif kind == "one-pixel":
        PIL.Image.new("RGB", (1, 1), (200, 10, 10)).save(path)
    elif kind == "rgba":
        PIL.Image.fromarray(np.dstack([rgb(), rgb()[:, :, :1]]), "RGBA").save(path)
    elif kind == "gray-alpha":
        PIL.Image.new("LA", (100, 60), (128, 40)).save(path)
    elif kind == "palette-transparency":
        PIL.Image.fromarray(rgb()).convert("P").save(path, transparency=0)
    elif kind == "gray-16bit":
        PIL.Image.fromarray(rgb()[:, :, 0].astype(np.uint16) * 257).save(path)
    elif kind == "rgb-16bit":
        row = b"\0" + b"\x12\x34" * 3 * 100
        path.write_bytes(handmade_png(100, 60, 16, 2, row * 60))
    elif kind == "float-tiff":
        path = folder / "float.tif"
        PIL.Image.fromarray(rgb()[:, :, 0].astype(np.float32) / 255, "F").save(path)
    elif kind == "text":
        path.write_text("not an image, just words\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        PIL.Image.fromarray(rgb()).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "huge-header":  # claims 100000 x 100000 pixels: refused from the header, nothing decoded
        path.write_bytes(handmade_png(100_000, 100_000, 8, 2))
    elif kind == "too-wide-header":  # within PIL's limit, above the request limits: refused before decoding
        path.write_bytes(handmade_png(9000, 100, 8, 2))
    elif kind == "wrong-aspect":
        PIL.Image.fromarray(rgb(width=200, height=40)).save(path)
    elif kind == "portrait":
        PIL.Image.fromarray(rgb(width=48, height=80)).save(path)
    else:
        raise AssertionError(kind)
    return path


BAD = {
    "missing": "cannot read it (No such file or directory)",
    "folder": "is not a regular file",
    "fifo": "is not a regular file",
    "symlink-loop": "cannot read it",
    "one-pixel": "is 1x1 pixels; each side must be 8..8192",
    "rgba": "is RGBA with an alpha channel: refused, not composited",
    "gray-alpha": "is LA with an alpha channel",
    "palette-transparency": "is P with an alpha channel",
    "gray-16bit": "is a 16-bit or float image (mode I;16",
    "rgb-16bit": "is a 16-bit PNG",
    "float-tiff": "is a 16-bit or float image (mode F)",
    "text": "is not an image PIL can read",
    "empty": "is not an image PIL can read",
    "truncated": "is truncated or corrupt",
    "huge-header": "declares more pixels than PIL will decode",
    "too-wide-header": "is 9000x100 pixels; each side must be 8..8192",
    "wrong-aspect": "would stretch it 3.00x (at most 1.25x)",
    "portrait": "would stretch it 2.78x",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_image_is_one_line_exit_2_and_only_error_json(kind: str, stubbed: Path, cli) -> None:
    image = write_bad(kind, stubbed)
    out = stubbed / "out"
    with fails_fast():
        code, stdout, err = cli(["run", CASE, "--image", str(image), "--out", str(out)])
    line = assert_one_line_error(code, err, BAD[kind])
    assert str(image) in line or kind == "symlink-loop"  # the message names the file
    assert stdout == ""
    assert_only_error_json(out, BAD[kind])


def test_bad_image_without_out_leaves_only_its_run_folders_error_json(stubbed: Path, cli) -> None:
    image = write_bad("rgba", stubbed)
    code, _, err = cli(["run", CASE, "--image", str(image)])
    assert_one_line_error(code, err, "alpha channel")
    latest = stubbed / "out" / CASE / "latest"
    assert sorted(p.name for p in latest.iterdir()) == ["error.json"]


def test_image_given_to_a_text_case_is_refused(stubbed: Path, cli) -> None:
    image = stubbed / "ok.png"
    PIL.Image.fromarray(rgb()).save(image)
    code, _, err = cli(["run", "wan-tiny", "--image", str(image), "--out", str(stubbed / "out")])
    assert_one_line_error(code, err, "case wan-tiny takes no conditioning image")


GOOD = {
    "rgb-png": lambda p: PIL.Image.fromarray(rgb()).save(p.with_suffix(".png")),
    "gray-png": lambda p: PIL.Image.fromarray(rgb()[:, :, 0]).save(p.with_suffix(".png")),
    "palette-png": lambda p: PIL.Image.fromarray(rgb()).convert("P").save(p.with_suffix(".png")),
    "jpeg": lambda p: PIL.Image.fromarray(rgb()).save(p.with_suffix(".jpg"), quality=90),
    "exact-size": lambda p: PIL.Image.fromarray(rgb(width=80, height=48)).save(p.with_suffix(".png")),
}


@pytest.mark.parametrize("kind", list(GOOD))
def test_usable_image_reaches_the_parity_run(kind: str, stubbed: Path, cli) -> None:
    GOOD[kind](stubbed / kind)
    image = next(stubbed.glob(f"{kind}.*"))
    code, _, err = cli(["run", CASE, "--image", str(image), "--out", str(stubbed / "out")])
    assert_one_line_error(code, err, "reached the parity run with image")


def test_converted_images_are_rgb_pixels_of_the_file(tmp_path: Path) -> None:
    gray = rgb()[:, :, 0]
    PIL.Image.fromarray(gray).save(tmp_path / "gray.png")
    image = load_image(tmp_path / "gray.png")
    assert (image.width, image.height) == (100, 60) and image.to_pil().mode == "RGB"
    assert np.array_equal(np.asarray(image.to_pil()), np.repeat(gray[:, :, None], 3, axis=2))
    assert image == image_from_array(gray)  # equal by pixels, whatever the source


ARRAYS = {
    "rgba": (np.zeros((60, 100, 4), np.uint8), "has 4 channels (an alpha channel)"),
    "uint16": (np.zeros((60, 100, 3), np.uint16), "is a uint16 array (16-bit or float)"),
    "float": (np.zeros((60, 100, 3), np.float32), "is a float32 array"),
    "one-pixel": (np.zeros((1, 1, 3), np.uint8), "is 1x1 pixels"),
    "channels-5": (np.zeros((60, 100, 5), np.uint8), "must be (H, W) or (H, W, 3)"),
    "int8": (np.zeros((60, 100, 3), np.int8), "must be a uint8 array"),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_bad_arrays_are_refused(name: str) -> None:
    array, needle = ARRAYS[name]
    with pytest.raises(ImageInputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        image_from_array(array)


def test_request_checks_the_image_against_its_size() -> None:
    image = image_from_array(rgb())  # 100x60, aspect 1.67
    GenerationRequest(prompt="x", height=48, width=80, image=image)
    with pytest.raises(ImageInputError, match="would stretch it"):
        GenerationRequest(prompt="x", height=64, width=64, image=image)
    with pytest.raises(ImageInputError, match="must be a RequestImage"):
        GenerationRequest(prompt="x", image=np.zeros((8, 8, 3), np.uint8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="true_cfg_scale_2 must be a finite number"):
        GenerationRequest(prompt="x", true_cfg_scale_2=float("nan"))


def test_stored_image_is_found_again_by_its_pixels(tmp_path: Path) -> None:
    """A report or golden stores source, size and sha256: a synthetic image is drawn again, a file read again, and
    a file whose pixels changed since is refused."""
    synthetic = synthetic_image(seed=0, width=96, height=60)
    assert RequestImage.from_dict(synthetic.to_dict()) == synthetic
    path = tmp_path / "picture.png"
    PIL.Image.fromarray(rgb()).save(path)
    stored = load_image(path).to_dict()
    assert RequestImage.from_dict(stored).sha256 == stored["sha256"]
    PIL.Image.fromarray(rgb(seed=1)).save(path)
    with pytest.raises(ImageInputError, match="is not the one stored"):
        RequestImage.from_dict(stored)
    with pytest.raises(ImageInputError, match="came from an array"):
        RequestImage.from_dict({**stored, "source": "array"})


def test_synthetic_image_is_fixed_bytes_and_follows_a_new_size() -> None:
    """The tiny cases' picture is integer arithmetic only: its digest is pinned here, so a numpy or platform change
    that altered it would fail loudly instead of moving the goldens."""
    image = synthetic_image(seed=0, width=96, height=60)
    assert image.sha256 == SYNTHETIC_SHA256
    assert refit_synthetic(image, 48, 80) is image  # fits: kept
    square = refit_synthetic(image, 32, 32)
    assert square is not None and (square.width, square.height) == (40, 40) and square.source.endswith(":40x40")
    user = image_from_array(rgb())
    assert refit_synthetic(user, 32, 32) is user  # a user's image is never replaced (check_fits refuses it)


SYNTHETIC_SHA256 = "20d196d1b6a64c49e80cddc167b2856b767b51b33e912cda40d700def5bd09a8"
