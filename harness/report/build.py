"""report.json of a run (the stable schema) and its per-stage terminal table."""

from __future__ import annotations

import math
import textwrap
from typing import Any

from harness.compare.drift import drift
from harness.compare.records import Comparison, RecordResult
from harness.trace.keys import STAGES

REPORT_SCHEMA_VERSION = 2


def record_where(record: RecordResult) -> str:
    return f"{record.stage}/{record.field}" + ("" if record.step is None else f" step {record.step}")


def describe_failure(record: RecordResult) -> str:
    """One line saying which record failed and by how much against which tolerance (and its floor)."""
    where = record_where(record)
    if record.mode == "forced":
        where += " (forced)"
    if record.problem:  # missing, shape mismatch or non-finite values: no meaningful number to show
        return f"{where}: {record.problem}"
    tol = record.tolerance
    value = record.metrics.get(tol["metric"], math.nan)
    relation = "<" if tol["metric"] == "cos" else ">"
    of_threshold = record.threshold_multiple
    multiple = "" if of_threshold is None else f", {_multiple_text(of_threshold)} its threshold"
    multiple += "" if record.floor_multiple is None else f", {_multiple_text(record.floor_multiple)} its floor"
    return (
        f"{where}: {tol['metric']} {value:.3g} {relation} tolerance {tol['threshold']:.3g}{multiple} "
        f"(max_abs {record.metrics.get('max_abs', math.nan):.3g}, cos {record.metrics.get('cos', math.nan):.6f})"
    )


def describe_first_divergence(comparison: Comparison) -> str | None:
    """The sentence of report["first_divergence_detail"]: the record, and whether its error is local."""
    first = comparison.first_divergence
    if first is None:
        return None
    text = describe_failure(first)
    if comparison.forcing and not comparison.first_divergence_is_local:
        text += "; every local (forced) record passes: the error only grows by accumulation"
    return text


def build_report(
    case: str,
    seed: int,
    comparison: Comparison,
    request: dict[str, Any],
    environment: dict[str, Any],
    timings: dict[str, float],
    checkpoint: str,
    tolerances: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report.json document. `case`, `seed`, `verdict`, `first_divergence`, `records` are the stable core.

    `records` holds the free run's records, then the forced run's (each with `mode`); `first_divergence` is
    the first failing local record (harness/compare/records.py), `first_divergence_mode` says which run's record it
    is, `first_divergence_local` whether it is a local error; `drift` is documented in harness/compare/drift.py.
    """
    first = comparison.first_divergence
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "case": case,
        "seed": seed,
        "verdict": "pass" if comparison.passed else "fail",
        "first_divergence": None if first is None else {"stage": first.stage, "field": first.field, "step": first.step},
        "first_divergence_mode": None if first is None else first.mode,
        "first_divergence_local": None if first is None else comparison.first_divergence_is_local,
        "first_divergence_detail": describe_first_divergence(comparison),
        "forcing": comparison.forcing,
        "records": [record.to_dict() for record in comparison.all_records()],
        "stages": stage_summary(comparison),
        "drift": drift(comparison),
        "tolerances": tolerances or {"source": "default"},
        "request": request,
        "checkpoint": checkpoint,
        "environment": environment,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def _summarise(records: list[RecordResult]) -> dict[str, Any]:
    rels = [r.metrics["rel_l2"] for r in records if "rel_l2" in r.metrics]
    coss = [r.metrics["cos"] for r in records if "cos" in r.metrics]
    multiples = [r.floor_multiple for r in records if r.floor_multiple is not None]
    of_threshold = [m for m in (r.threshold_multiple for r in records) if m is not None]
    return {
        "records": len(records),
        "failed": sum(not r.passed for r in records),
        "worst_rel_l2": _finite_or_str(max(rels, key=_nan_high)) if rels else None,
        "min_cos": _finite_or_str(min(coss, key=_nan_low)) if coss else None,
        "worst_floor_multiple": _finite_or_str(max(multiples, key=_nan_high)) if multiples else None,
        "worst_threshold_multiple": _finite_or_str(max(of_threshold, key=_nan_high)) if of_threshold else None,
    }


def stage_summary(comparison: Comparison) -> dict[str, dict[str, Any]]:
    """Per stage: the free run's record count, failures, worst rel_l2, lowest cosine and worst floor multiple;
    `forced` holds the same for the forced run where the stage was forced; `verdict` covers both."""
    summary: dict[str, dict[str, Any]] = {}
    forced = comparison.by_stage("forced")
    for stage, records in comparison.by_stage("free").items():
        row = _summarise(records)
        if stage in forced:
            row["forced"] = _summarise(forced[stage])
        passed = all(r.passed for r in records) and all(r.passed for r in forced.get(stage, []))
        row["verdict"] = "pass" if passed else "fail"
        summary[stage] = row
    return summary


def _nan_high(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _finite_or_str(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _multiple_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.3g}x"


def _sci(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3e}" if isinstance(value, float) else str(value)


MULTIPLES_NOTE = "x thresh = error / threshold (1.0 is the gate: above it a record fails); x floor = error / floor"
TERMINAL_WIDTH = 118


def format_stage_table(comparison: Comparison, noise: dict[str, Any] | None = None,
                       tolerances: dict[str, Any] | None = None) -> str:
    """A small fixed-width table for the terminal, one line per stage in pipeline order: the free run's worst
    rel_l2 and its worst multiples of threshold and floor, and the forced (local) run's where the stage was
    forced; then how to read the multiples and where thresholds came from (`tolerances`: report["tolerances"]),
    the noise detector's note (`noise`: report["noise"]) and the verdict, which a noise failure also decides."""
    summary = stage_summary(comparison)
    lines = [
        f"{'stage':<10} {'records':>7} {'failed':>6} {'worst rel_l2':>13} {'x thresh':>8} {'x floor':>8} "
        f"{'forced rel_l2':>13} {'x thresh':>8} {'x floor':>8}  verdict"
    ]
    for stage in STAGES:
        if stage not in summary:
            continue
        row = summary[stage]
        forced = row.get("forced") or {}
        failed = row["failed"] + forced.get("failed", 0)
        lines.append(
            f"{stage:<10} {row['records']:>7} {failed:>6} {_sci(row['worst_rel_l2']):>13} "
            f"{_multiple_text(row['worst_threshold_multiple']):>8} {_multiple_text(row['worst_floor_multiple']):>8} "
            f"{_sci(forced.get('worst_rel_l2')):>13} {_multiple_text(forced.get('worst_threshold_multiple')):>8} "
            f"{_multiple_text(forced.get('worst_floor_multiple')):>8}  {row['verdict']}"
        )
    rule = MULTIPLES_NOTE + (f"; {tolerances['rule']}" if tolerances and tolerances.get("rule") else "")
    lines += textwrap.wrap(rule, width=TERMINAL_WIDTH, break_long_words=False, break_on_hyphens=False)
    noise_fails = bool(noise and noise.get("fails_run"))
    if noise:
        lines.append(f"noise: {noise['note']}")
        latent = (noise.get("native") or {}).get("latent")
        if isinstance(latent, dict):  # harness/run/latent_noise.py: the native decode/latents judged too
            lines.append(f"latent check: {latent.get('verdict')}: {latent.get('reason')}")
    lines.append(f"verdict: {'PASS' if comparison.passed and not noise_fails else 'FAIL'}")
    detail = describe_first_divergence(comparison)
    if detail is not None:
        lines.append(f"first divergence: {detail}")
    return "\n".join(lines)
