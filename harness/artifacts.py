"""What a parity run leaves on disk: traces, images, report.html and report.md, then report.json last."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.file_modes import default_file_mode
from harness.image_metrics import ImageMetricsError, image_metrics, json_safe
from harness.report import save_side_by_side, write_json_atomic
from harness.report_html import render_html
from harness.report_md import render_markdown

if TYPE_CHECKING:
    from harness.parity import ParityResult


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file renamed into place: never a half-written report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def image_metrics_section(native: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """report["image_metrics"]: per-frame PSNR / SSIM / mean |diff| (0-255), or why there are none."""
    try:
        return {"frames": json_safe(image_metrics(native, reference))}
    except ImageMetricsError as exc:  # e.g. a native variant that decodes another size: the report says so
        return {"frames": [], "problem": str(exc)}


def write_reports(report: dict[str, Any], native: torch.Tensor | None, reference: torch.Tensor | None,
                  out_dir: Path) -> list[str]:
    """report.html and report.md for `report` (a report.json document), written atomically into `out_dir`."""
    write_text_atomic(out_dir / "report.html", render_html(report, native, reference))
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    return ["report.html", "report.md"]


def write_run_artifacts(result: ParityResult, out_dir: Path) -> None:
    """Traces, images, HTML and Markdown reports, then report.json last, so a report.json on disk always has
    its artifacts beside it.

    Everything is first written into a hidden staging folder inside `out_dir`, then moved into place: a failure
    while writing (a full disk, a rendering error) leaves the previous run's files whole and no new file
    beside them; while files are moved, the old report.json is already gone and the new one comes last.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staging-"))
    try:
        _write_artifacts(result, staging)
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, out_dir: Path) -> None:
    """Move every staged file into `out_dir`, report.json last (the old one removed first)."""
    (out_dir / "report.json").unlink(missing_ok=True)
    (out_dir / "error.json").unlink(missing_ok=True)
    # a run without forcing (or on one rank): no stale forced (or single-rank) trace from an earlier run
    for name in ("native_forced.safetensors", "native_1rank.safetensors", "native_1rank_forced.safetensors"):
        if not (staging / name).exists():
            (out_dir / name).unlink(missing_ok=True)
    for path in sorted(staging.iterdir()):
        if path.name != "report.json":
            os.replace(path, out_dir / path.name)
    os.replace(staging / "report.json", out_dir / "report.json")


def _write_artifacts(result: ParityResult, out_dir: Path) -> None:
    """Every artifact of the run into `out_dir` (the staging folder), report.json last."""
    result.native_trace.save(out_dir / "native.safetensors")
    result.reference_trace.save(out_dir / "reference.safetensors")
    traces = ["native.safetensors", "reference.safetensors"]
    if result.forced_trace is not None:  # the teacher-forced native run (harness/forcing.py)
        result.forced_trace.save(out_dir / "native_forced.safetensors")
        traces.append("native_forced.safetensors")
    ranks = getattr(result, "ranks", None)
    if ranks is not None:  # a multi-rank run: the single-rank native run it was compared with
        traces += ranks.save_traces(out_dir)
    report = result.report
    report["images"] = save_side_by_side(result.native_frames, result.reference_frames, out_dir)
    report["traces"] = traces
    report["image_metrics"] = image_metrics_section(result.native_frames, result.reference_frames)
    report["reports"] = ["report.html", "report.md"]
    start = time.perf_counter()
    write_reports(report, result.native_frames, result.reference_frames, out_dir)
    report.setdefault("timings_s", {})["reports"] = round(time.perf_counter() - start, 3)
    write_json_atomic(out_dir / "report.json", report)
