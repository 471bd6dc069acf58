"""What the HTML and Markdown reports show, derived from a report.json document: plain data, no markup.

Both renderers read only this module's output, so they agree on every number. Everything is defensive: a
key the report lacks (an older schema, a run that stopped early) drops its section instead of raising, and
newer keys (per-record `mode` and `floor_multiple`, `report["drift"]`) are shown when present.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

STAGE_ORDER = ("encode", "timesteps", "latents", "denoise", "decode")
DRIFT_FIELDS = ("latents", "transformer_output")
MODES = ("free", "forced")
# Environment rows in the order a reader looks for them; any other key follows.
ENVIRONMENT_KEYS = (
    "torch", "cuda", "gpu", "compute_capability", "diffusers", "dtype", "device", "attention_backend",
    "tf32_matmul", "torch_threads", "python", "platform",
)


def number(value: Any) -> float | None:
    """A report value as a float: numbers as they are, "nan"/"inf" strings as floats, anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def fmt(value: Any, kind: str = "g") -> str:
    """One cell's text: `e` scientific, `cos` 8 decimals, `db` PSNR, `f6` six decimals, `x` a multiple, `g` general."""
    x = number(value)
    if x is None:
        return "—" if value is None else str(value)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if kind == "e":
        return f"{x:.3e}"
    if kind == "cos":
        return f"{x:.8f}"
    if kind == "db":
        return f"{x:.2f}"
    if kind == "f6":
        return f"{x:.6f}"
    if kind == "x":
        return f"{x:.3g}x"
    return f"{x:.4g}"


@dataclass
class StageRow:
    """One line of the per-stage table: a stage, in one mode (free / forced) when the report has modes."""

    stage: str
    mode: str | None
    records: int = 0
    failed: int = 0
    worst_rel_l2: float | None = None
    min_cos: float | None = None
    worst_floor_multiple: float | None = None

    @property
    def verdict(self) -> str:
        return "pass" if self.failed == 0 else "fail"


def _worse(current: float | None, value: float | None, higher_is_worse: bool) -> float | None:
    """Keep the worse of two values; NaN counts as the worst there is."""
    if value is None:
        return current
    if current is None or math.isnan(value):
        return value
    if math.isnan(current):
        return current
    return max(current, value) if higher_is_worse else min(current, value)


def stage_rows(report: dict[str, Any]) -> list[StageRow]:
    """Per (stage, mode) from the records, in pipeline order; within a stage the free run before the forced."""
    rows: dict[tuple[str | None, str], StageRow] = {}
    for record in report.get("records") or []:
        stage = str(record.get("stage"))
        mode = record.get("mode")
        row = rows.setdefault((mode, stage), StageRow(stage, mode))
        row.records += 1
        row.failed += 0 if record.get("passed") else 1
        metrics = record.get("metrics") or {}
        row.worst_rel_l2 = _worse(row.worst_rel_l2, number(metrics.get("rel_l2")), higher_is_worse=True)
        row.min_cos = _worse(row.min_cos, number(metrics.get("cos")), higher_is_worse=False)
        row.worst_floor_multiple = _worse(
            row.worst_floor_multiple, number(record.get("floor_multiple")), higher_is_worse=True
        )

    def order(key: tuple[str | None, str]) -> tuple[int, int]:  # (stage rank, mode rank)
        mode, stage = key
        mode_rank = MODES.index(mode) if mode in MODES else (-1 if mode is None else len(MODES))
        stage_rank = STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)
        return stage_rank, mode_rank

    return [rows[key] for key in sorted(rows, key=order)]


def record_name(record: dict[str, Any]) -> str:
    """`stage/field` or `stage/field step N`, as the terminal and report.json detail name a record."""
    name = f"{record.get('stage')}/{record.get('field')}"
    return name if record.get("step") is None else f"{name} step {record['step']}"


def first_divergence_text(report: dict[str, Any]) -> str:
    """The sentence at the top of both reports."""
    first = report.get("first_divergence")
    if not first:
        return "none: every record is within its tolerance" if report.get("verdict") == "pass" else "none recorded"
    detail = report.get("first_divergence_detail")
    if detail:
        return str(detail)
    return record_name(first)


def tolerance_source(report: dict[str, Any]) -> str | None:
    """Where the thresholds came from (`report["tolerances"]["source"]`, schema 2), if the report says."""
    section = report.get("tolerances")
    if not isinstance(section, dict) or not section.get("source"):
        return None
    text = str(section["source"])
    if section.get("calibrated_records"):
        text += f" ({section['calibrated_records']} calibrated records)"
    return text


def request_line(report: dict[str, Any]) -> str:
    """`64x64, 4 steps, seed 0, fp32 on cpu` from the request (whatever of it is there)."""
    req = report.get("request") or {}
    parts = []
    if "height" in req and "width" in req:
        size = f"{req['height']}x{req['width']}"
        if req.get("frames") not in (None, 1):
            size += f"x{req['frames']} frames"
        parts.append(size)
    if "steps" in req:
        parts.append(f"{req['steps']} steps")
    parts.append(f"seed {report.get('seed', req.get('seed', '?'))}")
    if "dtype" in req or "device" in req:
        parts.append(f"{req.get('dtype', '?')} on {req.get('device', '?')}")
    return ", ".join(parts)


