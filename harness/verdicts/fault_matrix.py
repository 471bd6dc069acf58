"""Run the fault catalog against a case: one teacher-forced parity run per (fault, dtype), judged against the
fault's expectation (harness/verdicts/faults.py). `diffparity faults` and `python -m harness.verdicts.grid --faults`
print it.

A row is *detected* when the parity run fails (or the native pipeline refuses the run with a `StageFieldError`,
for `raises` faults), and *localized* when the first local divergence is the fault's expected record (stage,
field where named, step inside the loop) and no other stage's local record fails (save the fault's
`also_fails`): the error is charged to the stage that makes it and to nothing else. With the drill on (the
default), a row also says which module the drill named (harness/drill/) against the fault's `expected_module`.


The Diffusers reference is deterministic for a request, so it runs once per distinct request, not once per
fault: the faults that ask the same request (most of a catalog asks the case's default one) share it
(`run_parity(..., reference=...)`). With `jobs` > 1 the references and then the faults run in that many worker
processes (harness/verdicts/fault_pool.py), each on its share of the CPU's threads.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.compare.records import threshold_multiple
from harness.drill.parity_hook import drill_on_failure
from harness.run.cases import Case
from harness.run.multirank import Topology
from harness.run.parity import run_parity, run_reference_side
from harness.run.request import GenerationRequest
from harness.run.runners import SideRun
from harness.verdicts.faults import UNDECLARED, Fault
from native_models.errors import StageFieldError
from native_models.stages.base import PipelineStage


@dataclass
class FaultOutcome:
    """One (fault, dtype) run, as plain data. `found` is the first divergence (or the refusing stage)."""

    fault: str
    dtype: str
    expected: dict[str, Any]  # {stage, field, step}
    request: dict[str, Any]
    skipped: str | None = None  # why the fault was not run in this precision
    detected: bool = False
    localized: bool = False
    found: dict[str, Any] | None = None  # {stage, field, step, mode} or {stage, field, raised}
    problem: str | None = None  # the failing record's own problem (missing, shape...) or the native error
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    x_threshold: float | None = None  # the error as a multiple of the threshold (1 - cos for cosine)
    x_floor: float | None = None  # ... and of the calibrated floor (inf for a zero floor; None uncalibrated)
    other_failing_stages: list[str] = field(default_factory=list)
    noise: str = "n/a"  # the noise detector's verdict on the native output
    seconds: float = 0.0
    expected_module: str | None = UNDECLARED  # the fault's declared module (harness/verdicts/faults.py)
    found_module: str | None = None  # the module the drill named (None: none, or the drill did not run)
    drill: str = "off"  # the drill's status: off, ran, skipped, error
    drill_note: str | None = None  # why the drill named no module (its reason) or its basis
    drill_seconds: float = 0.0

    @property
    def module_ok(self) -> bool | None:
        """The drill named the expected module (None when not checked: drill off or module undeclared)."""
        if self.drill == "off" or self.expected_module == UNDECLARED:
            return None
        return self.found_module == self.expected_module

    @property
    def ok(self) -> bool:
        """Caught where it must be (a fault skipped for this precision counts as nothing to catch), down to the
        module when the drill ran and the fault declares one."""
        return self.skipped is not None or (self.detected and self.localized and self.module_ok is not False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["module_ok"] = self.module_ok
        for key in ("value", "threshold", "x_threshold", "x_floor"):
            if isinstance(data[key], float) and not math.isfinite(data[key]):
                data[key] = str(data[key])  # JSON has no inf/nan
        return data


def trace_stage_of(stage_class_name: str) -> str | None:
    """The trace stage ('encode', ...) of a pipeline stage class named in a StageFieldError."""
    pending: list[type[PipelineStage]] = [PipelineStage]
    while pending:
        cls = pending.pop()
        if cls.__name__ == stage_class_name and cls.trace_stage:
            return cls.trace_stage
        pending.extend(cls.__subclasses__())
    return None


def fault_request(case: Case, fault: Fault, dtype: str, base: GenerationRequest | None = None
                  ) -> GenerationRequest:
    """The request `fault` runs in `dtype`: the case's default (or `base`) with what the fault needs to show."""
    return fault.request_for(base or case.request(dtype=dtype))


