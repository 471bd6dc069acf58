"""`diffparity compare TRACE_A TRACE_B --out DIR`: verdicts, the report, and every way a trace pair is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.cli.main import main
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace
from harness.trace.streaming import TraceReader

REF_ENV = {"torch": "2.11", "gpu": "NVIDIA H200", "device": "cuda", "dtype": "fp32"}
CAND_ENV = {"torch": "2.13.0+cpu", "gpu": None, "device": "cpu", "dtype": "fp32"}


def make_trace(side: str, dtype: str = "fp32", size: int = 4, steps: int = 2, seed: int = 5) -> Trace:
    """A trace with the keys and layouts of a FLUX run (random values, fixed by the seed)."""
    gen = torch.Generator().manual_seed(seed)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    trace = Trace({"case": "flux-tiny", "side": side, "dtype": dtype,
                   "request": {"seed": seed, "steps": steps, "height": 8 * size, "width": 8 * size, "dtype": dtype}},
                  REF_ENV if side == "reference" else CAND_ENV)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(torch_dtype)

    trace.record("encode", "pooled_prompt_embeds", rnd(1, 8))
    trace.record("encode", "prompt_embeds", rnd(1, 6, 8))
    trace.record("timesteps", "sigmas", torch.linspace(1, 0, steps + 1))
    trace.record("timesteps", "timesteps", torch.linspace(1000, 1000 / steps, steps))
    trace.record("latents", "initial", rnd(1, 16, size, size))
    for step in range(steps):
        for field in ("transformer_output", "noise_pred", "latents"):
            trace.record("denoise", field, rnd(1, 16, size, size), step=step)
    trace.record("decode", "latents", rnd(1, 16, size, size))
    trace.record("decode", "image", rnd(1, 3, 8 * size, 8 * size))
    return trace


def copy_of(trace: Trace, side: str = "native", environment: dict | None = None) -> Trace:
    copy = Trace(dict(trace.meta, side=side), environment or CAND_ENV)
    for key, tensor in trace.items():
        copy.record(key.stage, key.field, tensor, step=key.step)
    return copy


def save(trace: Trace, path: Path) -> Path:
    trace.save(path)
    return path


def compare(a: Path, b: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["compare", str(a), str(b), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_identical_traces_pass_and_report_in_the_run_schema(tmp_path: Path, capsys) -> None:
    reference = make_trace("reference")
    a = save(reference, tmp_path / "reference.safetensors")
    b = save(copy_of(reference), tmp_path / "native.safetensors")
    code, out, _ = compare(a, b, tmp_path / "cmp", capsys)
    assert code == 0 and "verdict: PASS" in out
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["case"] == "flux-tiny" and report["seed"] == 5 and report["verdict"] == "pass"
    assert report["first_divergence"] is None and report["dtype"] == "fp32"
    assert [(r["stage"], r["field"], r["step"]) for r in report["records"]] == [
        (k.stage, k.field, k.step) for k in reference]
    assert all(r["passed"] and r["metrics"]["rel_l2"] == 0.0 for r in report["records"])
    assert report["environment"] == REF_ENV
    assert report["compared_traces"]["reference"]["environment"] == REF_ENV
    assert report["compared_traces"]["candidate"]["environment"] == CAND_ENV
    assert report["compared_traces"]["candidate"]["path"] == str(b.resolve())
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["report.json"]


def test_a_divergent_record_fails_with_exit_1(tmp_path: Path, capsys) -> None:
    reference = make_trace("reference")
    candidate = copy_of(reference)
    key = RecordKey("denoise", "latents", 1)
    candidate.record("denoise", "latents", reference[key] * 1.1, step=1)  # 10% off: far outside any tolerance
    a, b = save(reference, tmp_path / "a.safetensors"), save(candidate, tmp_path / "b.safetensors")
    code, out, _ = compare(a, b, tmp_path / "cmp", capsys)
    assert code == 1 and "verdict: FAIL" in out and "first divergence: denoise/latents step 1" in out
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["verdict"] == "fail"
    assert report["first_divergence"] == {"stage": "denoise", "field": "latents", "step": 1}
    failed = [(r["stage"], r["field"], r["step"]) for r in report["records"] if not r["passed"]]
    assert failed == [("denoise", "latents", 1)]


def test_a_record_missing_from_b_is_a_parity_failure(tmp_path: Path, capsys) -> None:
    reference = make_trace("reference")
    candidate = Trace(dict(reference.meta, side="native"), CAND_ENV)
    for key, tensor in reference.items():
        if key != RecordKey("decode", "image"):
            candidate.record(key.stage, key.field, tensor, step=key.step)
    a, b = save(reference, tmp_path / "a.safetensors"), save(candidate, tmp_path / "b.safetensors")
    code, out, _ = compare(a, b, tmp_path / "cmp", capsys)
    assert code == 1 and "decode/image: missing" in out


def test_dtype_is_taken_from_the_traces_or_from_the_flag(tmp_path: Path, capsys) -> None:
    reference = make_trace("reference", dtype="fp32")
    candidate = make_trace("native", dtype="bf16")
    candidate_copy = Trace(candidate.meta, CAND_ENV)
    for key, tensor in reference.items():  # the reference's values rounded to bf16: cos ~ 1, rel_l2 ~ 2e-3
        candidate_copy.record(key.stage, key.field, tensor.to(torch.bfloat16), step=key.step)
    a, b = save(reference, tmp_path / "a.safetensors"), save(candidate_copy, tmp_path / "b.safetensors")
    code, _, err = compare(a, b, tmp_path / "cmp", capsys)
    assert code == 2 and "recorded in fp32 (A) and bf16 (B); pass --dtype" in err
    code, _, _ = compare(a, b, tmp_path / "cmp32", capsys, "--dtype", "fp32")
    assert code == 1  # bf16 rounding is far outside fp32 tolerances
    compare(a, b, tmp_path / "cmp16", capsys, "--dtype", "bf16")
    reports = {d: json.loads((tmp_path / f"cmp{d}" / "report.json").read_text()) for d in ("32", "16")}
    assert reports["32"]["dtype"] == "fp32" and reports["16"]["dtype"] == "bf16"
    tolerances = {d: [r["tolerance"] for r in report["records"]] for d, report in reports.items()}
    assert tolerances["32"] != tolerances["16"]  # the flag chose the tolerance table


def test_compare_reproduces_the_run_report(tmp_path: Path, capsys) -> None:
    """The traces a `diffparity run` leaves, compared later, give the run's own verdict and metrics."""
    run_dir = tmp_path / "run"
    assert main(["run", "flux-tiny", "--steps", "2", "--out", str(run_dir), "--no-progress"]) == 0
    capsys.readouterr()
    for name in ("native.safetensors", "reference.safetensors"):
        env = TraceReader(run_dir / name).environment
        assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["dtype"] == "fp32"
    code, out, _ = compare(run_dir / "reference.safetensors", run_dir / "native.safetensors", tmp_path / "cmp",
                           capsys)
    assert code == 0 and "verdict: PASS" in out
    run_report = json.loads((run_dir / "report.json").read_text())
    cmp_report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert cmp_report["case"] == run_report["case"] and cmp_report["seed"] == run_report["seed"]
    assert cmp_report["request"] == run_report["request"]
    assert cmp_report["tolerances"] == run_report["tolerances"]
    # the run's report also holds the teacher-forced records; native.safetensors is the free run
    run_records = {(r["stage"], r["field"], r["step"]): r for r in run_report["records"] if r["mode"] == "free"}
    assert len(cmp_report["records"]) == len(run_records)
    for record in cmp_report["records"]:
        expected = run_records[(record["stage"], record["field"], record["step"])]
        assert (record["metrics"], record["tolerance"], record["passed"]) == (
            expected["metrics"], expected["tolerance"], expected["passed"]), record


