"""What a parity run leaves on disk: traces, images, then report.json (plus report.html / report.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.report import save_side_by_side, write_json_atomic

if TYPE_CHECKING:
    from harness.parity import ParityResult


def write_run_artifacts(result: ParityResult, out_dir: Path) -> None:
    """Traces, images, then report.json last, so a report on disk always has its artifacts beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result.native_trace.save(out_dir / "native.safetensors")
    result.reference_trace.save(out_dir / "reference.safetensors")
    result.report["images"] = save_side_by_side(result.native_frames, result.reference_frames, out_dir)
    result.report["traces"] = ["native.safetensors", "reference.safetensors"]
    (out_dir / "error.json").unlink(missing_ok=True)
    write_json_atomic(out_dir / "report.json", result.report)