def run_fault(case: Case, fault: Fault, dtype: str, base: GenerationRequest | None = None,
              reference: SideRun | None = None, drill: bool = True) -> FaultOutcome:
    """One teacher-forced parity run of `case` with `fault` applied to the native pipeline, judged; with `drill`,
    the failing run is drilled down to a module (harness/drill/parity_hook.py).

    `reference`: the reference side of the fault's request (`fault_request`), already run and shared."""
    request = fault_request(case, fault, dtype, base)
    stage, field_name, step = fault.expected_for(request)
    outcome = FaultOutcome(fault.name, dtype, {"stage": stage, "field": field_name, "step": step},
                           request.to_dict(), expected_module=fault.expected_module,
                           drill="pending" if drill else "off")
    if not fault.applies_to(dtype):
        outcome.skipped = fault.scope_note or f"not defined for {dtype}"
        return outcome
    start = time.perf_counter()
    topology = Topology(*fault.topology)  # a shard fault runs the native side on its ranks (harness/run/multirank.py)
    try:
        result = run_parity(case, request, mutate_native=fault.apply,
                            topology=topology if topology.is_parallel else None, reference=reference,
                            extensions=[drill_on_failure] if drill else ())
    except StageFieldError as exc:  # the loud kind: the pipeline refuses, naming stage and field
        outcome.seconds = time.perf_counter() - start
        if drill:
            outcome.drill, outcome.drill_note = "skipped", "the native pipeline refused the run"
        outcome.detected = True
        found_stage = trace_stage_of(exc.stage)
        outcome.found = {"stage": found_stage, "field": exc.field, "step": None, "raised": exc.stage}
        outcome.problem = str(exc)
        outcome.localized = fault.raises and found_stage == stage and field_name in (None, exc.field)
        return outcome
    outcome.seconds = time.perf_counter() - start
    if drill:
        _read_drill(outcome, result.report)
    comparison = result.comparison
    noise = result.report.get("noise") or {}
    native = noise.get("native") or {}
    if native:
        outcome.noise = native.get("verdict", "n/a") + (" (fails run)" if noise.get("fails_run") else "")
    first = comparison.first_divergence
    outcome.detected = not result.passed
    if first is None:
        return outcome
    outcome.found = {"stage": first.stage, "field": first.field, "step": first.step, "mode": first.mode}
    outcome.problem = first.problem
    outcome.metric = first.tolerance["metric"]
    outcome.value = first.metrics.get(outcome.metric)
    outcome.threshold = first.tolerance["threshold"]
    outcome.x_threshold = threshold_multiple(first)
    outcome.x_floor = first.floor_multiple
    allowed = {stage, *fault.also_fails}
    outcome.other_failing_stages = sorted({r.stage for r in comparison.local_records()
                                           if not r.passed and r.stage not in allowed})
    outcome.localized = (
        not fault.raises
        and comparison.first_divergence_is_local
        and (first.stage, first.step) == (stage, step)
        and field_name in (None, first.field)
        and not outcome.other_failing_stages
    )
    return outcome


def _read_drill(outcome: FaultOutcome, report: dict[str, Any]) -> None:
    section = report.get("drill")
    if section is None:  # a passing run is not drilled
        outcome.drill, outcome.drill_note = "skipped", "the run passed"
        return
    outcome.drill = str(section.get("status"))
    outcome.found_module = section.get("module")
    outcome.drill_note = section.get("reason") or section.get("basis")
    outcome.drill_seconds = float((report.get("timings_s") or {}).get("drill", 0.0))


def skipped_outcome(case: Case, fault: Fault, dtype: str) -> FaultOutcome | None:
    """The outcome of a fault that does not exist in `dtype` (nothing runs), else None."""
    if fault.applies_to(dtype):
        return None
    return run_fault(case, fault, dtype)  # returns before anything runs


def request_key(request: GenerationRequest) -> str:
    """Faults whose requests have the same key share one reference run."""
    return repr(sorted(request.to_dict().items()))


def reference_job(case: Case, request: GenerationRequest) -> SideRun:
    """A worker's reference run (module level: a pool pickles it by name)."""
    return run_reference_side(case, request)


def fault_job(case: Case, fault: Fault, dtype: str, reference: SideRun, drill: bool = True) -> FaultOutcome:
    """A worker's fault run against a shared reference (module level: a pool pickles it by name)."""
    return run_fault(case, fault, dtype, reference=reference, drill=drill)


def run_fault_matrix(case: Case, faults: Iterable[Fault], dtypes: Iterable[str],
                     progress: Callable[[int, int, FaultOutcome], None] | None = None,
                     jobs: int = 1, drill: bool = True) -> list[FaultOutcome]:
    """Every (dtype, fault) pair, returned in that order; `progress(done, total, outcome)` after each (in the
    order they finish). One reference run per distinct request, shared by its faults; `jobs` worker processes
    (1: all in this process); `drill`: drill each failing run down to a module."""
    pairs = [(dtype, fault) for dtype in dtypes for fault in faults]
    outcomes: list[FaultOutcome | None] = [None] * len(pairs)
    done = 0

    def finished(index: int, outcome: FaultOutcome) -> None:
        nonlocal done
        outcomes[index] = outcome
        done += 1
        if progress is not None:
            progress(done, len(pairs), outcome)

    groups: dict[str, list[int]] = {}  # request key -> indices of the pairs that run it
    requests: dict[str, GenerationRequest] = {}
    for index, (dtype, fault) in enumerate(pairs):
        skipped = skipped_outcome(case, fault, dtype)
        if skipped is not None:
            finished(index, skipped)
            continue
        request = fault_request(case, fault, dtype)
        key = request_key(request)
        groups.setdefault(key, []).append(index)
        requests[key] = request
    if jobs > 1 and groups:
        from harness.verdicts.fault_pool import run_groups_in_pool

        run_groups_in_pool(case, pairs, requests, groups, jobs, finished, reference_job,
                           functools.partial(fault_job, drill=drill))
    else:
        for key, indices in groups.items():
            reference = run_reference_side(case, requests[key])
            for index in indices:
                dtype, fault = pairs[index]
                finished(index, run_fault(case, fault, dtype, reference=reference, drill=drill))
    return [outcome for outcome in outcomes if outcome is not None]


