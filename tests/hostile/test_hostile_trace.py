"""Hostile trace files: TraceReader / Trace.load raise TraceError (one line) and `diffparity compare` exits 2 with
one line and only error.json, for every file that is not a sound trace; nothing is unpickled (conftest.py).

A pair of sound traces holding NaN, infinity, integer records or hostile metadata is compared (exit 0 or 1)
and its report.json is valid JSON; it never crashes the command.
"""

from __future__ import annotations

import json
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hostile_helpers import (
    HOSTILE,
    assert_one_line_error,
    assert_one_line_message,
    assert_only_error_json,
    fails_fast,
    make_fifo,
    make_symlink_loop,
)
from hypothesis import given
from hypothesis import strategies as st

from harness.trace.keys import TraceError
from harness.trace.memory import Trace
from harness.trace.streaming import TraceReader

META = {"case": "flux-tiny", "request": {"dtype": "fp32", "device": "cpu", "seed": 0}, "model": None, "side": "x"}
ENVIRONMENT = {"torch": "test"}


def sample_trace(meta: dict | None = None, scale: float = 1.0) -> Trace:
    trace = Trace(meta if meta is not None else META, ENVIRONMENT)
    generator = torch.Generator().manual_seed(0)
    trace.record("encode", "prompt_embeds", scale * torch.randn(1, 4, 8, generator=generator))
    trace.record("timesteps", "sigmas", torch.linspace(1, 0, 3))
    trace.record("timesteps", "timesteps", torch.tensor([1000, 500]))
    trace.record("denoise", "latents", scale * torch.randn(1, 4, 4, 4, generator=generator), step=0)
    trace.record("decode", "image", scale * torch.rand(1, 3, 8, 8, generator=generator))
    return trace


@pytest.fixture(scope="module")
def sound_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("sound") / "trace.safetensors"
    sample_trace().save(path)
    return path.read_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + header_len]), data[8 + header_len:]


def join(header: object, body: bytes) -> bytes:
    encoded = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(encoded)) + encoded + body


def with_header(change: Callable[[dict], object]) -> Callable[[bytes], bytes]:
    """Edit the header in place (`change`'s return value is ignored), keep the data section."""
    def apply(data: bytes) -> bytes:
        header, body = split(data)
        change(header)
        return join(header, body)

    return apply


def with_metadata(name: str, value: object) -> Callable[[bytes], bytes]:
    return with_header(lambda h: h["__metadata__"].__setitem__(name, value))


def with_entry(record: str, name: str, value: object) -> Callable[[bytes], bytes]:
    return with_header(lambda h: h[record].__setitem__(name, value))


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


