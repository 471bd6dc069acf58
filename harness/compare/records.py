"""Comparison of a native trace against a reference trace: per-record results and the first divergence.

Pure functions over traces; results are plain dataclasses that serialise to JSON (runners -> results ->
comparisons, kept apart).

A parity run compares two native traces with the reference: the *free* run (the native pipeline on its own,
errors accumulate from stage to stage and step to step) and, with teacher forcing, the *forced* run (each
forced stage, and each denoising step, started from the reference's inputs: its local error). Stages that
take no input from an earlier native stage (encode, timesteps, latents) are not re-run: their free records
already are local. `first_divergence` is decided on the local view, so a bug is charged to the stage and step
that makes it, not to everything downstream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from harness.compare.metrics import tensor_metrics
from harness.compare.tolerances import HIGHER_IS_BETTER, Tolerance, ToleranceSpec, tolerance_for
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace

MODES = ("free", "forced")


@dataclass
class RecordResult:
    """The verdict on one record. `problem` explains a failure that is not a number (missing, shape...).

    `floor` is the calibrated floor of the tolerance's metric (None without calibration); `floor_multiple`
    is the record's error in that metric divided by its floor (inf when the floor is 0 and the error is not).
    `threshold_multiple` is the error divided by the threshold: 1.0 is the gate, above it the record fails.
    """

    stage: str
    field: str
    step: int | None
    shape: list[int]
    metrics: dict[str, float]
    tolerance: dict
    passed: bool
    problem: str | None = None
    native_shape: list[int] | None = None
    mode: str = "free"
    floor: float | None = None
    floor_multiple: float | None = None

    def key(self) -> RecordKey:
        return RecordKey(self.stage, self.field, self.step)

    @property
    def threshold_multiple(self) -> float | None:
        return threshold_multiple(self)

    def to_dict(self) -> dict:
        data = {
            "stage": self.stage,
            "field": self.field,
            "step": self.step,
            "mode": self.mode,
            "shape": self.shape,
            "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
            "tolerance": self.tolerance,
            "floor": self.floor,
            "floor_multiple": None if self.floor_multiple is None else _json_number(self.floor_multiple),
            "threshold_multiple": _json_or_none(self.threshold_multiple),
            "passed": self.passed,
        }
        if self.problem is not None:
            data["problem"] = self.problem
        if self.native_shape is not None and self.native_shape != self.shape:
            data["native_shape"] = self.native_shape
        return data


@dataclass
class Comparison:
    """`records`: the free run; `forced_records`: the teacher-forced run (empty when forcing is off)."""

    records: list[RecordResult] = field(default_factory=list)
    forced_records: list[RecordResult] = field(default_factory=list)

    @property
    def forcing(self) -> bool:
        return bool(self.forced_records)

    @property
    def passed(self) -> bool:
        """Parity holds when every free and every forced record passes."""
        return bool(self.records) and all(r.passed for r in (*self.records, *self.forced_records))

    def __bool__(self) -> bool:
        return self.passed

    def local_records(self) -> list[RecordResult]:
        """Each record's local error in pipeline order: forced records for the stages the forced run covers,
        free records for the others (they take no native input, so free is local there)."""
        forced_stages = {r.stage for r in self.forced_records}
        local = [r for r in self.records if r.stage not in forced_stages] + list(self.forced_records)
        return sorted(local, key=lambda r: r.key().order())

    @property
    def first_divergence(self) -> RecordResult | None:
        """The first failing local record in pipeline order; if every local record passes but the free run
        fails (errors that only grow by accumulation), the first failing free record."""
        first = next((r for r in self.local_records() if not r.passed), None)
        return first if first is not None else next((r for r in self.records if not r.passed), None)

    @property
    def first_divergence_is_local(self) -> bool:
        """Whether `first_divergence` is a local error (False: only the accumulated, free error fails)."""
        return any(not r.passed for r in self.local_records())

    def all_records(self) -> Iterable[RecordResult]:
        yield from self.records
        yield from self.forced_records

    def by_stage(self, mode: str = "free") -> dict[str, list[RecordResult]]:
        stages: dict[str, list[RecordResult]] = {}
        for record in self.records if mode == "free" else self.forced_records:
            stages.setdefault(record.stage, []).append(record)
        return stages


def _json_number(value: float) -> float | str:
    """JSON has no NaN/Infinity: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _json_or_none(value: float | None) -> float | str | None:
    return None if value is None else _json_number(value)


