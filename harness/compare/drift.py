"""Per-step drift of the denoising loop: how the error of the free run grows next to the local (forced) error.

`report["drift"]` (JSON, written by harness/report/build.py; plotted by the HTML report) has exactly this structure:

    {
      "steps": [0, 1, ..., N-1],
      "free":   {"latents":            {"rel_l2": [N floats], "cos": [N floats]},
                 "transformer_output": {"rel_l2": [N floats], "cos": [N floats]}},
      "forced": {... the same fields ...},                       # {} when forcing is off
      "growth": {"latents": [null, g1, ..., g(N-1)],             # free rel_l2[i] / free rel_l2[i-1]
                 "transformer_output": [null, ...]}
    }

Lists are indexed by position in "steps". A value is null where the record is missing or failed without a
number (shape mismatch), "nan"/"inf" strings where it is not finite (report.json stays standard JSON), and a
growth factor is null where the previous step's rel_l2 is 0 or missing. Free values are the accumulated error
of the native pipeline run on its own; forced values are the error of one step started from the reference's
latents. Growth near 1 means errors carry over without amplification; growth well above 1 at some step with
a small forced error there means the sampler amplifies earlier error, while a forced error that jumps at a
step points at that step itself.
"""

from __future__ import annotations

import math
from typing import Any

from harness.compare.records import Comparison, RecordResult

DRIFT_FIELDS = ("latents", "transformer_output")


def _value(metrics: dict[str, float], name: str) -> float | str | None:
    value = metrics.get(name)
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def _series(records: list[RecordResult], steps: list[int]) -> dict[str, dict[str, list[Any]]]:
    by_key = {(r.field, r.step): r.metrics for r in records if r.stage == "denoise"}
    out: dict[str, dict[str, list[Any]]] = {}
    for name in DRIFT_FIELDS:
        if not any((name, s) in by_key for s in steps):
            continue
        out[name] = {
            metric: [_value(by_key.get((name, s), {}), metric) for s in steps] for metric in ("rel_l2", "cos")
        }
    return out


def _growth(values: list[Any]) -> list[float | None]:
    growth: list[float | None] = [None]
    for previous, current in zip(values, values[1:], strict=False):
        ok = isinstance(previous, float | int) and isinstance(current, float | int) and previous > 0
        growth.append(current / previous if ok else None)
    return growth


def drift(comparison: Comparison) -> dict[str, Any]:
    """The drift section of report.json (structure in the module docstring); {} without denoising records."""
    steps = sorted({r.step for r in comparison.all_records() if r.stage == "denoise" and r.step is not None})
    if not steps:
        return {}
    free = _series(comparison.records, steps)
    return {
        "steps": steps,
        "free": free,
        "forced": _series(comparison.forced_records, steps),
        "growth": {name: _growth(series["rel_l2"]) for name, series in free.items()},
    }
