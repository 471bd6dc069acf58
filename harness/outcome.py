"""What a run folder says about its last run: the names a run may leave, and how a failed run is marked.

Kept free of torch and the report renderers, so a command stopped at any moment (even inside an import,
harness/lifetime.py) can still mark its folder: the earlier run's files move to `previous/` and `error.json`
says why this run left nothing, so no stale report reads as current.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.files import write_json_atomic
from harness.lifetime import sweep_stale_folders

# every file a run or a compare may leave in its folder: a new run replaces or removes each of them, so no file
# of an earlier run is ever left beside a newer report.json (a mixed folder)
RUN_ARTIFACTS = ("report.json", "report.html", "report.md", "error.json", "native.png", "reference.png",
                 "side_by_side.png", "native.safetensors", "reference.safetensors", "native_forced.safetensors",
                 "native_1rank.safetensors", "native_1rank_forced.safetensors")
PREVIOUS = "previous"  # where a failed or interrupted run moves the run before it (retire_previous_run)
TEMPORARY_KINDS = ("staging", "ranks")  # harness/lifetime.py folders a killed run may have left in DIR


def retire_previous_run(out_dir: Path) -> list[str]:
    """Move an earlier run's files out of `out_dir` into `out_dir/previous/` (report.json first), so a failed or
    interrupted run never leaves the earlier report reading as this run's; returns the names moved. A folder
    without report.json keeps what it has (a second failure keeps the run in previous/ as it was)."""
    if not (out_dir / "report.json").is_file():
        return []
    target = out_dir / PREVIOUS
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
    target.mkdir(exist_ok=True)
    moved = []
    for name in RUN_ARTIFACTS:
        source = out_dir / name
        if name != "error.json" and (source.is_file() or source.is_symlink()):
            os.replace(source, target / name)
            moved.append(name)
        elif name != "report.json":
            (target / name).unlink(missing_ok=True)  # an older run's file in previous/ is not this run's
    return moved


def mark_failed_run(out_dir: Path, record: dict[str, Any]) -> None:
    """The one artifact of a run that failed or was interrupted: `out_dir/error.json` (`record`: case, error,
    exit_code, interrupted), after the earlier run's files moved to previous/ (named in the record)."""
    sweep_stale_folders(out_dir, TEMPORARY_KINDS)
    moved = retire_previous_run(out_dir)
    if moved:
        record = {**record, "previous_run": {"folder": PREVIOUS, "files": moved}}
    write_json_atomic(out_dir / "error.json", record)


__all__ = ["PREVIOUS", "RUN_ARTIFACTS", "TEMPORARY_KINDS", "mark_failed_run", "retire_previous_run"]