def floor_multiple(metrics: dict[str, float], tolerance: Tolerance, floor: float | None) -> float | None:
    """The record's error as a multiple of its floor, in the tolerance's metric (1 - cos for cosine)."""
    if floor is None or tolerance.metric not in metrics:
        return None
    value = metrics[tolerance.metric]
    if math.isnan(value):
        return math.nan
    error = 1.0 - value if tolerance.metric in HIGHER_IS_BETTER else value
    if floor == 0.0:
        return 0.0 if error == 0.0 else math.inf
    return error / floor


def compare_record(
    key: RecordKey, native, reference, tolerance: Tolerance, floor: float | None = None, mode: str = "free"
) -> RecordResult:
    """Compare one native tensor (or None if the native side never produced it) with the reference's."""
    shape = list(reference.shape)
    base = {"stage": key.stage, "field": key.field, "step": key.step, "shape": shape,
            "tolerance": tolerance.to_dict(), "mode": mode, "floor": floor}
    if native is None:
        return RecordResult(**base, metrics={}, passed=False, problem="missing on the native side")
    if tuple(native.shape) != tuple(reference.shape):
        return RecordResult(**base, metrics={}, passed=False,
                            problem=f"shape {list(native.shape)} differs from reference {shape}",
                            native_shape=list(native.shape))
    metrics = tensor_metrics(native, reference)
    problem = f"{metrics['nonfinite']} non-finite values" if metrics.get("nonfinite") else None
    return RecordResult(**base, metrics=metrics, passed=tolerance.passes(metrics), problem=problem,
                        floor_multiple=floor_multiple(metrics, tolerance, floor))


def compare_traces(
    reference: Trace,
    native: Trace,
    dtype: str,
    table: dict[tuple[str, str, str], Tolerance] | ToleranceSpec | None = None,
    mode: str = "free",
    stages: Iterable[str] | None = None,
) -> Comparison:
    """Every reference record (of `stages`, default all) against the native one, in pipeline order.

    `table` is a `ToleranceSpec` (calibrated floors and thresholds) or a plain (dtype, stage, field) table.
    The result's `records` hold the comparison whatever the `mode`; `mode` only labels each record.
    Records only the native side produced are ignored: the reference defines what must match.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    wanted = None if stages is None else set(stages)
    comparison = Comparison()
    for key, ref_tensor in reference.items():
        if wanted is not None and key.stage not in wanted:
            continue
        if isinstance(table, ToleranceSpec):
            tolerance, floor = table.tolerance(key.stage, key.field, mode), table.floor(key.stage, key.field, mode)
        else:
            tolerance, floor = tolerance_for(dtype, key.stage, key.field, table), None
        comparison.records.append(compare_record(key, native.get(key), ref_tensor, tolerance, floor, mode))
    return comparison


def threshold_multiple(record: RecordResult, bound: float | None = None) -> float | None:
    """The record's error in its tolerance metric over `bound` (default its threshold), both taken as errors
    (1 - cos for cosine); None when the record has no value (missing, another shape)."""
    metric = record.tolerance["metric"]
    value = record.metrics.get(metric)
    bound = record.tolerance["threshold"] if bound is None else bound
    if value is None:
        return None
    if math.isnan(value):
        return math.nan
    error = 1.0 - value if metric in HIGHER_IS_BETTER else value
    limit = 1.0 - bound if metric in HIGHER_IS_BETTER else bound
    if limit == 0:
        return 0.0 if error == 0 else math.inf
    return error / limit
