"""One parity run: plan, native side, reference side (one after the other), comparison, report on disk."""

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
from harness.native_runner import plan_native_run, run_native
from harness.report import build_report
from harness.request import GenerationRequest
from harness.trace import Trace
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

    @property
    def passed(self) -> bool:
        return self.comparison.passed


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
) -> ParityResult:
    """Run both sides of `case` for `request` and compare them; writes the report when `out_dir` is given.

    The native side runs first: its loader validates the checkpoint with one-line errors before Diffusers
    touches it. Each side frees its memory before the other loads, so one GPU that fits the model once suffices.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    checkpoint = resolve_checkpoint(model) if model else case.build_checkpoint()
    timings["checkpoint"] = time.perf_counter() - start
    plan = plan_native_run(checkpoint, request, model_name=model)

    native_trace = Trace({"case": case.name, "request": request.to_dict()})
    start = time.perf_counter()
    native_frames = run_native(
        checkpoint, request, native_trace, progress=progress("native") if progress else None, plan=plan,
        mutate=mutate_native,
    )
    timings["native"] = time.perf_counter() - start

    reference_trace = Trace({"case": case.name, "request": request.to_dict()})
    start = time.perf_counter()
    case.run_reference(checkpoint, request, reference_trace, progress("reference") if progress else None)
    timings["reference"] = time.perf_counter() - start
    reference_frames = frames_from_trace(reference_trace)

    comparison = compare_traces(reference_trace, native_trace, request.dtype)
    report = build_report(
        case=case.name,
        seed=request.seed,
        comparison=comparison,
        request=request.to_dict(),
        environment=environment(request.device, request.dtype, get_attention_backend()),
        timings=timings,
        checkpoint=str(model or checkpoint),
    )
    result = ParityResult(comparison, report, native_frames, reference_frames, native_trace, reference_trace)
    if out_dir is not None:
        write_run_artifacts(result, out_dir)
    return result