def environment_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) pairs, the seed included, known keys first; missing values shown as `none`."""
    env = dict(report.get("environment") or {})
    rows = []
    for key in ENVIRONMENT_KEYS:
        if key in env or key in ("cuda", "gpu"):
            rows.append((key, _env_value(env.pop(key, None))))
    rows.append(("seed", str(report.get("seed", "?"))))
    rows.extend((key, _env_value(value)) for key, value in env.items())
    return rows


def _env_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def environment_line(report: dict[str, Any]) -> str:
    """The environment in one line for the Markdown report."""
    env = report.get("environment") or {}
    tf32 = env.get("tf32_matmul")
    parts = [
        f"torch {env.get('torch', '?')}",
        f"CUDA {env.get('cuda') or 'none'}",
        f"GPU {env.get('gpu') or 'none'}",
        f"diffusers {env.get('diffusers') or 'none'}",
        str(env.get("dtype", "?")),
        f"attention {env.get('attention_backend', '?')}",
        f"TF32 {'?' if tf32 is None else ('on' if tf32 else 'off')}",
        f"seed {report.get('seed', '?')}",
    ]
    return " · ".join(parts)


@dataclass
class DriftSeries:
    """One line of the drift plot: a field's rel_l2 (and cos) per step in one mode."""

    mode: str
    field: str
    rel_l2: list[float | None]
    cos: list[float | None] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.field} ({self.mode})"


@dataclass
class Drift:
    steps: list[int]
    series: list[DriftSeries]
    growth: dict[str, list[float | None]]
    threshold: float | None  # the rel_l2 tolerance of denoise/latents, when rel_l2 is its metric
    source: str  # "drift" (report["drift"]) or "records" (derived from the per-step records)


def drift(report: dict[str, Any]) -> Drift | None:
    """The per-step drift: `report["drift"]` when present, else the free run's denoise records per step."""
    threshold = _latents_threshold(report)
    section = report.get("drift")
    if isinstance(section, dict) and section.get("steps"):
        steps = [int(s) for s in section["steps"]]
        series = []
        for mode in MODES:
            by_field = section.get(mode) or {}
            for name in (*DRIFT_FIELDS, *sorted(set(by_field) - set(DRIFT_FIELDS))):
                values = by_field.get(name)
                if isinstance(values, dict) and isinstance(values.get("rel_l2"), list):
                    series.append(DriftSeries(mode, name, _fit(values["rel_l2"], len(steps)),
                                              _fit(values.get("cos") or [], len(steps)) if values.get("cos") else []))
        return Drift(steps, series, _growth(section.get("growth")), threshold, "drift")
    per_series: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for record in report.get("records") or []:
        if record.get("stage") != "denoise" or record.get("field") not in DRIFT_FIELDS or record.get("step") is None:
            continue
        key = (record.get("mode") or "free", record["field"])
        per_series.setdefault(key, {})[int(record["step"])] = record.get("metrics") or {}
    if not per_series:
        return None
    steps = sorted({step for values in per_series.values() for step in values})
    series = []
    for mode in MODES:
        for name in DRIFT_FIELDS:
            values = per_series.get((mode, name))
            if values:
                series.append(DriftSeries(
                    mode, name,
                    [number(values.get(s, {}).get("rel_l2")) for s in steps],
                    [number(values.get(s, {}).get("cos")) for s in steps],
                ))
    return Drift(steps, series, {}, threshold, "records")


def _fit(values: list[Any], length: int) -> list[float | None]:
    """One value per step: a list of another length (a report from a run cut short) is padded or cut."""
    out = [number(v) for v in values[:length]]
    return out + [None] * (length - len(out))


def _growth(value: Any) -> dict[str, list[float | None]]:
    """Growth factors as {name: per-step values}, from a list or a (possibly nested) dict of lists."""
    if isinstance(value, list):
        return {"growth": [number(v) for v in value]}
    out: dict[str, list[float | None]] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(inner, list):
                out[str(key)] = [number(v) for v in inner]
            elif isinstance(inner, dict):
                for sub, values in _growth(inner).items():
                    out[f"{key} {sub}"] = values
    return out


def _latents_threshold(report: dict[str, Any]) -> float | None:
    for record in report.get("records") or []:
        if record.get("stage") == "denoise" and record.get("field") == "latents":
            tol = record.get("tolerance") or {}
            if tol.get("metric") == "rel_l2":
                return number(tol.get("threshold"))
            return None
    return None


def image_metric_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """report["image_metrics"]["frames"], or [] when the run has none."""
    section = report.get("image_metrics")
    if isinstance(section, dict):
        return [row for row in section.get("frames") or [] if isinstance(row, dict)]
    return []


def image_metrics_problem(report: dict[str, Any]) -> str | None:
    section = report.get("image_metrics")
    return section.get("problem") if isinstance(section, dict) else None
