"""The drill's result as plain data: one entry per native module in execution order, the verdict, the ranking.

Built from the two passes (harness/drill/engine.py) and the module floors (harness/drill/floors.py). A module
is judged by its *local* error (fed the reference module's inputs) where it could be forced, else by its
*inherited* error (the free run). The verdict is the first module in execution order (completion of its first
call: a child before its parent) whose local error exceeds its threshold: a bug inside a module fails that
module and each of its ancestors, and its children before it still pass, so the first failure is the
innermost module that holds the bug. When no module fails locally but one fails inherited (an error that only
accumulates, or a module that could not be forced), the first such module is named, with basis "inherited".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from harness.drill.alignment import generic_name
from harness.drill.engine import CallResult, DrillPasses, FreeRun
from harness.drill.floors import Judgement, ModuleFloors

RANKED = 10  # modules in the ranked table of the worst


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def metric_dict(metrics: dict[str, float] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {k: _finite(float(metrics[k])) for k in ("rel_l2", "max_abs", "cos") if k in metrics}


def _worst_call(results: list[CallResult]) -> CallResult | None:
    """The call that fails (a problem that fails first), else the one with the largest rel_l2."""
    found: CallResult | None = None
    for result in results:
        if result.fails:
            return result
        if result.metrics is None:
            found = found or result
            continue
        value = result.metrics.get("rel_l2", math.nan)
        if found is None or found.metrics is None or math.isnan(value) or value > found.metrics["rel_l2"]:
            found = result
    return found


@dataclass
class Side:
    """One kind of error of a module (local or inherited): worst call, and its judgement."""

    result: CallResult | None
    judgement: Judgement

    @property
    def value(self) -> float | None:
        if self.result is None or self.result.metrics is None:
            return None
        return float(self.result.metrics.get("rel_l2", math.nan))

    @property
    def passed(self) -> bool | None:
        """True / False when judged, None when not compared."""
        if self.result is None:
            return None
        if self.result.fails:
            return False
        value = self.value
        if value is None:
            return None
        return not math.isnan(value) and value <= self.judgement.threshold

    @property
    def multiple(self) -> float | None:
        """The error as a multiple of the threshold."""
        value = self.value
        if value is None or self.judgement.threshold <= 0:
            return None
        return value / self.judgement.threshold


@dataclass
class ModuleEntry:
    module: str  # native dotted name ("" for the component itself)
    kind: str
    reference_module: str | None
    reference_kind: str | None
    calls: int
    local: Side
    inherited: Side
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    note: str = ""
    ranks: Side | None = None  # a multi-rank drill: the ranks' gathered output against the single-rank run's

    @property
    def basis(self) -> str | None:
        if self.local.passed is not None:
            return "local"
        return "inherited" if self.inherited.passed is not None else None

    @property
    def passed(self) -> bool | None:
        return self.local.passed if self.local.passed is not None else self.inherited.passed

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "module": self.module,
            "kind": self.kind,
            "local": metric_dict(self.local.result.metrics if self.local.result else None),
            "inherited": metric_dict(self.inherited.result.metrics if self.inherited.result else None),
            "floor": self.local.judgement.floor,
            "threshold": self.local.judgement.threshold,
            "threshold_source": self.local.judgement.source,
            "inherited_floor": self.inherited.judgement.floor,
            "inherited_threshold": self.inherited.judgement.threshold,
            "passed": self.local.passed,
            "inherited_passed": self.inherited.passed,
            "calls": self.calls,
        }
        if self.reference_module is not None and self.reference_module != self.module:
            data["reference_module"] = self.reference_module
        if self.reference_kind is not None and self.reference_kind != self.kind:
            data["reference_kind"] = self.reference_kind
        for side_name, side in (("local", self.local), ("inherited", self.inherited)):
            result = side.result
            if result is None:
                continue
            if result.problem:
                data[f"{side_name}_problem"] = result.problem
            if result.sampled:
                data[f"{side_name}_sampled"] = True
            if result.output:
                data[f"{side_name}_output"] = result.output
        if self.note:
            data["note"] = self.note
        if self.ranks is not None:
            data["vs_single_rank"] = metric_dict(self.ranks.result.metrics if self.ranks.result else None)
            data["vs_single_rank_threshold"] = self.ranks.judgement.threshold
            data["vs_single_rank_passed"] = self.ranks.passed
            if self.ranks.result is not None and self.ranks.result.problem:
                data["vs_single_rank_problem"] = self.ranks.result.problem
        return data


@dataclass
class DrillResult:
    """What a drill found in one component call (plain data; `to_dict` is report.json's `drill` section)."""

    component: str
    target: dict[str, Any]
    entries: list[ModuleEntry]
    floors: dict[str, Any]
    reference_only: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def named(self) -> ModuleEntry | None:
        """The verdict: first module failing locally, else first failing inherited (see module docstring); in a
        multi-rank drill, first the first module whose gathered output differs from the single-rank run's."""
        for entry in self.entries:
            if entry.ranks is not None and entry.ranks.passed is False:
                return entry
        for entry in self.entries:
            if entry.local.passed is False:
                return entry
        for entry in self.entries:
            if entry.local.passed is None and entry.inherited.passed is False:
                return entry
        for entry in self.entries:
            if entry.inherited.passed is False:
                return entry
        return None

    @property
    def basis(self) -> str | None:
        named = self.named
        if named is None:
            return None
        if named.ranks is not None and named.ranks.passed is False:
            return "ranks"
        return "local" if named.local.passed is False else "inherited"

    def side(self, entry: ModuleEntry, basis: str | None) -> Side:
        if basis == "ranks" and entry.ranks is not None:
            return entry.ranks
        return entry.local if basis == "local" else entry.inherited

    def failing(self) -> list[ModuleEntry]:
        return [e for e in self.entries if e.local.passed is False or e.inherited.passed is False]

    def ranked(self, count: int = RANKED) -> list[ModuleEntry]:
        """The compared modules with the largest error as a multiple of their threshold (local where judged)."""
        def key(entry: ModuleEntry) -> float:
            side = entry.local if entry.local.passed is not None else entry.inherited
            if side.passed is False and side.multiple is None:
                return math.inf
            multiple = side.multiple
            return -1.0 if multiple is None else (math.inf if math.isnan(multiple) else multiple)

        judged = [e for e in self.entries if e.passed is not None]
        return sorted(judged, key=key, reverse=True)[:count]

    def verdict_dict(self) -> dict[str, Any] | None:
        named = self.named
        if named is None:
            return None
        side = self.side(named, self.basis)
        return {
            "module": named.module,
            "kind": named.kind,
            "basis": self.basis,
            "local": metric_dict(named.local.result.metrics if named.local.result else None),
            "inherited": metric_dict(named.inherited.result.metrics if named.inherited.result else None),
            **({"vs_single_rank": metric_dict(named.ranks.result.metrics if named.ranks.result else None)}
               if named.ranks is not None else {}),
            "threshold": side.judgement.threshold,
            "floor": side.judgement.floor,
            "multiple": None if side.multiple is None else _finite(side.multiple),
            "problem": side.result.problem if side.result else None,
            "inputs": named.inputs,
            "outputs": named.outputs,
        }

    def _worst_row(self, entry: ModuleEntry) -> dict[str, Any]:
        side = entry.local if entry.basis == "local" else entry.inherited
        value, multiple = side.value, side.multiple
        return {"module": entry.module, "kind": entry.kind, "basis": entry.basis,
                "rel_l2": None if value is None else _finite(value), "threshold": side.judgement.threshold,
                "multiple": None if multiple is None else _finite(multiple), "passed": entry.passed,
                **({"problem": side.result.problem} if side.result is not None and side.result.problem else {})}

    def to_dict(self) -> dict[str, Any]:
        compared = [e for e in self.entries if e.passed is not None]
        return {
            "status": "ran",
            "component": self.component,
            "target": self.target,
            "module": None if self.named is None else self.named.module,
            "basis": self.basis,
            "verdict": self.verdict_dict(),
            "summary": {
                "modules": len(self.entries),
                "compared": len(compared),
                "forced": sum(e.local.passed is not None for e in self.entries),
                "failed_local": sum(e.local.passed is False for e in self.entries),
                "failed_inherited": sum(e.inherited.passed is False for e in self.entries),
                **({"failed_vs_single_rank": sum(e.ranks.passed is False for e in self.entries if e.ranks)}
                   if any(e.ranks is not None for e in self.entries) else {}),
                "reference_only": len(self.reference_only),
            },
            "worst": [self._worst_row(e) for e in self.ranked()],
            "modules": [e.to_dict() for e in self.entries],
            "reference_only": self.reference_only,
            "floors": self.floors,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "memory": self.memory,
            **self.extra,
        }


def build_result(passes: DrillPasses, run: FreeRun, floors: ModuleFloors, target: dict[str, Any],
                 variant: str = "native", baseline: str = "reference") -> DrillResult:
    """Entries for every native module the free pass ran, in its execution order, judged by `floors` (looked
    up by the reference module's pattern: floors are measured on the reference, harness/golden/module_floors.py)."""
    native_of = passes.native_of.get(variant, {})
    reference_of = {native: ref for ref, native in native_of.items()}
    entries = []
    for name in run.order:
        ref_name = reference_of.get(name)
        if name == "":
            ref_name = ""
        local_calls = [passes.local[(variant, ref_name, c)] for c in range(passes.reference_calls.get(ref_name, 0))
                       if ref_name is not None and (variant, ref_name, c) in passes.local]
        inherited_calls = [run.inherited[(baseline, name, c)] for c in range(run.calls.get(name, 0))
                           if (baseline, name, c) in run.inherited]
        local = _worst_call(local_calls)
        inherited = _worst_call(inherited_calls)
        if name == "":  # the component on the reference's inputs: its free run is its forced run
            local = inherited
        note = ""
        rule = passes.alignment.rule_for(name)
        if rule is not None and rule.note:
            note = rule.note
        if ref_name is None:
            note = note or "no reference module of this name: not compared"
        elif run.calls.get(name, 0) != passes.reference_calls.get(ref_name, 0):
            note = (note + "; " if note else "") + (f"called {run.calls.get(name, 0)} time(s), the "
                                                     f"reference module {passes.reference_calls.get(ref_name, 0)}")
        floor_name = generic_name(ref_name, passes.reference_root) if ref_name is not None else generic_name(name)
        entries.append(ModuleEntry(
            module=name,
            kind=run.kinds.get(name, "?"),
            reference_module=ref_name,
            reference_kind=passes.reference_kinds.get(ref_name) if ref_name is not None else None,
            calls=run.calls.get(name, 0),
            local=Side(local, floors.judgement(passes.component, floor_name, "local")),
            inherited=Side(inherited, floors.judgement(passes.component, floor_name, "inherited")),
            inputs=passes.reference_inputs.get(ref_name, []) if ref_name is not None else [],
            outputs=run.outputs.get(name, []),
            note=note,
        ))
    aligned = {e.reference_module for e in entries}
    reference_only = [name for name in passes.reference_calls if name not in aligned]
    return DrillResult(passes.component, target, entries, floors.describe(), reference_only)