# --- pairs that cannot be compared: exit 2, one line, nothing but error.json -------------------------------


def assert_refused(code: int, err: str, out_dir: Path, needle: str) -> None:
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("diffparity compare: error: "), err
    assert needle in errors[0], errors[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["error.json"]
    error = json.loads((out_dir / "error.json").read_text())
    assert needle in error["error"] and error["exit_code"] == 2


def _v1(path: Path) -> None:  # what the harness wrote before traces carried a fingerprint and checksums
    save_file({"latents/initial": torch.zeros(2)}, str(path), metadata={"schema_version": "1", "meta": "{}"})


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


BROKEN_B = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]), "is truncated: its records need"),
    "truncated to its first bytes": (lambda p: p.write_bytes(p.read_bytes()[:20]), "or is truncated"),
    "zero bytes": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "other schema version": (_v1, "has trace schema version 1; this harness reads version 2"),
    "pickle": (lambda p: torch.save({"a": torch.zeros(1)}, str(p), _use_new_zipfile_serialization=False),
               "is a Python pickle"),
    "not safetensors": (lambda p: p.write_text("x,y\n1,2\n"), "is not a safetensors trace"),
    "model weights": (lambda p: save_file({"proj.weight": torch.zeros(2)}, str(p)), "not a diffparity trace"),
    "corrupt record": (_flip_last_byte, "record decode/image is corrupt (crc32"),
    "missing": (lambda p: p.unlink(), "trace file not found"),
}


