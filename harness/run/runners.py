"""The sides of a parity run behind one small interface: `run(reference) -> SideRun`.

As Polygraphy keeps runners (which produce outputs) apart from comparison (pure functions on the outputs), a
parity run asks one runner for the reference side and one for the native side, then compares what they hand
back. Each runner loads what it needs, runs the request into a trace and frees its memory before returning,
so the other side can load next (one GPU that fits the model once suffices):
- `ReferenceRunner`: the case's Diffusers reference (`Case.run_reference`);
- `NativeRunner`: the native pipeline on one rank, free and, given the reference's trace, teacher-forced
  (harness/run/forcing.py) from the same load;
- `MultiRankRunner`: the native pipeline on tp x sp ranks (harness/run/multirank.py), then the same request on
  one rank, compared with the ranks' result (`SideRun.ranks`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from harness.run.cases import Case
from harness.run.multirank import RankRun, Topology, run_native_ranks, run_single_rank_baseline
from harness.run.native_runner import NativePlan, run_native
from harness.run.request import GenerationRequest
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace
from harness.trace.streaming import open_trace
from native_models.pipeline import ComposedPipeline

Progress = Callable[[int, int], None]


@dataclass
class SideRun:
    """What one side of a parity run produced (plain data; the runner has freed its models)."""

    trace: Trace
    frames: torch.Tensor  # decoded frames (B, C, H, W) or (B, C, F, H, W), in [0, 1]
    forced_trace: Trace | None = None  # the teacher-forced run; None without forcing or when it was skipped
    forcing_skipped: str | None = None  # why a pipeline that could not be forced was not
    ranks: RankRun | None = None  # a multi-rank native side: the ranks and their single-rank comparison
    timings: dict[str, float] = field(default_factory=dict)  # seconds, by report.json timing name


class Runner(Protocol):
    """One side of a parity run. `reference`: the reference side's trace to teacher-force from (None: free only)."""

    def run(self, reference: Trace | None = None) -> SideRun: ...


def frames_from_trace(trace: Trace) -> torch.Tensor:
    """The reference's decoded frames in [0, 1], from its raw VAE output record."""
    image = trace[RecordKey("decode", "image")].to(torch.float32)
    return (image / 2 + 0.5).clamp(0, 1)


@dataclass
class ReferenceRunner:
    """The case's Diffusers reference, recording into a trace (streamed to a spool in `spool_dir` when given)."""

    case: Case
    checkpoint: Path
    request: GenerationRequest
    meta: dict[str, Any]
    spool_dir: Path | None = None
    progress: Progress | None = None

    def run(self, reference: Trace | None = None) -> SideRun:
        trace = open_trace(self.meta, spool_dir=self.spool_dir)
        start = time.perf_counter()
        self.case.run_reference(self.checkpoint, self.request, trace, self.progress)
        return SideRun(trace, frames_from_trace(trace), timings={"reference": time.perf_counter() - start})


@dataclass
class NativeRunner:
    """The native pipeline on one rank: one load serves the free run and, given `reference`, the forced run.

    `mutate` breaks the built pipeline on purpose (a fault, harness/verdicts/faults.py) before either run."""

    checkpoint: Path
    request: GenerationRequest
    plan: NativePlan
    meta: dict[str, Any]
    spool_dir: Path | None = None
    progress: Progress | None = None
    mutate: Callable[[ComposedPipeline], None] | None = None

    def run(self, reference: Trace | None = None) -> SideRun:
        start = time.perf_counter()
        trace = open_trace(self.meta, spool_dir=self.spool_dir)
        forced = open_trace(self.meta, spool_dir=self.spool_dir) if reference is not None else None
        frames = run_native(self.checkpoint, self.request, trace, progress=self.progress, plan=self.plan,
                            mutate=self.mutate, reference=reference, forced_trace=forced)
        skipped = None if forced is None else forced.meta.get("forcing_skipped")
        return SideRun(trace, frames, None if skipped is not None else forced, skipped,
                       timings={"native": time.perf_counter() - start})


@dataclass
class MultiRankRunner:
    """The native pipeline on `topology`'s ranks (rank 0's traces), then the same request on one rank in this
    process: outputs must not change with the number of ranks (`SideRun.ranks`). `mutate` must be picklable."""

    checkpoint: Path
    request: GenerationRequest
    plan: NativePlan
    topology: Topology
    meta: dict[str, Any]
    spool_dir: Path | None = None
    model: str | None = None
    mutate: Callable[[ComposedPipeline], None] | None = None

    def run(self, reference: Trace | None = None) -> SideRun:
        start = time.perf_counter()
        ranks = run_native_ranks(self.checkpoint, self.request, self.topology, self.meta, model=self.model,
                                 mutate=self.mutate, reference=reference, spool_dir=self.spool_dir)
        forced = ranks.forced_trace
        if reference is not None and forced is None and ranks.forcing_skipped is None:
            forced = open_trace(self.meta)  # rank 0 left neither a forced trace nor a reason: every record missing
        timings = {"native": time.perf_counter() - start}
        start = time.perf_counter()
        run_single_rank_baseline(ranks, self.checkpoint, self.request, self.plan, self.meta, reference=reference,
                                 spool_dir=self.spool_dir)
        ranks.compare_with_single_rank(self.request.dtype)
        timings["native_1rank"] = time.perf_counter() - start
        skipped = ranks.forcing_skipped if reference is not None else None
        return SideRun(ranks.trace, ranks.frames, forced, skipped, ranks=ranks, timings=timings)
