"""What the HTML and Markdown reports show, derived from a report.json document: plain data, no markup.

Both renderers read only this module's output, so they agree on every number. Everything is defensive: a
key the report lacks (an older schema, a run that stopped early) drops its section instead of raising, and
newer keys (per-record `mode`, `floor_multiple` and `threshold_multiple`, `report["drift"]`, `report["noise"]`)
are shown when present. A record's multiple of its threshold is derived from its metrics and tolerance when
the report predates the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

STAGE_ORDER = ("encode", "timesteps", "latents", "denoise", "decode")
DRIFT_FIELDS = ("latents", "transformer_output", "noise_pred")  # per-step records drawn in the drift plot
HIGHER_IS_BETTER = ("cos",)  # tolerance metrics where the error is 1 - value (harness/compare/tolerances.py)
MULTIPLES_NOTE = "x threshold = error / threshold (1.0 is the gate: above it a record fails)"
FLOOR_NOTE = "x floor = error / calibrated floor"
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
    worst_threshold_multiple: float | None = None

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
        row.worst_threshold_multiple = _worse(
            row.worst_threshold_multiple, threshold_multiple(record), higher_is_worse=True
        )

    def order(key: tuple[str | None, str]) -> tuple[int, int]:  # (stage rank, mode rank)
        mode, stage = key
        mode_rank = MODES.index(mode) if mode in MODES else (-1 if mode is None else len(MODES))
        stage_rank = STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)
        return stage_rank, mode_rank

    return [rows[key] for key in sorted(rows, key=order)]


def threshold_multiple(record: dict[str, Any]) -> float | None:
    """The record's error over its threshold (1.0 = the gate), both as errors (1 - cos for cosine): the report's
    `threshold_multiple` when it has one, else derived from its metrics and tolerance; None without a value."""
    if "threshold_multiple" in record:
        return number(record["threshold_multiple"])
    tolerance = record.get("tolerance") or {}
    value = number((record.get("metrics") or {}).get(tolerance.get("metric")))
    bound = number(tolerance.get("threshold"))
    if value is None or bound is None:
        return None
    if math.isnan(value):
        return math.nan
    higher_is_better = tolerance.get("metric") in HIGHER_IS_BETTER
    error, limit = (1.0 - value, 1.0 - bound) if higher_is_better else (value, bound)
    if limit == 0:
        return 0.0 if error == 0 else math.inf
    return error / limit


def threshold_rule(report: dict[str, Any]) -> str:
    """How to read the multiples and where the thresholds came from: stated once under each report's table."""
    section = report.get("tolerances")
    rule = section.get("rule") if isinstance(section, dict) else None
    if not rule:  # a report older than the rule: say what the source implies
        source = tolerance_source(report)
        rule = ("threshold = the defaults (fp32 rel_l2 <= 1e-5, bf16 cos >= 0.999)" if source in (None, "default")
                else f"threshold = 3 x the calibrated floor ({source})")
    has_floor = any(record.get("floor_multiple") is not None for record in report.get("records") or [])
    note = f"{MULTIPLES_NOTE}; {FLOOR_NOTE}" if has_floor else MULTIPLES_NOTE
    return f"{note}. {rule[0].upper()}{rule[1:]}."


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
    """One line of the drift plot: a field's values per step in one mode (None: no record at that step)."""

    mode: str
    field: str
    values: list[float | None]

    @property
    def label(self) -> str:
        return f"{self.field} ({self.mode})"


@dataclass
class Drift:
    """`normalised`: each per-step record's error / its own threshold (what the plot draws: 1.0 is the gate for
    every line); `rel_l2` and `cos`: the raw values (report["drift"] when present, else the records)."""

    steps: list[int]
    normalised: list[DriftSeries]
    rel_l2: list[DriftSeries]
    cos: list[DriftSeries]
    growth: dict[str, list[float | None]]
    source: str  # "drift" (report["drift"]) or "records" (derived from the per-step records)


