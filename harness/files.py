"""How every artifact the harness writes reaches the disk: atomically, with the permissions open() would give.

Artifacts (report.json, traces, reports, goldens, calibrations) are written through a private temporary file in
the destination folder (mkstemp: 0600) renamed into place, so nothing half written is ever seen; each then gets
the mode open() would have given it under the current umask (0644 with the usual 022).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def default_file_mode() -> int:
    """0o666 without the umask's bits. The umask is read from /proc (Linux), not set and restored: setting it
    from one thread while another creates a file gives that file (or, interleaved, the process) the wrong mode."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path: Path, binary: bool = True, mode: int | None = None) -> Iterator[IO[Any]]:
    """A handle on a temporary file beside `path`, renamed onto `path` when the block ends without an error
    (removed otherwise). `mode` sets the file's permissions; None gives the umask's default."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.chmod(tmp, default_file_mode() if mode is None else mode)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path) as out:
        out.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file renamed into place: never a half-written report."""
    with atomic_output(path, binary=False) as out:
        out.write(text)


def write_json_atomic(path: Path, data: Any, mode: int | None = None) -> None:
    """Write JSON (indented, no NaN or infinity) through a temporary file renamed into place."""
    with atomic_output(path, binary=False, mode=mode) as out:
        json.dump(data, out, indent=2, allow_nan=False)
        out.write("\n")
