"""What a parity run leaves on disk: traces, images, report.html and report.md, then report.json last.

`write_run_artifacts` takes any result with the fields of `RunOutputs` (harness/run/parity.py's `ParityResult`
has them): the report layer does not know how a run was made.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from harness.files import write_json_atomic, write_text_atomic
from harness.report.html import render_html
from harness.report.image_metrics import ImageMetricsError, image_metrics, json_safe
from harness.report.images import side_by_side
from harness.report.markdown import render_markdown
from harness.trace.memory import Trace


class ExtraTraces(Protocol):
    """More traces of the run to save beside the main ones (a multi-rank run's single-rank traces)."""

    def save_traces(self, out_dir: Path) -> list[str]: ...


class RunOutputs(Protocol):
    """What a run hands over to be written: its traces, decoded frames and report.json document."""

    report: dict[str, Any]
    native_frames: torch.Tensor
    reference_frames: torch.Tensor
    native_trace: Trace
    reference_trace: Trace
    forced_trace: Trace | None
    ranks: ExtraTraces | None  # may be absent: read with getattr


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


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, C) uint8; a video batch (B, C, F, H, W) -> (B * F, H, W, C)."""
    if frames.ndim == 5:
        frames = frames.transpose(1, 2).flatten(0, 1)  # (B, F, C, H, W) -> (B * F, C, H, W), frames in order
    array = frames.detach().to(torch.float32).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (array * 255).round().astype(np.uint8)


def save_side_by_side(native: torch.Tensor, reference: torch.Tensor, out_dir: Path
                      ) -> tuple[list[str], float | None]:
    """native.png, reference.png (the decoded frames, one per row) and side_by_side.png (native | reference |
    |difference| heat-map on the run's scale, harness/report/images.py `side_by_side`): the names written and
    the top of the heat scale (the run's largest channel difference, 0-255 units; None without a side-by-side)."""
    written = []
    for name, frames in (("native.png", native), ("reference.png", reference)):
        Image.fromarray(np.concatenate(list(frames_to_uint8(frames)), axis=0)).save(out_dir / name)
        written.append(name)
    vmax = None
    if tuple(native.shape) == tuple(reference.shape):
        image, vmax = side_by_side(native, reference)
        image.save(out_dir / "side_by_side.png")
        written.append("side_by_side.png")
    return written, vmax


def write_run_artifacts(result: RunOutputs, out_dir: Path) -> None:
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


def _write_artifacts(result: RunOutputs, out_dir: Path) -> None:
    """Every artifact of the run into `out_dir` (the staging folder), report.json last."""
    result.native_trace.save(out_dir / "native.safetensors")
    result.reference_trace.save(out_dir / "reference.safetensors")
    traces = ["native.safetensors", "reference.safetensors"]
    if result.forced_trace is not None:  # the teacher-forced native run (harness/run/forcing.py)
        result.forced_trace.save(out_dir / "native_forced.safetensors")
        traces.append("native_forced.safetensors")
    ranks = getattr(result, "ranks", None)  # absent on results of single-rank runs made elsewhere
    if ranks is not None:  # a multi-rank run: the single-rank native run it was compared with
        traces += ranks.save_traces(out_dir)
    report = result.report
    report["images"], largest = save_side_by_side(result.native_frames, result.reference_frames, out_dir)
    if largest is not None:  # the top of the difference panels' heat scale (side_by_side.png, report.html)
        report["difference_max_255"] = float(largest)
    report["traces"] = traces
    report["image_metrics"] = image_metrics_section(result.native_frames, result.reference_frames)
    report["reports"] = ["report.html", "report.md"]
    start = time.perf_counter()
    write_reports(report, result.native_frames, result.reference_frames, out_dir)
    report.setdefault("timings_s", {})["reports"] = round(time.perf_counter() - start, 3)
    write_json_atomic(out_dir / "report.json", report)
