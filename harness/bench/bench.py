"""`diffparity bench`: the native pipeline's time against Diffusers', per stage and end to end, in one process.

Both sides load from the same checkpoint for the same request, and each runs once in full with its components'
calls captured (harness/bench/calls.py): that run is also the warm-up (and, under `--compile`, the compilation).
Then, per stage, the two sides' captured calls are replayed alternately (harness/bench/timing.py), and so are the
two whole pipelines. The Diffusers pipeline is the one the case's reference runner loads: the benchmark sees it
through `observe_reference_pipelines` (references/common/reference_pipeline.py), measures while both sides are
resident, and then ends that run, which records nothing.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from harness.bench.calls import CallCapture, captures_for
from harness.bench.result import BenchResult, StageTiming
from harness.bench.timing import Samples, alternate, module_mib, time_call
from harness.run.cases import Case
from harness.run.parity import compiled_sides
from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from native_models.compile import CompileSettings, compile_repeated_blocks

Phase = Callable[[str], None]


class BenchError(Exception):
    """A benchmark that cannot be made as asked (a case whose reference does not load a Diffusers pipeline)."""


class _Measured(Exception):
    """Raised by the observer once both sides are measured: ends the reference runner's own (unneeded) run."""


def run_bench(
    case: Case,
    request: GenerationRequest,
    model: str | None = None,
    compile_choice: str = "none",
    settings: CompileSettings | None = None,
    repeats: int = 5,
    warmup: int = 1,
    end_to_end: bool = True,
    mutate_native: Callable[[Any], None] | None = None,
    mutate_reference: Callable[[Any], None] | None = None,
    phase: Phase | None = None,
    inspect: Callable[[str, Callable[[], Any], Callable[[], Any]], None] | None = None,
) -> BenchResult:
    """Measure `case` at `request`: see the module docstring. `mutate_native` / `mutate_reference` change a
    side's loaded pipeline before it runs (the tests slow one side on purpose); `phase` hears each phase;
    `inspect(stage, native_call, reference_call)` runs after each stage is timed (scripts/profile_bench_stage.py
    profiles the two calls)."""
    from harness.run.native_runner import plan_native_run
    from native_models.attention import get_attention_backend
    from native_models.loader import resolve_checkpoint
    from references.common.reference_pipeline import compile_pipeline_transformer, observe_reference_pipelines

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    say = phase or (lambda _: None)
    settings = settings or CompileSettings()
    native_compiled, reference_compiled = compiled_sides(compile_choice)
    device = torch.device(request.device)
    checkpoint = resolve_checkpoint(model) if model else case.build_checkpoint()

    load_at_start = os.getloadavg()[0]  # before this process adds its own
    say("native: load")
    plan = plan_native_run(checkpoint, request)
    pipeline = plan.pipeline_cls(checkpoint, plan.config, dtype=plan.batch.dtype, device=plan.batch.device)
    if mutate_native is not None:
        mutate_native(pipeline)
    if native_compiled:
        compile_repeated_blocks(pipeline.get_module("transformer"), settings)

    def native_run() -> Any:
        return pipeline.forward(replace(plan.batch, extra={}, recorder=None))

    say("native: one run, capturing each stage's inputs" + (" (and compiling)" if native_compiled else ""))
    native_calls = _run_captured(captures_for(pipeline.modules), native_run)

    result = BenchResult(
        case.name, request.to_dict(),
        {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
         "cpu": platform.processor() or platform.machine(), "attention_backend": get_attention_backend(),
         "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
         "load_average": {"start": round(load_at_start, 2), "end": None, "cores": os.cpu_count()}},
        {"native": settings.to_dict() if native_compiled else None,
         "reference": settings.to_dict() if reference_compiled else None},
        repeats, warmup)

    def measure(pipe: Any, kwargs: dict[str, Any]) -> None:
        import diffusers

        result.environment["diffusers"] = diffusers.__version__
        if mutate_reference is not None:
            mutate_reference(pipe)
        if reference_compiled:
            compile_pipeline_transformer(pipe, settings)
        generator = kwargs.get("generator")
        state = generator.get_state() if isinstance(generator, torch.Generator) else None

        def reference_run() -> Any:
            if state is not None:
                generator.set_state(state)
            return pipe(**kwargs, output_type="pt", return_dict=False)

        say("Diffusers: one run, capturing each stage's inputs" + (" (and compiling)" if reference_compiled else ""))
        reference_calls = _run_captured(captures_for(dict(pipe.components)), reference_run)
        for name, native in native_calls.items():
            reference = reference_calls.get(name)
            if reference is None or not (native.captured and reference.captured):
                sides = [side for side, capture in (("native", native), ("Diffusers", reference))
                         if capture is None or not capture.captured]
                result.untimed[name] = f"the {' and '.join(sides)} side never called its {native.method}()"
                continue
            say(f"{name}: {warmup} warm-up + {repeats} alternating repeats per side")
            result.stages.append(_time_stage(name, native, reference, repeats, warmup, device))
            if inspect is not None:
                inspect(name, native.replay(), reference.replay())
        if end_to_end:
            say(f"end to end: {repeats} alternating runs per side ({request.steps} steps each)")
            timing = StageTiming("end to end", Samples(), Samples(), native_class=type(pipeline).__name__,
                                 reference_class=type(pipe).__name__)
            alternate(lambda: native_run, lambda: reference_run, repeats, device, timing.native, timing.reference)
            result.end_to_end = timing
        raise _Measured

    say("Diffusers: load (the case's reference runner)")
    seen = False
    try:
        with observe_reference_pipelines(measure):
            case.run_reference(checkpoint, request, Trace({"case": case.name, "request": request.to_dict()}), None)
    except _Measured:
        seen = True
    result.environment["load_average"]["end"] = round(os.getloadavg()[0], 2)
    if not seen:
        raise BenchError(f"case {case.name}: its reference runner loads no pipeline through "
                         "references/common/reference_pipeline.run_reference_pipeline, so there is nothing to time")
    return result


def _run_captured(captures: dict[str, CallCapture], run: Callable[[], Any]) -> dict[str, CallCapture]:
    """Run once with every capture installed; the captures, removed again."""
    for capture in captures.values():
        capture.install()
    try:
        with torch.no_grad():
            run()
    finally:
        for capture in captures.values():
            capture.remove()
    return captures


def _time_stage(name: str, native: CallCapture, reference: CallCapture, repeats: int, warmup: int,
                device: torch.device) -> StageTiming:
    timing = StageTiming(name, Samples(weights_mib=module_mib(native.owner)),
                         Samples(weights_mib=module_mib(reference.owner)), native.calls, reference.calls,
                         type(native.owner).__name__, type(reference.owner).__name__)
    for _ in range(warmup):
        time_call(native.replay(), device)
        time_call(reference.replay(), device)
    alternate(native.replay, reference.replay, repeats, device, timing.native, timing.reference)
    return timing
