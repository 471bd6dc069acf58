"""Where `diffparity run` writes when no `--out` is given: a new folder per run, never the previous run's.

    out/CASE/run-20261206-163015/        one run (report.json, traces, images, or error.json)
    out/CASE/run-20261206-163015-2/      a second run started in the same second
    out/CASE/latest -> run-20261206-163015-2   the newest finished run (a relative symlink)

A user comparing a fix against the run before it finds both on disk. With an explicit `--out DIR` the run goes
to DIR as the interface says (replacing what a previous run left there, atomically: harness/report/artifacts.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

LATEST = "latest"
PREFIX = "run-"


def new_run_folder(case_root: Path, now: float | None = None) -> Path:
    """Create and return case_root/run-YYYYmmdd-HHMMSS (with -2, -3... when taken: creation is exclusive, so two
    runs started in the same second never share a folder)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    case_root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        folder = case_root / (PREFIX + stamp + ("" if attempt == 1 else f"-{attempt}"))
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"{case_root}: no free run folder for {stamp}")


def point_latest(run_dir: Path) -> Path:
    """Make run_dir.parent/latest a relative symlink to run_dir, replaced atomically (a reader never sees it
    missing). Returns the link. A platform without symlinks keeps the runs, without the link."""
    link = run_dir.parent / LATEST
    temporary = run_dir.parent / f".{LATEST}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    try:
        os.symlink(run_dir.name, temporary, target_is_directory=True)
        os.replace(temporary, link)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return link