FILE_CASES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "zero-bytes": (lambda d: b"", "is empty (0 bytes)"),
    "five-bytes": (lambda d: d[:5], "shorter than the 8-byte header size"),
    "header-cut": (lambda d: d[:40], "does not fit in a"),
    "data-cut": (lambda d: d[:-3], "is truncated"),
    "trailing-bytes": (lambda d: d + b"\0" * 16, "bytes after its last record"),
    "pickle-2": (lambda d: pickle.dumps({"a": 1}, protocol=2), "is a Python pickle"),
    "pickle-5": (lambda d: pickle.dumps({"a": 1}, protocol=5), "is a Python pickle"),
    "zip": (lambda d: b"PK\x03\x04" + b"\0" * 60, "is a zip archive"),
    "header-length-huge": (lambda d: (2**63).to_bytes(8, "little") + d[8:], "does not fit in a"),
    "header-not-json": (lambda d: join(b"{not json" + b" " * 7, b""), "header is not JSON"),
    "header-non-utf8": (lambda d: join(b'{"\xff\xfe": 1}', b""), "header is not JSON"),
    "header-list": (lambda d: join([1, 2], b""), "header is a JSON list"),
    "header-deep": (lambda d: join(b"[" * 50_000 + b"]" * 50_000, b""), "header is not JSON"),
    "header-nan": (lambda d: join(b'{"a": NaN}', b""), "NaN is not JSON"),
    "plain-safetensors": (with_header(lambda h: h.pop("__metadata__")), "not a diffparity trace"),
    "other-format": (with_metadata("format", "x" * 10_000), "file, not a diffparity-trace"),
    "other-version": (with_metadata("schema_version", "1"), "trace schema version 1"),
    "version-int": (with_metadata("schema_version", 2), "trace schema version 2"),
    "meta-missing": (with_header(lambda h: h["__metadata__"].pop("meta")), "lacks the 'meta' metadata"),
    "meta-list": (with_metadata("meta", "[1, 2]"), "metadata 'meta' is a JSON list"),
    "meta-not-json": (with_metadata("meta", "{oops"), "metadata 'meta' is not valid JSON"),
    "meta-nan": (with_metadata("meta", '{"guidance": NaN}'), "NaN is not JSON"),
    "meta-1e400": (with_metadata("meta", '{"guidance": 1e400}'), "1e400 is not a finite number"),
    "meta-deep": (with_metadata("meta", "[" * 50_000 + "]" * 50_000), "metadata 'meta' is not valid JSON"),
    "meta-number": (with_metadata("meta", 5), "metadata 'meta' is not valid JSON"),
    "crc-missing": (with_metadata("crc32", "{}"), "has no crc32"),
    "crc-wrong": (flip_last_byte, "is corrupt (crc32"),
    "name-traversal": (with_header(lambda h: h.__setitem__("../x", h.pop("decode/image"))),
                       "is not a trace record name"),
    "name-no-field": (with_header(lambda h: h.__setitem__("encode", h.pop("decode/image"))),
                      "is not a trace record name"),
    "step-padded": (with_header(lambda h: h.__setitem__("denoise/latents/00", h.pop("denoise/latents/0"))),
                    "not a plain non-negative integer"),
    "step-huge": (with_header(lambda h: h.__setitem__("denoise/latents/" + "9" * 5000, h.pop("denoise/latents/0"))),
                  "not a plain non-negative integer"),
    "step-unicode-digit": (with_header(lambda h: h.__setitem__("denoise/latents/\u0663", h.pop("denoise/latents/0"))),
                           "not a plain non-negative integer"),
    "dtype-unknown": (with_entry("decode/image", "dtype", "F128"), "malformed header entry"),
    "dtype-list": (with_entry("decode/image", "dtype", ["F32"]), "malformed header entry"),
    "shape-negative": (with_entry("decode/image", "shape", [-1, 3, 8, 8]), "malformed header entry"),
    "shape-absurd-zero": (with_entry("decode/image", "shape", [0, 2**63, 2**63]), "malformed header entry"),
    "shape-absurd": (with_entry("decode/image", "shape", [10**12, 10**12]), "spans"),
    "shape-string": (with_entry("decode/image", "shape", "abc"), "malformed header entry"),
    "shape-100-dims": (with_entry("decode/image", "shape", [1] * 100), "malformed header entry"),
    "shape-wrong-size": (with_entry("decode/image", "shape", [1, 3, 8, 7]), "spans"),
    "offsets-reversed": (with_entry("decode/image", "data_offsets", [10, 0]), "malformed header entry"),
    "offsets-float": (with_entry("decode/image", "data_offsets", [0.0, 768.0]), "malformed header entry"),
    "offsets-overlap": (with_entry("decode/image", "data_offsets", [0, 768]), "overlapping or gapped"),
    "entry-list": (with_header(lambda h: h.__setitem__("decode/image", [1])), "malformed header entry"),
}


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_trace_reader_refuses_a_bad_file(name: str, sound_bytes: bytes, tmp_path: Path) -> None:
    damage, needle = FILE_CASES[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(damage(sound_bytes))
    with fails_fast(), pytest.raises(TraceError) as info:
        Trace.load(path)  # reads every record: checksums too
    assert_one_line_message(info.value, needle)


PATH_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda p: None, "trace file not found"),
    "folder": (lambda p: p.mkdir(), "is not a file"),
    "fifo": (make_fifo, "is not a file"),  # opening a FIFO would block forever: it must never be opened
    "symlink-loop": (make_symlink_loop, "trace file not found"),
}


@pytest.mark.parametrize("name", list(PATH_CASES))
def test_trace_reader_refuses_a_bad_path(name: str, tmp_path: Path) -> None:
    make, needle = PATH_CASES[name]
    path = tmp_path / "t.safetensors"
    make(path)
    with fails_fast(), pytest.raises(TraceError, match=needle):
        TraceReader(path)


@pytest.mark.parametrize("text", ["/dev/null", "x" * 5000, "a\0b"])
def test_trace_reader_refuses_hostile_path_strings(text: str) -> None:
    with fails_fast(), pytest.raises(TraceError):
        TraceReader(text)


# ---- property-based ---------------------------------------------------------------------------------------------

@HOSTILE
@given(data=st.one_of(st.binary(max_size=300), st.builds(lambda n, tail: struct.pack("<Q", n) + tail,
                                                          st.integers(0, 400), st.binary(max_size=400))))
