"""The permissions of every artifact the harness writes.

Artifacts are written through private temporary files (mkstemp: 0600) renamed into place, so nothing half
written is ever seen; each then gets the mode open() would have given it under the current umask (0644 with the
usual 022): report.json, traces, reports, goldens and calibrations alike.
"""

from __future__ import annotations

import os


def default_file_mode() -> int:
    """0o666 without the umask's bits."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