@pytest.mark.parametrize("case", list(BROKEN_B))
def test_broken_candidate_file_is_refused(case: str, tmp_path: Path, capsys) -> None:
    reference = make_trace("reference")
    a = save(reference, tmp_path / "a.safetensors")
    b = save(copy_of(reference), tmp_path / "b.safetensors")
    corrupt, needle = BROKEN_B[case]
    corrupt(b)
    out = tmp_path / "cmp"
    code, _, err = compare(a, b, out, capsys)
    assert_refused(code, err, out, needle)


def test_broken_reference_file_is_refused(tmp_path: Path, capsys) -> None:
    reference = make_trace("reference")
    a = save(reference, tmp_path / "a.safetensors")
    b = save(copy_of(reference), tmp_path / "b.safetensors")
    a.write_bytes(a.read_bytes()[:-1])
    code, _, err = compare(a, b, tmp_path / "cmp", capsys)
    assert_refused(code, err, tmp_path / "cmp", f"{a} is truncated")


@pytest.mark.parametrize(
    ("candidate", "needle"),
    [
        (lambda: make_trace("native", size=2), "mismatched traces: latents/initial has shape [1, 16, 4, 4] in A and "
                                               "[1, 16, 2, 2] in B"),
        (lambda: make_trace("native", steps=3), "mismatched traces: timesteps/sigmas has shape [3] in A and [4] in B"),
        (lambda: Trace({"case": "flux-tiny", "dtype": "fp32"}, CAND_ENV), "holds no records"),
    ],
)
def test_mismatched_pairs_are_input_errors_not_parity_failures(candidate, needle: str, tmp_path: Path,
                                                                capsys) -> None:
    a = save(make_trace("reference"), tmp_path / "a.safetensors")
    b = save(candidate(), tmp_path / "b.safetensors")
    code, _, err = compare(a, b, tmp_path / "cmp", capsys)
    assert_refused(code, err, tmp_path / "cmp", needle)


def test_traces_without_a_dtype_need_the_flag(tmp_path: Path, capsys) -> None:
    trace = Trace({}, CAND_ENV)
    trace.record("latents", "initial", torch.ones(4))
    a, b = save(trace, tmp_path / "a.safetensors"), save(trace, tmp_path / "b.safetensors")
    code, _, err = compare(a, b, tmp_path / "cmp", capsys)
    assert_refused(code, err, tmp_path / "cmp", "neither trace records its dtype; pass --dtype")
    code, _, _ = compare(a, b, tmp_path / "cmp2", capsys, "--dtype", "fp32")
    assert code == 0


def test_out_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["compare", "a.safetensors", "b.safetensors"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--out" in err
