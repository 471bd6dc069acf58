"""One parity run, as a straight line: plan -> reference runner -> native runner -> compare -> report.

The plan checks the native side from config files alone (harness/run/native_runner.py) before Diffusers touches
the checkpoint; the runners (harness/run/runners.py) produce the two sides' traces and frames; the comparison
(harness/compare/) and the report (harness/report/) are functions of what they produced.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.compare.records import Comparison, compare_traces
from harness.compare.tolerances import ToleranceSpec, load_tolerance_spec
from harness.environment import environment
from harness.noise.detector import noise_section
from harness.progress import phase_of
from harness.report.artifacts import write_run_artifacts
from harness.report.build import build_report
from harness.run.cases import Case
from harness.run.expectation import Expectation, resolve_expectation
from harness.run.forcing import FORCED_STAGES
from harness.run.latent_noise import with_latent_check
from harness.run.memory_budget import check_memory
from harness.run.multirank import RankRun, Topology, check_topology
from harness.run.native_runner import plan_native_run
from harness.run.request import GenerationRequest
from harness.run.runners import MultiRankRunner, NativeRunner, ReferenceRunner, Runner, SideRun
from harness.trace.memory import Trace
from native_models.attention import get_attention_backend
from native_models.compile import CompileSettings, compile_pipeline_dit
from native_models.loader import resolve_checkpoint
from native_models.pipeline import ComposedPipeline

COMPILE_CHOICES = ("none", "native", "reference", "both")
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


@dataclass(frozen=True)
class ParityRun:
    """How a parity run was made: what a step after the comparison needs to re-run part of it (the drill,
    harness/drill/, re-runs the divergent component on both sides)."""

    case: Case
    request: GenerationRequest
    checkpoint: Path
    model: str | None
    mutate: Callable[[ComposedPipeline], None] | None
    topology: Topology | None
    out_dir: Path | None


# called with the result (report built, artifacts not yet written) and how the run was made; may add to the report
Extension = Callable[[ParityResult, ParityRun], None]


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
    expect: Expectation | None = None,
    extensions: Sequence[Extension] = (),
    reference: SideRun | None = None,
    compile_choice: str = "none",
    compile_settings: CompileSettings | None = None,
) -> ParityResult:
    """Run both sides of `case` for `request` and compare them; writes the report when `out_dir` is given.

    Order: the native plan (configs, component classes and safetensors headers checked with one-line errors
    before Diffusers touches the checkpoint), the reference run, then one native load for the free run and,
    with `forcing`, the teacher-forced run from the reference's inputs (harness/run/forcing.py). Each side frees
    its memory before the other loads, so one GPU that fits the model once suffices. `tolerances` default to
    the stored calibration for the case, dtype and device class (harness/compare/tolerances.py), else the
    defaults. A parallel `topology` runs the native side on tp x sp ranks (harness/run/multirank.py;
    `mutate_native` then must be picklable), compared with the reference as usual and with a single-rank native
    run (`ranks`). `progress` (a step-callback factory; a harness.progress.Progress also hears each phase).
    `expect`: whether the native output must look like a picture (harness/run/expectation.py); default: auto.
    Each of `extensions` then runs on the result before the artifacts are written (the drill-down of a failing
    run, harness/drill/parity_hook.py, adds report["drill"]); the harness's lower layers never import them.
    `reference`: the reference side of this very request, already run (`run_reference_side`), e.g. shared by
    every fault of a fault matrix that asks the same request; it must record this request (ValueError).
    `compile_choice` (none, native, reference, both): that side's repeated DiT blocks run under torch.compile
    (`compile_settings`, default inductor); the tolerances are then the compiled calibration's when one is stored
    (floors that include compiled-vs-eager), and the report's `compile` section says what ran compiled.
    """
    phase = phase_of(progress)
    start = time.perf_counter()
    phase(f"checkpoint {model}" if model else "checkpoint (the case's tiny builder: built once, then cached)")
    checkpoint = resolve_checkpoint(model) if model else case.build_checkpoint()
    timings = {"checkpoint": time.perf_counter() - start}
    plan = plan_native_run(checkpoint, request, model_name=model)
    memory_warning = check_memory(checkpoint, request)  # a request that cannot fit is refused here, not mid-run
    if memory_warning:
        phase(memory_warning)
    parallel = topology is not None and topology.is_parallel
    if parallel:
        check_topology(topology, checkpoint, plan, request.device)
    native_compiled, reference_compiled = compiled_sides(compile_choice)
    settings = compile_settings or CompileSettings()
    if (native_compiled or reference_compiled) and (parallel or reference is not None):
        raise ValueError("--compile runs single-rank parity with its own reference run only")
    if native_compiled:
        mutate_native = with_compiled_dit(mutate_native, settings)
    spec = tolerances or load_tolerance_spec(case.name, request.dtype, request.device, model,
                                             compiled=native_compiled or reference_compiled)
    expect = expect or resolve_expectation(None, case.expects_picture, checkpoint if model else None, case.name)

    # traces stream to an unnamed spool in out_dir (bounded memory); Trace.save writes them (report/artifacts.py)
    meta = side_meta(case, request, model, checkpoint)
    if reference is None:
        phase(f"reference (Diffusers), {request.steps} steps" + (", DiT blocks compiled" if reference_compiled
                                                                  else ""))
        with reference_compiled_if(reference_compiled, settings):
            reference = ReferenceRunner(case, checkpoint, request, meta, out_dir,
                                        progress("reference") if progress else None).run()
    elif reference.trace.meta.get("request") != request.to_dict() or reference.trace.meta.get("model") != model:
        raise ValueError(f"the shared reference side ran {reference.trace.meta.get('request')} "
                         f"(model {reference.trace.meta.get('model')}), not {request.to_dict()} (model {model})")
    else:
        phase("reference (Diffusers): shared, already run for this request")
    native_runner: Runner
    if parallel:
        assert topology is not None
        native_runner = MultiRankRunner(checkpoint, request, plan, topology, meta, out_dir, model, mutate_native)
    else:
        native_runner = NativeRunner(checkpoint, request, plan, meta, out_dir,
                                     progress("native") if progress else None, mutate_native)
    where = f"on {topology.world} ranks ({topology.name})" if parallel and topology else "on one rank"
    phase(f"native, {request.steps} steps {where}" + (", then teacher-forced from the reference" if forcing else ""))
    native = native_runner.run(reference.trace if forcing else None)

    phase("comparing and writing the report" if out_dir is not None else "comparing")
    comparison = compare_sides(reference, native, request.dtype, spec)
    report = parity_report(case, request, model, str(model or checkpoint), comparison, spec,
                           {**timings, **reference.timings, **native.timings}, reference, native, expect)
    report["weights"] = weights_section(plan.stored_dtypes, request.dtype)
    report["compile"] = {"native": settings.to_dict() if native_compiled else None,
                         "reference": settings.to_dict() if reference_compiled else None}
    result = ParityResult(comparison, report, native.frames, reference.frames, native.trace, reference.trace,
                          native.forced_trace, noise_fails=report["noise"]["fails_run"], ranks=native.ranks)
    made = ParityRun(case, request, checkpoint, model, mutate_native, topology if parallel else None, out_dir)
    for extension in extensions:
        extension(result, made)
    if out_dir is not None:
        write_run_artifacts(result, out_dir)
    return result


def with_compiled_dit(mutate: Callable[[ComposedPipeline], None] | None, settings: CompileSettings
                      ) -> Callable[[ComposedPipeline], None]:
    """`mutate` (if any), then the native DiT's repeated blocks compiled."""
    def apply(pipeline: ComposedPipeline) -> None:
        if mutate is not None:
            mutate(pipeline)
        compile_pipeline_dit(pipeline, settings)

    return apply


