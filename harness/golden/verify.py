"""Verification: the native side run on a golden's request and judged against the golden, without Diffusers.

`verify_golden` compares under the golden's floors: free, and teacher-forced from the golden's tensors when it
stores them all (forcing needs the reference's embeddings, schedule and per-step latents). It imports no
Diffusers code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.compare.metrics import tensor_metrics
from harness.compare.records import Comparison, RecordResult, compare_record, floor_multiple
from harness.compare.tolerances import ToleranceSpec, device_class
from harness.golden.checkpoint_identity import IdentityComparison, checkpoint_identity, compare_identities
from harness.golden.errors import GoldenError, GoldenMissing
from harness.golden.file_format import read_golden
from harness.golden.model import Golden, strided_sample, tensor_sha256
from harness.golden.store import golden_path, scan_goldens
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace

if TYPE_CHECKING:
    from harness.run.cases import Case
    from native_models.pipeline import ComposedPipeline

def check_checkpoint(golden: Golden, checkpoint: Path) -> IdentityComparison:
    """The checkpoint against the one the golden was recorded from. Raises GoldenError naming the first changed
    tensors / config values / tokenizer sections when it is another checkpoint; a checkpoint that differs only
    in provenance (library versions in its configs) passes, with the difference in the returned comparison."""
    comparison = compare_identities(golden.info["checkpoint"], checkpoint_identity(checkpoint))
    if not comparison.same:
        raise GoldenError(f"{golden.path} was recorded from another checkpoint: {checkpoint} differs in "
                          f"{len(comparison.changes)} entries: {comparison.summary()}; if the change is "
                          "intended, record the golden again")
    return comparison


def compare_with_golden(golden: Golden, native: Trace, spec: ToleranceSpec, mode: str = "free",
                        stages: Iterable[str] | None = None) -> list[RecordResult]:
    """Every golden record (of `stages`) against the native trace's. Whole records as in a parity run; a
    summarised record by its sample (the same elements of the native tensor), or exactly when the native
    tensor's sha256 equals the reference's."""
    wanted = None if stages is None else set(stages)
    results: list[RecordResult] = []
    for key, record in golden.records.items():
        if wanted is not None and key.stage not in wanted:
            continue
        tolerance = spec.tolerance(key.stage, key.field, mode)
        floor = spec.floor(key.stage, key.field, mode)
        tensor = native.get(key)
        if record.tensor is not None:
            results.append(compare_record(key, tensor, record.tensor, tolerance, floor, mode))
            continue
        assert record.sample is not None and record.stride is not None
        base = {"stage": key.stage, "field": key.field, "step": key.step, "shape": list(record.shape),
                "tolerance": tolerance.to_dict(), "mode": mode, "floor": floor}
        if tensor is None:
            results.append(RecordResult(**base, metrics={}, passed=False, problem="missing on the native side"))
            continue
        if tuple(tensor.shape) != record.shape:
            results.append(RecordResult(**base, metrics={}, passed=False, native_shape=list(tensor.shape),
                                        problem=f"shape {list(tensor.shape)} differs from reference "
                                                f"{list(record.shape)}"))
            continue
        same = tensor.dtype == record.dtype and tensor_sha256(tensor) == record.sha256
        native_sample = record.sample if same else strided_sample(tensor, record.stride)
        metrics = tensor_metrics(native_sample, record.sample)
        problem = f"{metrics['nonfinite']} non-finite values in the sample" if metrics.get("nonfinite") else None
        results.append(RecordResult(**base, metrics=metrics, passed=tolerance.passes(metrics), problem=problem,
                                    floor_multiple=floor_multiple(metrics, tolerance, floor)))
    return results


@dataclass
class VerifyResult:
    """A native run judged against a golden. `noise` is set for cases that expect a picture."""

    golden: Golden
    comparison: Comparison
    report: dict[str, Any]
    native_frames: torch.Tensor
    native_trace: Trace
    forced_trace: Trace | None = None
    noise_fails: bool = False
    obtained: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.comparison.passed and not self.noise_fails


def golden_noise_section(golden: Golden, native_frames: torch.Tensor, video: bool) -> dict[str, Any]:
    """The noise verdict of a run that must draw a picture (harness/noise/detector.py), with the golden's decoded image
    as the reference side; a compact golden keeps only a sample of it, so then only the native side is judged."""
    from harness.noise.detector import noise_section

    image = golden.records.get(RecordKey("decode", "image"))
    if image is not None and image.tensor is not None:
        reference = (image.tensor.to(torch.float32) / 2 + 0.5).clamp(0, 1)
        return noise_section(native_frames, reference, True, video=video)
    section = noise_section(native_frames, native_frames, True, video=video)
    section["reference"] = None
    section["note"] = ("native output flagged" if section["fails_run"] else "the native output looks like a "
                       "picture") + " (the compact golden keeps no whole reference image to judge)"
    return section


def load_golden_for(case: Case, dtype: str, device: str, root: Path | None = None, kind: str = "golden") -> Golden:
    """The golden (or, with kind "draft", the draft) of `case` for this dtype and this device's class;
    GoldenMissing names what exists instead."""
    device_cls = device_class(device)
    path = golden_path(case.name, dtype, device_cls, root, kind)
    try:
        golden = read_golden(path)
    except GoldenMissing:
        if kind == "draft":
            raise GoldenMissing(f"no draft for {case.name} {dtype} on device class {device_cls} ({path}): "
                                f"diffparity golden record {case.name} --dtype {dtype}") from None
        others = sorted(f"{f.dtype} on {f.device_class}" for f in scan_goldens(root)[0]
                        if f.case == case.name and f.kind == "golden")
        elsewhere = f"; this case has goldens for {', '.join(others)}" if others else ""
        raise GoldenMissing(f"no golden for {case.name} {dtype} on device class {device_cls} ({path}){elsewhere}; "
                            f"make one: diffparity golden record {case.name} --dtype {dtype} --device "
                            f"{device.split(':')[0]}, then diffparity golden promote {case.name} --dtype {dtype}"
                            ) from None
    golden.check_for(case.name, dtype, device_cls)
    return golden


def verify_golden(case: Case, dtype: str = "fp32", device: str = "cpu", root: Path | None = None,
                  forcing: bool = True, write_obtained: bool = True, checkpoint: Path | None = None,
                  draft: bool = False, mutate: Callable[[ComposedPipeline], None] | None = None) -> VerifyResult:
    """Run the native side of `case` on its golden's request and judge it against the golden (no Diffusers).

    Raises GoldenMissing / GoldenCorrupt / GoldenError before anything runs when the golden cannot be used,
    including when the case's checkpoint is not the one the golden was recorded from (another experiment).
    On failure the native trace is written beside the golden as `.obtained.safetensors`; on success a stale
    obtained file is removed. `draft` checks the draft instead (a review before `promote`); `mutate` breaks the
    built native pipeline on purpose (harness/verdicts/faults.py), as in `run_parity`.
    """
    from harness.environment import environment, environment_changes
    from harness.report.build import build_report
    from harness.run.forcing import FORCED_STAGES
    from harness.run.native_runner import plan_native_run, run_native
    from native_models.attention import get_attention_backend

    timings: dict[str, float] = {}
    start = time.perf_counter()
    golden = load_golden_for(case, dtype, device, root, "draft" if draft else "golden")
    timings["golden"] = time.perf_counter() - start
    start = time.perf_counter()
    checkpoint = checkpoint or case.build_checkpoint()
    identity = check_checkpoint(golden, checkpoint)
    timings["checkpoint"] = time.perf_counter() - start
    request = replace(golden.request(), device=device)
    plan = plan_native_run(checkpoint, request)
    spec = golden.tolerance_spec()
    meta = {"case": case.name, "request": request.to_dict(), "model": None, "checkpoint": str(checkpoint),
            "golden": str(golden.path)}
    forcing_skipped = None
    if forcing and golden.compact:
        forcing_skipped = "a compact golden keeps samples of its large records, not the tensors forcing feeds in"
    forced = forcing and forcing_skipped is None
    native_trace = Trace(meta)
    forced_trace = Trace(meta) if forced else None
    start = time.perf_counter()
    frames = run_native(checkpoint, request, native_trace, plan=plan, mutate=mutate,
                        reference=golden.reference_trace() if forced else None, forced_trace=forced_trace)
    timings["native"] = time.perf_counter() - start
    if forced_trace is not None and forced_trace.meta.get("forcing_skipped"):
        forcing_skipped, forced_trace = forced_trace.meta["forcing_skipped"], None
    comparison = Comparison(compare_with_golden(golden, native_trace, spec))
    if forced_trace is not None:
        comparison.forced_records = compare_with_golden(golden, forced_trace, spec, "forced", FORCED_STAGES)
    report = build_report(
        case=case.name, seed=request.seed, comparison=comparison, request=request.to_dict(),
        environment=environment(request.device, request.dtype, get_attention_backend()), timings=timings,
        checkpoint=str(checkpoint), tolerances=spec.describe(),
    )
    report["golden"] = {
        "path": str(golden.path), "sha256": golden.sha256, "created": golden.info["created"],
        "command": golden.info["command"], "environment": golden.info["environment"], "compact": golden.compact,
        "sampled_records": sum(not r.full for r in golden.records.values()),
        "environment_changes": environment_changes(golden.info["environment"], report["environment"]),
        "checkpoint_provenance_changes": identity.provenance,
    }
    warning = identity.warning()
    if warning is not None:
        report.setdefault("warnings", []).append(warning)
    if forcing_skipped is not None:
        report["forcing_skipped"] = forcing_skipped
    noise_fails = False
    if case.expects_picture:  # a trained or real-weight checkpoint must draw a picture, not noise
        from harness.run.latent_noise import with_latent_check

        report["noise"] = with_latent_check(golden_noise_section(golden, frames, case.video), case, checkpoint,
                                            native_trace, True)
        noise_fails = bool(report["noise"]["fails_run"])
        if noise_fails:
            report["verdict"] = "fail"
    result = VerifyResult(golden, comparison, report, frames, native_trace, forced_trace, noise_fails,
                          timings=timings)
    obtained = golden_path(case.name, dtype, golden.device_class, root, "obtained")
    try:
        if not result.passed and write_obtained:
            native_trace.save(obtained)
            result.obtained = obtained
        elif result.passed:
            obtained.unlink(missing_ok=True)
    except OSError as exc:  # a read-only checkout: the verdict stands without the obtained file
        report["obtained_not_written"] = f"{obtained}: {exc.strerror or exc}"
    return result
