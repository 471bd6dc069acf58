"""Reports of a parity run: `report.json` (the stable schema), a per-stage terminal table, and images."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.compare import Comparison, RecordResult
from harness.trace import STAGES

REPORT_SCHEMA_VERSION = 1


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file in the same folder, renamed into place: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, allow_nan=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe_failure(record: RecordResult) -> str:
    """One line saying which record failed and by how much against which tolerance."""
    where = f"{record.stage}/{record.field}" + ("" if record.step is None else f" step {record.step}")
    if record.problem:  # missing, shape mismatch or non-finite values: no meaningful number to show
        return f"{where}: {record.problem}"
    tol = record.tolerance
    value = record.metrics.get(tol["metric"], math.nan)
    relation = "<" if tol["metric"] == "cos" else ">"
    return (
        f"{where}: {tol['metric']} {value:.3g} {relation} tolerance {tol['threshold']:.3g} "
        f"(max_abs {record.metrics.get('max_abs', math.nan):.3g}, cos {record.metrics.get('cos', math.nan):.6f})"
    )


def build_report(
    case: str,
    seed: int,
    comparison: Comparison,
    request: dict[str, Any],
    environment: dict[str, Any],
    timings: dict[str, float],
    checkpoint: str,
) -> dict[str, Any]:
    """The report.json document. `case`, `seed`, `verdict`, `first_divergence`, `records` are the stable core."""
    first = comparison.first_divergence
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "case": case,
        "seed": seed,
        "verdict": "pass" if comparison.passed else "fail",
        "first_divergence": None if first is None else {"stage": first.stage, "field": first.field, "step": first.step},
        "first_divergence_detail": None if first is None else describe_failure(first),
        "records": [record.to_dict() for record in comparison.records],
        "stages": stage_summary(comparison),
        "request": request,
        "checkpoint": checkpoint,
        "environment": environment,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def stage_summary(comparison: Comparison) -> dict[str, dict[str, Any]]:
    """Per stage: record count, failures, worst rel_l2 and lowest cosine."""
    summary: dict[str, dict[str, Any]] = {}
    for stage, records in comparison.by_stage().items():
        rels = [r.metrics["rel_l2"] for r in records if "rel_l2" in r.metrics]
        coss = [r.metrics["cos"] for r in records if "cos" in r.metrics]
        summary[stage] = {
            "records": len(records),
            "failed": sum(not r.passed for r in records),
            "worst_rel_l2": _finite_or_str(max(rels, key=_nan_high)) if rels else None,
            "min_cos": _finite_or_str(min(coss, key=_nan_low)) if coss else None,
            "verdict": "pass" if all(r.passed for r in records) else "fail",
        }
    return summary


def _nan_high(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _finite_or_str(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def format_stage_table(comparison: Comparison) -> str:
    """A small fixed-width table for the terminal, one line per stage in pipeline order."""
    summary = stage_summary(comparison)
    lines = [f"{'stage':<10} {'records':>7} {'failed':>6} {'worst rel_l2':>13} {'min cos':>12}  verdict"]
    for stage in STAGES:
        if stage not in summary:
            continue
        row = summary[stage]
        rel = row["worst_rel_l2"]
        cos = row["min_cos"]
        rel_text = f"{rel:.3e}" if isinstance(rel, float) else str(rel)
        cos_text = f"{cos:.8f}" if isinstance(cos, float) else str(cos)
        lines.append(
            f"{stage:<10} {row['records']:>7} {row['failed']:>6} {rel_text:>13} {cos_text:>12}  {row['verdict']}"
        )
    first = comparison.first_divergence
    lines.append(f"verdict: {'PASS' if comparison.passed else 'FAIL'}")
    if first is not None:
        lines.append(f"first divergence: {describe_failure(first)}")
    return "\n".join(lines)


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, C) uint8."""
    array = frames.detach().to(torch.float32).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (array * 255).round().astype(np.uint8)


def save_side_by_side(native: torch.Tensor, reference: torch.Tensor, out_dir: Path) -> list[str]:
    """native.png, reference.png and side_by_side.png (native | reference | 4x amplified |difference|)."""
    nat = frames_to_uint8(native)
    ref = frames_to_uint8(reference)
    written = []
    for name, array in (("native.png", nat), ("reference.png", ref)):
        Image.fromarray(np.concatenate(list(array), axis=0)).save(out_dir / name)
        written.append(name)
    if nat.shape == ref.shape:
        diff = np.clip(np.abs(nat.astype(np.int16) - ref.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
        rows = [np.concatenate([n, r, d], axis=1) for n, r, d in zip(nat, ref, diff, strict=True)]
        Image.fromarray(np.concatenate(rows, axis=0)).save(out_dir / "side_by_side.png")
        written.append("side_by_side.png")
    return written