def _per_step_records(report: dict[str, Any]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """(mode, field) -> step -> record, for the denoise records of the drift fields."""
    found: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for record in report.get("records") or []:
        if record.get("stage") != "denoise" or record.get("field") not in DRIFT_FIELDS or record.get("step") is None:
            continue
        found.setdefault((record.get("mode") or "free", record["field"]), {})[int(record["step"])] = record
    return found


def drift(report: dict[str, Any]) -> Drift | None:
    """The per-step drift: error / threshold per record, and rel_l2 / cos from `report["drift"]` when present,
    else from the free and forced denoise records per step."""
    records = _per_step_records(report)
    section = report.get("drift")
    has_section = isinstance(section, dict) and bool(section.get("steps"))
    if not records and not has_section:
        return None
    steps = ([int(s) for s in section["steps"]] if has_section
             else sorted({step for values in records.values() for step in values}))
    keys = [(mode, name) for mode in MODES for name in DRIFT_FIELDS if (mode, name) in records]
    normalised = [DriftSeries(mode, name, [threshold_multiple(records[(mode, name)][s])
                                           if s in records[(mode, name)] else None for s in steps])
                  for mode, name in keys]
    if has_section:
        rel_l2, cos = [], []
        for mode in MODES:
            by_field = section.get(mode) or {}
            for name in (*DRIFT_FIELDS, *sorted(set(by_field) - set(DRIFT_FIELDS))):
                values = by_field.get(name)
                if isinstance(values, dict) and isinstance(values.get("rel_l2"), list):
                    rel_l2.append(DriftSeries(mode, name, _fit(values["rel_l2"], len(steps))))
                    if values.get("cos"):
                        cos.append(DriftSeries(mode, name, _fit(values["cos"], len(steps))))
        return Drift(steps, normalised, rel_l2, cos, _growth(section.get("growth")), "drift")

    def metric(mode: str, name: str, key: str) -> DriftSeries:
        by_step = records[(mode, name)]
        return DriftSeries(mode, name, [number((by_step[s].get("metrics") or {}).get(key)) if s in by_step else None
                                        for s in steps])

    return Drift(steps, normalised, [metric(m, n, "rel_l2") for m, n in keys], [metric(m, n, "cos") for m, n in keys],
                 {}, "records")


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


def image_metric_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """report["image_metrics"]["frames"], or [] when the run has none."""
    section = report.get("image_metrics")
    if isinstance(section, dict):
        return [row for row in section.get("frames") or [] if isinstance(row, dict)]
    return []


def image_metrics_problem(report: dict[str, Any]) -> str | None:
    section = report.get("image_metrics")
    return section.get("problem") if isinstance(section, dict) else None


@dataclass
class NoiseCheck:
    """One check of the noise detector, on both sides: its value, the threshold it fires at, whether it fired."""

    name: str
    native: str
    reference: str
    threshold: str
    fired: str  # "native", "reference", "both" or ""


@dataclass
class NoiseView:
    """report["noise"] as the reports show it: the two verdicts with their reasons, whether it fails the run."""

    native: str  # "ok: no check fired; closest: ..." / "flagged: pixel_noise 0.91 >= 0.35"
    reference: str
    fails_run: bool
    note: str
    checks: list[NoiseCheck]

    @property
    def verdict(self) -> str:
        return "fail" if self.fails_run else "pass"


def _noise_value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return "—" if value is None else fmt(value)


def _side_verdict(side: Any) -> str:
    if not isinstance(side, dict):
        return "not judged"
    verdict = str(side.get("verdict", "?"))
    reason = side.get("reason")
    return f"{verdict}: {reason}" if reason else verdict


def noise(report: dict[str, Any]) -> NoiseView | None:
    """The noise detector's section (harness/noise/detector.py `noise_section`), or None when the report has none."""
    section = report.get("noise")
    if not isinstance(section, dict):
        return None
    native, reference = section.get("native"), section.get("reference")
    by_name: dict[str, dict[str, dict[str, Any]]] = {}
    for side_name, side in (("native", native), ("reference", reference)):
        side_checks = side.get("checks") if isinstance(side, dict) else None
        for check in side_checks if isinstance(side_checks, list) else []:
            if isinstance(check, dict) and check.get("name"):
                by_name.setdefault(str(check["name"]), {})[side_name] = check
    checks = []
    for name, sides in by_name.items():
        fired = [s for s in ("native", "reference") if (sides.get(s) or {}).get("fired")]
        any_side = sides.get("native") or sides.get("reference") or {}
        checks.append(NoiseCheck(name, _noise_value((sides.get("native") or {}).get("value")),
                                 _noise_value((sides.get("reference") or {}).get("value")),
                                 _noise_value(any_side.get("threshold")),
                                 "both" if len(fired) == 2 else (fired[0] if fired else "")))
    latent = native.get("latent") if isinstance(native, dict) else None
    for check in (latent.get("checks") or []) if isinstance(latent, dict) else []:  # the native latents' checks
        checks.append(NoiseCheck(f"latent {check.get('name')}", _noise_value(check.get("value")), "—",
                                 _noise_value(check.get("threshold")), "native" if check.get("fired") else ""))
    return NoiseView(_side_verdict(native), _side_verdict(reference), bool(section.get("fails_run")),
                     str(section.get("note") or ""), checks)
