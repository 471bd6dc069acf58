"""Hostile golden files: `read_golden` raises GoldenError (GoldenMissing / GoldenCorrupt, one line) for every file
that is not a sound golden, including files re-hashed after an edit (so the checks behind the sha256 are tested
too); nothing is unpickled (conftest.py) and nothing absurd is allocated.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hostile_helpers import HOSTILE, assert_one_line_message, fails_fast, make_fifo, make_symlink_loop
from hypothesis import given
from hypothesis import strategies as st

from harness.golden.errors import GoldenCorrupt, GoldenError, GoldenMissing
from harness.golden.file_format import HASH_KEY, read_golden, write_golden
from harness.golden.model import golden_from_trace
from harness.trace.memory import Trace

INFO = {
    "case": "flux-tiny", "family": "flux", "dtype": "fp32", "device_class": "cpu",
    "request": {"prompt": "a cat", "seed": 0, "steps": 2, "height": 32, "width": 32, "frames": 1,
                "guidance_scale": 3.5, "negative_prompt": None, "true_cfg_scale": 1.0, "max_sequence_length": 16,
                "dtype": "fp32", "device": "cpu", "batch_size": 1},
    "checkpoint": {"digest": "0" * 64, "entries": {}}, "environment": {"torch": "test"}, "command": "test",
    "created": "now",
    "tolerances": None,
}


def sample_trace() -> Trace:
    trace = Trace({"case": "flux-tiny"}, {"torch": "test"})
    generator = torch.Generator().manual_seed(0)
    trace.record("encode", "prompt_embeds", torch.randn(1, 4, 8, generator=generator))
    trace.record("timesteps", "sigmas", torch.linspace(1, 0, 3))
    trace.record("denoise", "latents", torch.randn(1, 4, 4, 4, generator=generator), step=0)
    trace.record("decode", "image", torch.rand(1, 3, 8, 8, generator=generator))
    return trace


def _request_fields() -> set[str]:
    from dataclasses import fields

    from harness.run.request import GenerationRequest

    return {f.name for f in fields(GenerationRequest)}


@pytest.fixture(scope="module")
def sound(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    info = {**INFO, "request": {k: v for k, v in INFO["request"].items() if k in _request_fields()}}
    path = tmp_path_factory.mktemp("golden") / "fp32.cpu.safetensors"
    write_golden(golden_from_trace(sample_trace(), info), path)
    read_golden(path)  # the fixture is sound
    return path.read_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + header_len]), data[8 + header_len:]


def rehashed(header: dict, body: bytes, header_len: int | None = None) -> bytes:
    """The file for `header` + `body` with a correct golden_sha256, so the deeper checks are what refuses it;
    the header padded with spaces to `header_len` bytes when given."""
    header["__metadata__"][HASH_KEY] = "0" * 64
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * ((-(8 + len(encoded)) % 8) if header_len is None else header_len - len(encoded))
    prefix = struct.pack("<Q", len(encoded))
    digest = hashlib.sha256(prefix + encoded + body).hexdigest()
    field = f'"{HASH_KEY}":"{"0" * 64}"'.encode()
    return prefix + encoded.replace(field, f'"{HASH_KEY}":"{digest}"'.encode()) + body


def edit(change: Callable[[dict, dict], None]) -> Callable[[bytes], bytes]:
    """Change the header and the golden document (`change(header, document)`), then re-hash."""
    def apply(data: bytes) -> bytes:
        header, body = split(data)
        document = json.loads(header["__metadata__"]["golden"])
        change(header, document)
        header["__metadata__"]["golden"] = json.dumps(document)
        return rehashed(header, body)

    return apply


def _request(name: str, value: object) -> Callable[[bytes], bytes]:
    return edit(lambda h, d: d["request"].__setitem__(name, value))


def _entry(name: str, value: object) -> Callable[[bytes], bytes]:
    return edit(lambda h, d: h["decode/image"].__setitem__(name, value))


FILE_CASES: dict[str, tuple[Callable[[bytes], bytes], type[GoldenError], str]] = {
    "zero-bytes": (lambda d: b"", GoldenCorrupt, "is empty"),
    "truncated": (lambda d: d[:-10], GoldenCorrupt, "is corrupt"),
    "pickle": (lambda d: pickle.dumps({"a": 1}, protocol=4), GoldenCorrupt, "is a Python pickle"),
    "zip": (lambda d: b"PK\x03\x04" + b"\0" * 40, GoldenCorrupt, "is a zip archive"),
    "one-byte-changed": (lambda d: d[:-1] + bytes([d[-1] ^ 1]), GoldenCorrupt, "its bytes hash to sha256"),
    "header-deep": (lambda d: struct.pack("<Q", 100_000) + b"[" * 50_000 + b"]" * 50_000, GoldenCorrupt,
                    "header is not JSON"),
    "request-huge-height": (_request("height", 10_000_000), GoldenCorrupt, "the request is invalid"),
    "request-huge-steps": (_request("steps", 10**9), GoldenCorrupt, "the request is invalid"),
    "request-nan-guidance": (_request("guidance_scale", "nan"), GoldenCorrupt, "request field guidance_scale"),
    "request-unknown-field": (_request("evil", 1), GoldenCorrupt, "unknown fields ['evil']"),
    "request-list": (edit(lambda h, d: d.__setitem__("request", [1])), GoldenCorrupt, "field 'request'"),
    "case-null": (edit(lambda h, d: d.__setitem__("case", None)), GoldenCorrupt, "field 'case'"),
    "records-missing": (edit(lambda h, d: d.pop("records")), GoldenCorrupt, "no record descriptions"),
    "shape-absurd-zero": (_entry("shape", [0, 2**63]), GoldenCorrupt, "is corrupt"),
    "shape-absurd": (_entry("shape", [10**12, 10**12]), GoldenCorrupt, "is corrupt"),
    "shape-100-dims": (_entry("shape", [1] * 100), GoldenCorrupt, "is corrupt"),
    "dtype-unknown": (_entry("dtype", "F128"), GoldenCorrupt, "is corrupt"),
    "name-traversal": (edit(lambda h, d: (h.__setitem__("../x", h.pop("decode/image")),
                                          d["records"].__setitem__("../x", d["records"].pop("decode/image")))),
                       GoldenCorrupt, "is malformed"),
    "tolerances-garbage": (edit(lambda h, d: d.__setitem__("tolerances", {"source": 1})), GoldenCorrupt,
                           "tolerance floors are malformed"),
    "is-a-trace": (lambda d: _trace_bytes(), GoldenError, "is a diffparity trace, not a golden"),
    "version": (edit(lambda h, d: h["__metadata__"].__setitem__("schema_version", "99")), GoldenError,
                "golden schema version '99'"),
}


def _trace_bytes() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.safetensors"
        sample_trace().save(path)
        return path.read_bytes()


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_read_golden_refuses_a_bad_file(name: str, sound: bytes, tmp_path: Path) -> None:
    damage, kind, needle = FILE_CASES[name]
    path = tmp_path / "fp32.cpu.safetensors"
    path.write_bytes(damage(sound))
    with fails_fast(), pytest.raises(kind) as info:
        read_golden(path)
    assert_one_line_message(info.value, needle)


@pytest.mark.parametrize("make, kind", [(lambda p: None, GoldenMissing), (lambda p: p.mkdir(), GoldenCorrupt),
                                        (make_fifo, GoldenCorrupt), (make_symlink_loop, GoldenMissing)],
                         ids=["missing", "folder", "fifo", "symlink-loop"])
def test_read_golden_refuses_a_bad_path(make: Callable[[Path], None], kind: type[GoldenError], tmp_path: Path) -> None:
    path = tmp_path / "fp32.cpu.safetensors"
    make(path)
    with fails_fast(), pytest.raises(kind):
        read_golden(path)


def test_read_golden_long_path(tmp_path: Path) -> None:
    with pytest.raises(GoldenError):
        read_golden(tmp_path / ("x" * 5000))


@pytest.mark.parametrize("header_len", [0x480, 0x580])
def test_header_length_that_starts_like_a_pickle(header_len: int, tmp_path: Path) -> None:
    """A small golden whose header length reads 80 04 or 80 05 in its first bytes, as a pickle's do, is read."""
    trace = Trace({}, {})
    trace.record("timesteps", "sigmas", torch.tensor([1.0, 0.0]))
    info = {**INFO, "request": {k: v for k, v in INFO["request"].items() if k in _request_fields()},
            "environment": {}}
    path = tmp_path / "g.safetensors"
    write_golden(golden_from_trace(trace, info), path)
    header, body = split(path.read_bytes())
    assert len(json.dumps(header, separators=(",", ":"))) <= header_len, "the sample golden outgrew the padding"
    path.write_bytes(rehashed(header, body, header_len))
    assert path.read_bytes()[:2] == bytes([0x80, header_len >> 8])
    assert len(read_golden(path).records) == 1


