"""A drill from start to end: capture the reference's inputs, load the native side, run both passes, judge.

`run_drill` serves `diffparity drill` and the drill-on-failure of a parity run (`drill_parity_failure`):
1. the case's reference runs (`Case.run_reference_probe`) until every targeted component call happened; the
   probe (harness/drill/capture.py) keeps those components and a copy of their inputs, and the rest of the
   Diffusers pipeline is freed;
2. the native pipeline is built (and broken by `mutate`, a fault, exactly as the parity run broke it), and only
   its targeted components are kept;
3. per target, the forced and the free pass (harness/drill/engine.py), judged against the module floors
   (harness/drill/floors.py) into a `DrillResult` (harness/drill/result.py).
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.drill.alignment import alignment_for
from harness.drill.capture import Captured, ComponentProbe, ProbeDone
from harness.drill.engine import DrillPasses, Variant
from harness.drill.floors import ModuleFloors, load_module_floors
from harness.drill.result import DrillResult, build_result
from harness.drill.store import FULL_BYTES, OutputStore
from harness.drill.target import DrillError, DrillTarget, resolve_target
from harness.release import collect_if_held
from harness.run.cases import Case
from harness.run.native_runner import plan_native_run
from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from native_models.pipeline import ComposedPipeline

Mutate = Callable[[ComposedPipeline], None]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB): ru_maxrss is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def capture_reference(case: Case, checkpoint: Path, request: GenerationRequest,
                      targets: list[DrillTarget]) -> dict[DrillTarget, Captured]:
    """Run the case's reference until every target call happened; the captured components and inputs."""
    if case.run_reference_probe is None:
        raise DrillError(f"case {case.name} declares no reference probe (Case.run_reference_probe): it cannot be "
                         f"drilled")
    probe = ComponentProbe(targets)
    with contextlib.suppress(ProbeDone):  # the probe stops the run once every target is captured
        case.run_reference_probe(checkpoint, request, Trace({"case": case.name}), probe)
    missing = [t for t in targets if t not in probe.captured]
    if missing:
        made = probe.calls.get((missing[0].component, missing[0].method), 0)
        raise DrillError(f"the reference called {missing[0].component}.{missing[0].method} {made} time(s); the "
                         f"drill needs call {missing[0].call} ({missing[0].describe()})")
    return probe.captured


def native_components(checkpoint: Path, request: GenerationRequest, names: set[str], model: str | None = None,
                      mutate: Mutate | None = None) -> dict[str, torch.nn.Module]:
    """The native pipeline's components `names`, built (and broken by `mutate`) as a parity run builds them."""
    plan = plan_native_run(checkpoint, request, model_name=model)
    pipeline = plan.pipeline_cls(checkpoint, plan.config, dtype=plan.batch.dtype, device=plan.batch.device)
    if mutate is not None:
        mutate(pipeline)
    components = {name: pipeline.get_module(name) for name in names}
    still_alive = weakref.ref(pipeline)
    del pipeline  # the other components go; a fault's instance attributes live on the kept ones
    collect_if_held([still_alive])
    return components


def drill_call(captured: Captured, native: torch.nn.Module, floors: ModuleFloors, stage: str,
               spool_dir: Path | None = None, full_bytes: int = FULL_BYTES) -> DrillResult:
    """Both passes over one captured call, judged."""
    target = captured.target
    alignment = alignment_for(native)
    store = OutputStore(stage, spool_dir, full_bytes=full_bytes)
    passes = DrillPasses(target.component, captured.module, target.method, captured.args, captured.kwargs,
                         alignment, store)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    passes.forced_pass([Variant("native", native, alignment)])
    timings["forced_pass"] = time.perf_counter() - start
    start = time.perf_counter()
    run = passes.free_pass(native, [passes.baseline()], alignment)
    timings["free_pass"] = time.perf_counter() - start
    result = build_result(passes, run, floors, target.to_dict())
    result.timings.update(timings)
    result.memory = {"spooled_mib": round(store.whole_bytes / 2**20, 3), "sampled_outputs": store.sampled_count,
                     "full_bytes_limit": full_bytes, "peak_rss_mib": round(peak_rss_mib(), 1)}
    store.close()
    return result


def run_drill(case: Case, request: GenerationRequest, checkpoint: Path, targets: list[DrillTarget],
              model: str | None = None, mutate: Mutate | None = None, floors: ModuleFloors | None = None,
              spool_dir: Path | None = None, full_bytes: int = FULL_BYTES,
              progress: Callable[[str], None] | None = None) -> list[DrillResult]:
    """Drill every target of one request (captured from one reference run, run on one native load)."""
    floors = floors or load_module_floors(case.name, request.dtype, request.device, model)
    start = time.perf_counter()
    if progress:
        progress(f"reference: capturing {', '.join(t.describe() for t in targets)}")
    captured = capture_reference(case, checkpoint, request, targets)
    capture_s = time.perf_counter() - start
    start = time.perf_counter()
    natives = native_components(checkpoint, request, {t.component for t in targets}, model, mutate)
    load_s = time.perf_counter() - start
    results = []
    for target in targets:
        if progress:
            progress(f"drilling {target.describe()}")
        result = drill_call(captured[target], natives[target.component], floors, target.stage, spool_dir,
                            full_bytes)
        result.timings.update(capture=capture_s, native_load=load_s)
        results.append(result)
    return results


def drill_first_divergence(case: Case, request: GenerationRequest, checkpoint: Path, first: dict[str, Any],
                           model: str | None = None, mutate: Mutate | None = None,
                           spool_dir: Path | None = None) -> dict[str, Any]:
    """report.json's `drill` section for a failing run whose first divergence is `first` ({stage, field, step})."""
    try:
        plan = plan_native_run(checkpoint, request, model_name=model)
        target = resolve_target(plan.config, request.do_true_cfg, request.steps, first["stage"], first.get("field"),
                                first.get("step"))
        result = run_drill(case, request, checkpoint, [target], model=model, mutate=mutate,
                           spool_dir=spool_dir)[0]
    except DrillError as exc:
        return {"status": "skipped", "reason": str(exc), "module": None}
    return result.to_dict()
