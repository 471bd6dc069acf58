"""Traces on disk: the streaming writer, the lazy reader, the file format, and the memory bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.trace.keys import SCHEMA_VERSION, RecordKey, TraceError
from harness.trace.memory import Trace
from harness.trace.streaming import TraceReader, TraceWriter, open_trace

ROOT = Path(__file__).resolve().parents[1]
ENV = {"torch": "test", "device": "cpu"}  # an explicit fingerprint: skips importing diffusers to make one


def fill(trace: Trace) -> dict[RecordKey, torch.Tensor]:
    """Records of every kind a run makes, recorded out of pipeline order, with the odd dtypes and shapes."""
    gen = torch.Generator().manual_seed(0)
    records = {
        RecordKey("decode", "image"): torch.rand(1, 3, 16, 16, generator=gen) * 2 - 1,
        RecordKey("latents", "initial"): torch.randn(1, 16, 2, 2, generator=gen),
        RecordKey("denoise", "latents", 1): torch.randn(1, 16, 2, 2, generator=gen).bfloat16(),
        RecordKey("denoise", "noise_pred", 0): torch.randn(1, 16, 2, 2, generator=gen).half(),
        RecordKey("denoise", "latents", 0): torch.randn(1, 16, 2, 2, generator=gen).double(),
        RecordKey("timesteps", "sigmas"): torch.tensor([1.0, 0.5, 0.0]),
        RecordKey("timesteps", "timesteps"): torch.tensor([1000, 500]),
        RecordKey("encode", "prompt_embeds"): torch.randn(1, 0, 8, generator=gen),  # empty
        RecordKey("encode", "pooled_prompt_embeds"): torch.tensor(0.25),  # 0-dim
        RecordKey("decode", "latents"): torch.ones(2, 3, dtype=torch.bool),
    }
    for key, tensor in records.items():
        trace.record(key.stage, key.field, tensor, step=key.step)
    return records


PIPELINE_ORDER = [
    "encode/pooled_prompt_embeds", "encode/prompt_embeds", "timesteps/sigmas", "timesteps/timesteps",
    "latents/initial", "denoise/noise_pred/0", "denoise/latents/0", "denoise/latents/1", "decode/latents",
    "decode/image",
]


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_round_trip_through_file(kind: str, tmp_path: Path) -> None:
    trace = Trace({"case": "c"}, ENV) if kind == "memory" else TraceWriter({"case": "c"}, tmp_path, ENV)
    records = fill(trace)
    assert [k.name() for k in trace] == PIPELINE_ORDER
    for key, tensor in records.items():  # readable before saving, too
        assert torch.equal(trace[key], tensor) and trace[key].dtype == tensor.dtype
    trace.meta["late"] = "meta set after recording is saved"
    path = tmp_path / "t.safetensors"
    trace.save(path)
    reader = TraceReader(path)
    assert [k.name() for k in reader] == PIPELINE_ORDER
    assert reader.meta == {"case": "c", "late": "meta set after recording is saved"}
    assert reader.environment == ENV
    for key, tensor in reader.items():
        assert torch.equal(tensor, records[key]) and tensor.dtype == records[key].dtype, key
        assert tuple(tensor.shape) == reader.spec(key)[1]
    assert Trace.load(path).keys() == reader.keys()


def test_file_is_plain_safetensors_in_pipeline_order(tmp_path: Path) -> None:
    trace = TraceWriter({"case": "c"}, tmp_path, ENV)
    records = fill(trace)
    trace.save(tmp_path / "t.safetensors")
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert set(loaded) == {k.name() for k in records}
    for key, tensor in records.items():
        assert torch.equal(loaded[key.name()], tensor)
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "diffparity-trace" and metadata["schema_version"] == str(SCHEMA_VERSION)
    assert json.loads(metadata["environment"]) == ENV and set(json.loads(metadata["crc32"])) == set(loaded)
    header_len = int.from_bytes((tmp_path / "t.safetensors").read_bytes()[:8], "little")
    assert (8 + header_len) % 8 == 0
    header = json.loads((tmp_path / "t.safetensors").read_bytes()[8:8 + header_len])
    by_offset = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")
    assert [name for _, name in by_offset] == PIPELINE_ORDER


def test_default_fingerprint_is_this_environment(tmp_path: Path) -> None:
    trace = TraceWriter({"request": {"dtype": "bf16", "device": "cpu"}, "attention_backend": "sdpa"}, tmp_path)
    trace.record("latents", "initial", torch.zeros(2))
    trace.save(tmp_path / "t.safetensors")
    env = TraceReader(tmp_path / "t.safetensors").environment
    assert env["torch"] == torch.__version__ and env["dtype"] == "bf16" and env["attention_backend"] == "sdpa"
    assert {"python", "cuda", "diffusers", "tf32_matmul", "torch_threads", "platform"} <= env.keys()


def test_a_loaded_trace_keeps_its_fingerprint_when_saved_again(tmp_path: Path) -> None:
    trace = Trace({}, {"gpu": "H200", "torch": "2.11"})
    trace.record("latents", "initial", torch.ones(3))
    trace.save(tmp_path / "a.safetensors")
    TraceReader(tmp_path / "a.safetensors").save(tmp_path / "b.safetensors")
    assert TraceReader(tmp_path / "b.safetensors").environment == {"gpu": "H200", "torch": "2.11"}


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_records_are_snapshots(kind: str, tmp_path: Path) -> None:
    """The pipeline updates latents in place after recording them; the trace keeps the recorded values."""
    trace = Trace({}, ENV) if kind == "memory" else TraceWriter({}, tmp_path, ENV)
    latents = torch.zeros(4)
    trace.record("denoise", "latents", latents, step=0)
    latents += 1
    trace.record("denoise", "latents", latents, step=1)
    assert trace[RecordKey("denoise", "latents", 0)].tolist() == [0.0] * 4
    assert trace[RecordKey("denoise", "latents", 1)].tolist() == [1.0] * 4


def test_rerecorded_key_keeps_the_last_value_and_a_valid_file(tmp_path: Path) -> None:
    trace = TraceWriter({}, tmp_path, ENV)
    trace.record("latents", "initial", torch.zeros(8))
    trace.record("decode", "image", torch.zeros(2))
    trace.record("latents", "initial", torch.ones(3))
    assert len(trace) == 2 and trace[RecordKey("latents", "initial")].tolist() == [1.0] * 3
    trace.save(tmp_path / "t.safetensors")
    assert load_file(str(tmp_path / "t.safetensors"))["latents/initial"].tolist() == [1.0] * 3


def test_spool_is_never_visible_and_save_is_atomic(tmp_path: Path) -> None:
    """The spool is an unnamed file: an output folder shows only finished traces, nothing half-written."""
    out = tmp_path / "out"
    trace = open_trace({"case": "c"}, spool_dir=out)
    assert isinstance(trace, TraceWriter)
    trace.environment = ENV
    trace.record("latents", "initial", torch.randn(1000))
    assert list(out.iterdir()) == []
    trace.save(out / "native.safetensors")
    assert [p.name for p in out.iterdir()] == ["native.safetensors"]
    trace.close()
    with pytest.raises(TraceError, match="closed"):
        trace.get(RecordKey("latents", "initial"))
    assert isinstance(open_trace({}), Trace) and not isinstance(open_trace({}), TraceWriter)


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"old")
    trace = TraceWriter({}, tmp_path, ENV)
    trace.record("latents", "initial", torch.randn(10))
    trace._index[RecordKey("latents", "initial")] = trace._index[RecordKey("latents", "initial")].__class__(
        torch.float32, (10,), 0, 40, 12345)  # a crc that the spool's bytes will not match
    with pytest.raises(TraceError, match="corrupt"):
        trace.save(path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


@pytest.mark.parametrize(
    ("call", "error", "needle"),
    [
        (lambda t: t.record("denoising", "latents", torch.zeros(1)), ValueError, "unknown stage 'denoising'"),
        (lambda t: t.record("denoise", "a/b", torch.zeros(1)), ValueError, "contain no '/'"),
        (lambda t: t.record("denoise", "latents", torch.zeros(1), step=-1), ValueError, "non-negative int"),
        (lambda t: t.record("denoise", "latents", [1.0]), TypeError, "expected a tensor, got list"),
        (lambda t: t.record("decode", "image", torch.zeros(2, dtype=torch.complex64)), ValueError, "complex64"),
    ],
)
def test_bad_records_are_refused(call, error, needle: str, tmp_path: Path) -> None:
    for trace in (Trace({}, ENV), TraceWriter({}, tmp_path, ENV)):
        with pytest.raises(error, match=needle):
            call(trace)
        assert len(trace) == 0


def saved(tmp_path: Path, name: str = "t.safetensors") -> Path:
    trace = Trace({"case": "c"}, ENV)
    trace.record("latents", "initial", torch.arange(64, dtype=torch.float32))
    trace.record("decode", "image", torch.arange(12, dtype=torch.float32).reshape(1, 3, 2, 2))
    trace.save(tmp_path / name)
    return tmp_path / name


def test_reader_is_read_only(tmp_path: Path) -> None:
    with TraceReader(saved(tmp_path)) as reader, pytest.raises(TraceError, match="read from a file"):
        reader.record("latents", "initial", torch.zeros(1))


def test_reader_detects_a_flipped_byte_when_the_record_is_read(tmp_path: Path) -> None:
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside decode/image, the last record
    path.write_bytes(bytes(data))
    reader = TraceReader(path)  # the header is intact
    assert reader[RecordKey("latents", "initial")].shape == (64,)
    with pytest.raises(TraceError, match=r"record decode/image is corrupt \(crc32"):
        reader[RecordKey("decode", "image")]


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _truncated_in_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _other_version(path: Path) -> None:
    save_file({"latents/initial": torch.zeros(2)}, str(path), metadata={"schema_version": "1", "meta": "{}"})


def _pickle(path: Path) -> None:
    torch.save({"latents/initial": torch.zeros(2)}, str(path), _use_new_zipfile_serialization=False)


def _zip(path: Path) -> None:
    torch.save({"latents/initial": torch.zeros(2)}, str(path))


def _model_weights(path: Path) -> None:
    save_file({"transformer.proj.weight": torch.zeros(2, 2)}, str(path))


def _non_trace_names(path: Path) -> None:
    save_file({"transformer.proj.weight": torch.zeros(2, 2)}, str(path),
              metadata={"format": "diffparity-trace", "schema_version": str(SCHEMA_VERSION), "meta": "{}",
                        "environment": "{}", "crc32": "{}"})


def _extra_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 16)


CORRUPT = {
    "zero bytes": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "truncated": (_truncated, "is truncated: its records need 304 data bytes, the file holds 294"),
    "truncated in header": (_truncated_in_header, "or is truncated (header length"),
    "other schema version": (_other_version, "has trace schema version 1; this harness reads version 2"),
    "pickle": (_pickle, "is a Python pickle, not a safetensors trace"),
    "torch.save zip": (_zip, "is a zip archive (torch.save?)"),
    "text": (lambda p: p.write_text("hello, I am not a trace at all\n"), "is not a safetensors trace"),
    "model weights": (_model_weights, "is a safetensors file but not a diffparity trace"),
    "non-trace names": (_non_trace_names, "'transformer.proj.weight' is not a trace record name"),
    "bytes after the last record": (_extra_bytes, "has 16 bytes after its last record"),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), "is not a file"),
    "missing": (lambda p: p.unlink(), "trace file not found"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_reader_refuses_bad_files_with_one_line(case: str, tmp_path: Path) -> None:
    corrupt, needle = CORRUPT[case]
    path = saved(tmp_path)
    corrupt(path)
    with pytest.raises(TraceError) as info:
        TraceReader(path)
    message = str(info.value)
    assert needle in message and "\n" not in message and str(path) in message


def _measure(*args: str) -> dict[str, dict]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "measure_trace_memory.py"), *args, "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr
    return {row["mode"]: row for row in json.loads(proc.stdout.strip().splitlines()[-1])}


needs_proc = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                reason="needs Linux /proc to read and reset peak RSS")


@needs_proc
def test_streaming_memory_stays_flat_while_an_in_memory_trace_grows() -> None:
    """40 records of 2 MiB (80 MiB recorded): the in-memory trace's peak RSS grows by the whole trace (which
    shows the measurement sees trace memory), the writer's by about one record's buffers; the lazy reader
    reads the file back with the same small footprint."""
    rows = _measure("scaling", "--mb", "2", "--counts", "40")
    recorded = rows["memory"]["recorded_mib"]
    assert recorded == 80.0
    assert rows["memory"]["growth_mib"] >= 0.9 * recorded, rows
    assert rows["stream"]["growth_mib"] <= 0.15 * recorded, rows
    assert rows["stream"]["read_back_growth_mib"] <= 0.15 * recorded, rows


@needs_proc
def test_a_50_step_capture_at_64px_peaks_within_1_5x_of_no_capture() -> None:
    """The acceptance figure: native flux-tiny, 50 steps at 64x64, streaming capture (and save) against the
    same run with no recorder, each in a fresh process (measured: 453 vs 454 MiB, ratio 0.997)."""
    rows = _measure("pipeline", "--sides", "native", "--modes", "none", "stream", "--steps", "50", "--size", "64")
    assert rows["stream"]["records"] == 2 + 2 + 1 + 50 * 3 + 2  # every record of the run was captured
    assert rows["stream"]["process_peak_mib"] <= 1.5 * rows["none"]["process_peak_mib"], rows