@contextlib.contextmanager
def reference_compiled_if(compiled: bool, settings: CompileSettings) -> Iterator[None]:
    """Within the block, a reference pipeline that loads has its DiT's repeated blocks compiled (when asked)."""
    if not compiled:
        yield
        return
    from references.common.reference_pipeline import compile_pipeline_transformer, observe_reference_pipelines

    with observe_reference_pipelines(lambda pipe, _: compile_pipeline_transformer(pipe, settings)):
        yield


def compiled_sides(choice: str) -> tuple[bool, bool]:
    """(native, reference) compiled for a `--compile` choice."""
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}, got {choice!r}")
    return choice in ("native", "both"), choice in ("reference", "both")


def side_meta(case: Case, request: GenerationRequest, model: str | None, checkpoint: Path) -> dict[str, Any]:
    """The metadata both sides' traces start from."""
    return {"case": case.name, "request": request.to_dict(), "model": model, "checkpoint": str(model or checkpoint)}


def run_reference_side(case: Case, request: GenerationRequest, model: str | None = None) -> SideRun:
    """The reference side of `request` alone, in memory, for several parity runs of the same request to share
    (`run_parity(..., reference=...)`): the Diffusers run is deterministic for a request, so running it once per
    request instead of once per native variant changes no number."""
    checkpoint = resolve_checkpoint(model) if model else case.build_checkpoint()
    return ReferenceRunner(case, checkpoint, request, side_meta(case, request, model, checkpoint)).run()


