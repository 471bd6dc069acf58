"""One parity run: plan, reference side, native side (free, then teacher-forced), comparison, report on disk."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.artifacts import write_run_artifacts
from harness.cases import Case
from harness.compare import Comparison, compare_traces
from harness.environment import environment
from harness.forcing import FORCED_STAGES
from harness.multirank import RankRun, Topology, check_topology, run_native_ranks, run_single_rank_baseline
from harness.native_runner import plan_native_run, run_native
from harness.noise import noise_section
from harness.report import build_report
from harness.request import GenerationRequest
from harness.tolerances import ToleranceSpec, load_tolerance_spec
from harness.trace import Trace, open_trace
from native_models.attention import get_attention_backend
from native_models.loader import resolve_checkpoint
from native_models.pipeline import ComposedPipeline

ProgressFactory = Callable[[str], Callable[[int, int], None] | None]


@dataclass
class ParityResult:
    comparison: Comparison
    report: dict[str, Any]
    native_frames: torch.Tensor
    reference_frames: torch.Tensor
    native_trace: Trace
    reference_trace: Trace
    forced_trace: Trace | None = None  # the teacher-forced native run; None with forcing off
    noise_fails: bool = False  # the native output is noise where the case expects a picture
    ranks: RankRun | None = None  # multi-rank runs: rank 0's traces above, plus the single-rank comparison

    @property
    def passed(self) -> bool:
        return self.comparison.passed and not self.noise_fails and (self.ranks is None or self.ranks.passed)


def frames_from_trace(trace: Trace) -> torch.Tensor:
    """The reference's decoded frames in [0, 1], from its raw VAE output record."""
    from harness.trace import RecordKey

    image = trace[RecordKey("decode", "image")].to(torch.float32)
    return (image / 2 + 0.5).clamp(0, 1)


def run_parity(
    case: Case,
    request: GenerationRequest,
    model: str | None = None,
    out_dir: Path | None = None,
    progress: ProgressFactory | None = None,
    mutate_native: Callable[[ComposedPipeline], None] | None = None,
    forcing: bool = True,
    tolerances: ToleranceSpec | None = None,
    topology: Topology | None = None,
) -> ParityResult:
    """Run both sides of `case` for `request` and compare them; writes the report when `out_dir` is given.

    Order: the native plan (configs, component classes and safetensors headers checked with one-line errors
    before Diffusers touches the checkpoint), the reference run, then one native load for the free run and,
    with `forcing`, the teacher-forced run from the reference's inputs (harness/forcing.py). Each side frees
    its memory before the other loads, so one GPU that fits the model once suffices. `tolerances` default to
    the stored calibration for the case, dtype and device class (harness/tolerances.py), else the defaults.
    A parallel `topology` runs the native side on tp x sp ranks (harness/multirank.py; `mutate_native` then
    must be picklable), compared with the reference as usual and with a single-rank native run (`ranks`).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    checkpoint = resolve_checkpoint(model) if model else case.build_checkpoint()
    timings["checkpoint"] = time.perf_counter() - start
    plan = plan_native_run(checkpoint, request, model_name=model)
    parallel = topology is not None and topology.is_parallel
    if parallel:
        check_topology(topology, checkpoint, plan, request.device)
    spec = tolerances or load_tolerance_spec(case.name, request.dtype, request.device, model)

    # traces stream to an unnamed spool in out_dir (bounded memory); Trace.save writes them (artifacts.py)
    meta = {"case": case.name, "request": request.to_dict(), "model": model, "checkpoint": str(model or checkpoint)}
    reference_trace = open_trace(meta, spool_dir=out_dir)
    start = time.perf_counter()
    case.run_reference(checkpoint, request, reference_trace, progress("reference") if progress else None)
    timings["reference"] = time.perf_counter() - start
    reference_frames = frames_from_trace(reference_trace)

    ranks = None
    start = time.perf_counter()
    if parallel:
        assert topology is not None
        ranks = run_native_ranks(checkpoint, request, topology, meta, model=model, mutate=mutate_native,
                                 reference=reference_trace if forcing else None, spool_dir=out_dir)
        native_trace, forced_trace, native_frames = ranks.trace, ranks.forced_trace, ranks.frames
        if forcing and forced_trace is None:
            forced_trace = open_trace(meta)
            forced_trace.meta["forcing_skipped"] = ranks.forcing_skipped
    else:
        native_trace = open_trace(meta, spool_dir=out_dir)
        forced_trace = open_trace(meta, spool_dir=out_dir) if forcing else None
        native_frames = run_native(
            checkpoint, request, native_trace, progress=progress("native") if progress else None, plan=plan,
            mutate=mutate_native, reference=reference_trace if forcing else None, forced_trace=forced_trace,
        )
    timings["native"] = time.perf_counter() - start
    if ranks is not None:  # the same request on one rank: outputs must not change with the number of ranks
        start = time.perf_counter()
        run_single_rank_baseline(ranks, checkpoint, request, plan, meta,
                                 reference=reference_trace if forcing else None, spool_dir=out_dir)
        ranks.compare_with_single_rank(request.dtype)
        timings["native_1rank"] = time.perf_counter() - start

    comparison = compare_traces(reference_trace, native_trace, request.dtype, spec)
    forcing_skipped = None if forced_trace is None else forced_trace.meta.get("forcing_skipped")
    if forcing_skipped is not None:
        forced_trace = None
    if forced_trace is not None:
        forced = compare_traces(reference_trace, forced_trace, request.dtype, spec, mode="forced",
                                stages=FORCED_STAGES)
        comparison.forced_records = forced.records
    report = build_report(
        case=case.name,
        seed=request.seed,
        comparison=comparison,
        request=request.to_dict(),
        environment=environment(request.device, request.dtype, get_attention_backend()),
        timings=timings,
        checkpoint=str(model or checkpoint),
        tolerances=spec.describe(),
    )
    if forcing_skipped is not None:
        report["forcing_skipped"] = forcing_skipped
    # a user's real checkpoint (--model) is expected to draw pictures, like a trained case
    report["noise"] = noise_section(native_frames, reference_frames, case.expects_picture or model is not None,
                                    video=case.video)
    if report["noise"]["fails_run"]:
        report["verdict"] = "fail"
    if ranks is not None:
        report["ranks"] = ranks.section()
        if not ranks.passed:
            report["verdict"] = "fail"
    result = ParityResult(comparison, report, native_frames, reference_frames, native_trace, reference_trace,
                          forced_trace, noise_fails=report["noise"]["fails_run"], ranks=ranks)
    if out_dir is not None:
        write_run_artifacts(result, out_dir)
    return result