def where(record: dict[str, Any] | None) -> str:
    """'stage/field[/step]' of an expected or found record ('-' for none)."""
    if record is None:
        return "-"
    text = f"{record['stage']}/{record['field'] or '*'}"
    return text if record.get("step") is None else f"{text}/{record['step']}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def module_text(module: str | None) -> str:
    """A module name as the matrix shows it: '-' for none, '(forward)' for the component's own forward."""
    if module is None:
        return "-"
    return module or "(forward)"


def module_cell(outcome: FaultOutcome) -> str:
    """The drill's module, and the expected one where they differ."""
    if outcome.drill in ("off", "pending"):
        return ""
    text = module_text(outcome.found_module)
    if outcome.drill == "error":
        text += f" (drill error: {outcome.drill_note})"
    if outcome.module_ok is False:
        text += f" WRONG, expected {module_text(outcome.expected_module)}"
    elif outcome.module_ok is None and outcome.expected_module == UNDECLARED:
        text += " (expected module undeclared)"
    return text


def describe(outcome: FaultOutcome) -> str:
    """One line for a progress report."""
    if outcome.skipped is not None:
        return f"{outcome.fault} ({outcome.dtype}): skipped, {outcome.skipped.split(':')[0]}"
    if outcome.found is None:
        return f"{outcome.fault} ({outcome.dtype}): NOT DETECTED (expected {where(outcome.expected)})"
    verdict = "ok" if outcome.ok else f"EXPECTED {where(outcome.expected)}"
    if "raised" in outcome.found:
        return f"{outcome.fault} ({outcome.dtype}): refused by {outcome.found['raised']}, {verdict}"
    size = (f"{_number(outcome.x_threshold)}x threshold" if outcome.x_threshold is not None
            else outcome.problem or "no error figure")
    module = f", module {module_cell(outcome)}" if outcome.drill not in ("off", "pending") else ""
    return (f"{outcome.fault} ({outcome.dtype}): {where(outcome.found)} ({outcome.found['mode']}), {size}"
            f"{module}, {verdict} ({outcome.seconds:.1f} s)")


def format_fault_matrix(outcomes: list[FaultOutcome]) -> str:
    """The matrix: fault, dtype, expected and found record, detected, localized, error multiples, noise."""
    header = (f"{'fault':<31} {'dtype':<5} {'expected':<31} {'detected':<8} {'localized at':<34} "
              f"{'x floor':>8} {'x thresh':>8}  {'noise':<10} module (drill)")
    lines = [header]
    for o in outcomes:
        if o.skipped is not None:
            lines.append(f"{o.fault:<31} {o.dtype:<5} {where(o.expected):<31} {'n/a':<8} "
                         f"skipped: {o.skipped.split(':')[0]}")
            continue
        found = where(o.found)
        if o.found is not None and "raised" in o.found:
            found += " (raised)"
        elif o.found is not None:
            found += f" ({o.found['mode']})"
        if o.found is not None and not o.localized:
            found += " WRONG" if not o.other_failing_stages else f" +{','.join(o.other_failing_stages)}"
        x_floor = "missing" if o.problem and o.value is None and o.found and "raised" not in o.found else (
            _number(o.x_floor))
        lines.append(f"{o.fault:<31} {o.dtype:<5} {where(o.expected):<31} {'yes' if o.detected else 'NO':<8} "
                     f"{found:<34} {x_floor:>8} {_number(o.x_threshold):>8}  {o.noise:<10} {module_cell(o)}")
    run = [o for o in outcomes if o.skipped is None]
    good = sum(o.ok for o in run)
    lines.append(f"{good} of {len(run)} runs caught and localized; {len(outcomes) - len(run)} skipped "
                 f"(precision scope); {sum(o.seconds for o in run):.0f} s")
    checked = [o for o in run if o.module_ok is not None]
    if checked:
        lines.append(f"modules: {sum(bool(o.module_ok) for o in checked)} of {len(checked)} named as expected "
                     f"(drill {sum(o.drill_seconds for o in run):.0f} s of the total)")
    return "\n".join(lines)