def compare_sides(reference: SideRun, native: SideRun, dtype: str, spec: ToleranceSpec) -> Comparison:
    """The native free run against the reference, and the forced run's denoise/decode records when there is one."""
    comparison = compare_traces(reference.trace, native.trace, dtype, spec)
    if native.forced_trace is not None:
        forced = compare_traces(reference.trace, native.forced_trace, dtype, spec, mode="forced",
                                stages=FORCED_STAGES)
        comparison.forced_records = forced.records
    return comparison


NARROWER = {"fp32": ("F16", "BF16"), "bf16": ()}  # stored dtypes that carry less precision than the run's


def weights_section(stored: dict[str, list[str]], run_dtype: str) -> dict[str, Any]:
    """report["weights"]: the dtypes each component's weights are stored in, and which were stored with less
    precision than the run computes in (an fp32 comparison of bf16 weights compares upcast bf16 values)."""
    narrower = {name: dtypes for name, dtypes in stored.items() if set(dtypes) & set(NARROWER.get(run_dtype, ()))}
    section: dict[str, Any] = {"stored_dtypes": stored, "run_dtype": run_dtype,
                               "stored_narrower_than_run": sorted(narrower)}
    if narrower:
        section["note"] = (f"weights of {', '.join(sorted(narrower))} are stored in "
                           f"{'/'.join(sorted({d for v in narrower.values() for d in v}))} and run upcast to "
                           f"{run_dtype}: the comparison is of {run_dtype} arithmetic on lower-precision weights")
    return section


def parity_report(case: Case, request: GenerationRequest, model: str | None, checkpoint: str, comparison: Comparison,
                  spec: ToleranceSpec, timings: dict[str, float], reference: SideRun, native: SideRun,
                  expect: Expectation) -> dict[str, Any]:
    """report.json of a parity run: the comparison, then the noise verdict and the ranks, which can fail it too."""
    report = build_report(
        case=case.name,
        seed=request.seed,
        comparison=comparison,
        request=request.to_dict(),
        environment=environment(request.device, request.dtype, get_attention_backend()),
        timings=timings,
        checkpoint=checkpoint,
        tolerances=spec.describe(),
    )
    if native.forcing_skipped is not None:
        report["forcing_skipped"] = native.forcing_skipped
    report["expect"] = expect.to_dict()
    images = noise_section(native.frames, reference.frames, expect.picture, video=case.video)
    report["noise"] = with_latent_check(images, case, checkpoint, native.trace, expect.picture)
    if report["noise"]["fails_run"]:
        report["verdict"] = "fail"
    if native.ranks is not None:
        report["ranks"] = native.ranks.section()
        if not native.ranks.passed:
            report["verdict"] = "fail"
    return report