def test_random_bytes_are_a_trace_error(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("random") / "t.safetensors"
    path.write_bytes(data)
    try:
        Trace.load(path)
    except TraceError as exc:
        assert "\n" not in str(exc)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=6), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
_TARGETS = st.sampled_from([
    ("decode/image", "dtype"), ("decode/image", "shape"), ("decode/image", "data_offsets"),
    ("timesteps/sigmas", "shape"), ("timesteps/sigmas", "data_offsets"), ("__metadata__", "meta"),
    ("__metadata__", "crc32"), ("__metadata__", "schema_version"), ("__metadata__", "environment"),
    ("__metadata__", "format"), ("decode/image", None), ("__metadata__", None), ("denoise/x/1", None),
])


@HOSTILE
@given(target=_TARGETS, value=st.one_of(_JSON, _JSON.map(json.dumps), st.lists(st.integers(-1, 2**64), max_size=4)))
def test_mutated_headers_are_read_or_refused(target: tuple[str, str | None], value: object, sound_bytes: bytes,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any one header field replaced by any JSON value: the trace is read whole or refused with TraceError."""
    record, field = target
    header, body = split(sound_bytes)
    if field is None:
        header[record] = value
    else:
        header.setdefault(record, {})[field] = value
    path = tmp_path_factory.mktemp("mutated") / "t.safetensors"
    path.write_bytes(join(header, body))
    try:
        trace = Trace.load(path)
    except TraceError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(trace.meta, dict) and len(trace) >= 1


@HOSTILE
@given(cut=st.integers(0, 2000))
def test_every_truncation_is_refused(cut: int, sound_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    if cut >= len(sound_bytes):
        return
    path = tmp_path_factory.mktemp("cut") / "t.safetensors"
    path.write_bytes(sound_bytes[:cut])
    with pytest.raises(TraceError):
        Trace.load(path)


@HOSTILE
@given(position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_any_flipped_byte_is_read_or_refused(position: int, byte: int, sound_bytes: bytes,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """One byte anywhere replaced: header damage is refused; data damage fails its crc32, never silently read."""
    position %= len(sound_bytes)
    if sound_bytes[position] == byte:
        return
    data = bytearray(sound_bytes)
    data[position] = byte
    path = tmp_path_factory.mktemp("flip") / "t.safetensors"
    path.write_bytes(bytes(data))
    header_end = 8 + int.from_bytes(sound_bytes[:8], "little")
    try:
        Trace.load(path)
    except TraceError as exc:
        assert "\n" not in str(exc)
        return
    assert 8 <= position < header_end, "a changed data byte was read without a checksum error"


# ---- diffparity compare ----------------------------------------------------------------------------------------

@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sample_trace().save(a)
    sample_trace().save(b)
    return a, b


@pytest.mark.parametrize("name", ["zero-bytes", "pickle-5", "data-cut", "header-deep", "meta-nan", "crc-wrong",
                                  "shape-absurd-zero", "step-huge"])
@pytest.mark.parametrize("side", ["a", "b"])
def test_compare_refuses_a_bad_trace(name: str, side: str, pair: tuple[Path, Path], tmp_path: Path, cli) -> None:
    damage, needle = FILE_CASES[name]
    target = pair[0] if side == "a" else pair[1]
    target.write_bytes(damage(target.read_bytes()))
    out = tmp_path / "out"
    with fails_fast():
        code, _, err = cli(["compare", str(pair[0]), str(pair[1]), "--out", str(out)])
    assert_one_line_error(code, err, needle)
    assert_only_error_json(out, needle)


def test_compare_refuses_shapes_that_differ(tmp_path: Path, cli) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sample_trace().save(a)
    other = Trace(META, ENVIRONMENT)
    other.record("decode", "image", torch.rand(1, 3, 8, 16))
    other.save(b)
    code, _, err = cli(["compare", str(a), str(b), "--out", str(tmp_path / "out")])
    assert_one_line_error(code, err, "mismatched traces: decode/image has shape [1, 3, 8, 8] in A")


def _poisoned(value: float) -> Trace:
    trace = sample_trace()
    image = trace[trace.keys()[-1]].clone()
    image.view(-1)[5] = value
    trace.record("decode", "image", image)
    return trace


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["a", "b"])
def test_compare_nonfinite_records_fail_parity_with_valid_json(value: float, side: str, tmp_path: Path, cli) -> None:
    """NaN or infinity in a record is a divergence (exit 1) named in a report.json that is strict JSON."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    (_poisoned(value) if side == "a" else sample_trace()).save(a)
    (_poisoned(value) if side == "b" else sample_trace()).save(b)
    out = tmp_path / "out"
    code, stdout, err = cli(["compare", str(a), str(b), "--out", str(out)])
    assert code == 1, err
    report = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert report["verdict"] == "fail" and report["first_divergence"]["stage"] == "decode"
    assert "Traceback" not in err


def test_compare_integer_and_float_records(tmp_path: Path, cli) -> None:
    """Same names, other dtypes (an int64 image against a float32 one): compared, never a crash."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sample_trace().save(a)
    trace = sample_trace()
    trace.record("decode", "image", torch.ones(1, 3, 8, 8, dtype=torch.int64))
    trace.save(b)
    code, _, err = cli(["compare", str(a), str(b), "--out", str(tmp_path / "out")])
    assert code in (1, 2) and "Traceback" not in err and "internal error" not in err, err


HOSTILE_META = {
    "case-list": {**META, "case": ["flux-tiny"]},
    "case-traversal": {**META, "case": "../../etc/passwd"},
    "device-bogus": {**META, "device": "../../dev/null"},
    "device-cuda-index": {**META, "device": "cuda:99"},
    "model-dict": {**META, "model": {"a": 1}},
    "request-list": {**META, "request": [1, 2]},
    "dtype-list": {"case": "x", "dtype": ["fp32"]},
    "dtype-unknown": {"case": "x", "dtype": "fp8"},
    "control-chars": {"case": "\x1b[31mred\nline", "request": {"dtype": "fp32"}},
}


@pytest.mark.parametrize("name", list(HOSTILE_META))
def test_compare_hostile_metadata(name: str, tmp_path: Path, cli) -> None:
    """Metadata is data, never trusted: the pair is compared (exit 0/1, a JSON report) or refused in one line."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sample_trace(HOSTILE_META[name]).save(a)
    sample_trace(HOSTILE_META[name]).save(b)
    out = tmp_path / "out"
    code, _, err = cli(["compare", str(a), str(b), "--out", str(out)])
    if code == 2:
        assert_one_line_error(code, err)
        assert_only_error_json(out)
    else:
        assert code == 0, err
        json.loads((out / "report.json").read_text())


def test_compare_out_is_a_file(pair: tuple[Path, Path], tmp_path: Path, cli) -> None:
    out = tmp_path / "report-here"
    out.write_text("keep me")
    code, _, err = cli(["compare", str(pair[0]), str(pair[1]), "--out", str(out)])
    assert_one_line_error(code, err, "exists and is not a folder")
    assert out.read_text() == "keep me"


def test_compare_out_below_a_file(pair: tuple[Path, Path], tmp_path: Path, cli) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli(["compare", str(pair[0]), str(pair[1]), "--out", str(blocker / "sub")])
    assert_one_line_error(code, err, "cannot create the folder")


def test_compare_failure_keeps_the_previous_report(pair: tuple[Path, Path], tmp_path: Path, cli) -> None:
    """A compare that cannot start moves the earlier report.json, byte for byte, to previous/ beside its
    error.json: nothing stale reads as this compare's result (issue 19 #6)."""
    out = tmp_path / "out"
    code, _, _ = cli(["compare", str(pair[0]), str(pair[1]), "--out", str(out)])
    assert code == 0
    before = (out / "report.json").read_bytes()
    pair[1].write_bytes(pair[1].read_bytes()[:-1])
    code, _, err = cli(["compare", str(pair[0]), str(pair[1]), "--out", str(out)])
    assert_one_line_error(code, err, "is truncated")
    assert (out / "previous" / "report.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["error.json", "previous"]


def test_crc32_in_metadata_matches_the_sound_file(sound_bytes: bytes) -> None:
    """The fixture itself is sound (so the damage above is what the tests see)."""
    header, body = split(sound_bytes)
    crc = json.loads(header["__metadata__"]["crc32"])
    begin, end = header["decode/image"]["data_offsets"]
    assert crc["decode/image"] == zlib.crc32(body[begin:end])


@pytest.mark.parametrize("header_len", [0x380, 0x480, 0x580])
def test_header_length_that_starts_like_a_pickle_is_read(header_len: int, sound_bytes: bytes, tmp_path: Path) -> None:
    """A header of 896 bytes starts the file with 80 03, a pickle's first two bytes: still a trace."""
    header, body = split(sound_bytes)
    encoded = json.dumps(header).encode()
    assert len(encoded) <= header_len, "the sample header outgrew the padding"
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", header_len) + encoded + b" " * (header_len - len(encoded)) + body)
    assert path.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
    assert len(Trace.load(path)) == len(sample_trace())
