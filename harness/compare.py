"""Comparison of a native trace against a reference trace: per-record results and the first divergence.

Pure functions over traces; results are plain dataclasses that serialise to JSON (runners -> results ->
comparisons, kept apart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.metrics import tensor_metrics
from harness.tolerances import Tolerance, tolerance_for
from harness.trace import RecordKey, Trace


@dataclass
class RecordResult:
    """The verdict on one record. `problem` explains a failure that is not a number (missing, shape...)."""

    stage: str
    field: str
    step: int | None
    shape: list[int]
    metrics: dict[str, float]
    tolerance: dict
    passed: bool
    problem: str | None = None
    native_shape: list[int] | None = None

    def key(self) -> RecordKey:
        return RecordKey(self.stage, self.field, self.step)

    def to_dict(self) -> dict:
        data = {
            "stage": self.stage,
            "field": self.field,
            "step": self.step,
            "shape": self.shape,
            "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
            "tolerance": self.tolerance,
            "passed": self.passed,
        }
        if self.problem is not None:
            data["problem"] = self.problem
        if self.native_shape is not None and self.native_shape != self.shape:
            data["native_shape"] = self.native_shape
        return data


@dataclass
class Comparison:
    records: list[RecordResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.records) and all(r.passed for r in self.records)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def first_divergence(self) -> RecordResult | None:
        """The first failing record in pipeline order (records are kept in that order)."""
        return next((r for r in self.records if not r.passed), None)

    def by_stage(self) -> dict[str, list[RecordResult]]:
        stages: dict[str, list[RecordResult]] = {}
        for record in self.records:
            stages.setdefault(record.stage, []).append(record)
        return stages


def _json_number(value: float) -> float | str:
    """JSON has no NaN/Infinity: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def compare_record(key: RecordKey, native, reference, tolerance: Tolerance) -> RecordResult:
    """Compare one native tensor (or None if the native side never produced it) with the reference's."""
    shape = list(reference.shape)
    if native is None:
        return RecordResult(key.stage, key.field, key.step, shape, {}, tolerance.to_dict(), False,
                            problem="missing on the native side")
    if tuple(native.shape) != tuple(reference.shape):
        return RecordResult(key.stage, key.field, key.step, shape, {}, tolerance.to_dict(), False,
                            problem=f"shape {list(native.shape)} differs from reference {shape}",
                            native_shape=list(native.shape))
    metrics = tensor_metrics(native, reference)
    passed = tolerance.passes(metrics)
    problem = None
    if metrics.get("nonfinite"):
        problem = f"{metrics['nonfinite']} non-finite values"
    return RecordResult(key.stage, key.field, key.step, shape, metrics, tolerance.to_dict(), passed, problem)


def compare_traces(
    reference: Trace,
    native: Trace,
    dtype: str,
    table: dict[tuple[str, str, str], Tolerance] | None = None,
) -> Comparison:
    """Every reference record against the native one, in pipeline order.

    Records only the native side produced are ignored: the reference defines what must match.
    """
    comparison = Comparison()
    for key, ref_tensor in reference.items():
        tolerance = tolerance_for(dtype, key.stage, key.field, table)
        comparison.records.append(compare_record(key, native.get(key), ref_tensor, tolerance))
    return comparison