# ---- property-based ---------------------------------------------------------------------------------------------

@HOSTILE
@given(data=st.binary(max_size=300))
def test_random_bytes_are_a_golden_error(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("random") / "g.safetensors"
    path.write_bytes(data)
    with pytest.raises(GoldenError):
        read_golden(path)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=6), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
_FIELDS = st.sampled_from([
    ("header", "decode/image", "shape"), ("header", "decode/image", "dtype"),
    ("header", "decode/image", "data_offsets"),
    ("document", "request", "height"), ("document", "request", "seed"), ("document", "request", "prompt"),
    ("document", "request", "guidance_scale"), ("document", None, "compact"), ("document", None, "tolerances"),
    ("document", None, "request"), ("record", "decode/image", "shape"), ("record", "decode/image", "stride"),
    ("record", "decode/image", "kind"), ("record", "decode/image", "stats"), ("record", "decode/image", "sha256"),
])


@HOSTILE
@given(target=_FIELDS, value=_JSON)
def test_rehashed_mutations_are_read_or_refused(target: tuple[str, str | None, str], value: object, sound: bytes,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any field replaced by any JSON value and the hash recomputed: read, or GoldenError; nothing else."""
    where, owner, name = target

    def change(header: dict, document: dict) -> None:
        if where == "header":
            header[owner][name] = value
        elif where == "record":
            document["records"][owner][name] = value
        elif owner is None:
            document[name] = value
        else:
            document[owner][name] = value

    path = tmp_path_factory.mktemp("mutated") / "g.safetensors"
    path.write_bytes(edit(change)(sound))
    try:
        golden = read_golden(path)
    except GoldenError as exc:
        assert "\n" not in str(exc)
        return
    golden.request()
    golden.tolerance_spec()


# ---- stored calibrations (golden/tolerances/*.json): read by every run of their case ----------------------------

def _calibration(**changes: object) -> bytes:
    document = {"schema_version": 1, "case": "flux-tiny", "dtype": "fp32", "metric": "rel_l2",
                "records": [{"stage": "decode", "field": "image", "floor": 1e-7, "threshold": 3e-7}]}
    document.update(changes)
    return json.dumps(document).encode()


CALIBRATIONS: dict[str, tuple[bytes, str]] = {
    "zero-bytes": (b"", "is not a readable calibration file"),
    "non-utf8": (b'{"case": "\xff"}', "is not a readable calibration file"),
    "deep": (b"[" * 100_000 + b"]" * 100_000, "is not a readable calibration file"),
    "list": (b"[1, 2]", "calibration schema version None"),
    "version": (_calibration(schema_version="x" * 1000), "calibration schema version xxxx"),
    "records-null": (_calibration(records=None), "lacks a valid 'metric' or 'records' list"),
    "metric-unknown": (_calibration(metric="psnr"), "lacks a valid 'metric'"),
    "threshold-string": (_calibration(records=[{"stage": "a", "field": "b", "floor": 0, "threshold": "1"}]),
                         "malformed record entry"),
    "threshold-negative": (_calibration(records=[{"stage": "a", "field": "b", "floor": 0, "threshold": -1}]),
                           "malformed record entry"),
    "threshold-infinite": (_calibration().replace(b"3e-07", b"1e400"), "malformed record entry"),
    "floor-nan": (_calibration().replace(b"1e-07", b"NaN"), "malformed record entry"),
    "forced-list": (_calibration(records=[{"stage": "a", "field": "b", "floor": 0, "threshold": 1, "forced": [1]}]),
                    "malformed record entry"),
    "other-case": (_calibration(case="flux-digits"), "calibrates case 'flux-digits'"),
}


@pytest.mark.parametrize("name", list(CALIBRATIONS))
def test_a_hostile_calibration_file_is_one_tolerance_error(name: str, tmp_path: Path) -> None:
    from harness.compare.tolerances import ToleranceError, calibration_path, load_tolerance_spec

    data, needle = CALIBRATIONS[name]
    path = calibration_path("flux-tiny", "fp32", "cpu", root=tmp_path)
    path.write_bytes(data)
    with fails_fast(), pytest.raises(ToleranceError) as info:
        load_tolerance_spec("flux-tiny", "fp32", "cpu", root=tmp_path)
    assert needle in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 400
