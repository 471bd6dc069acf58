"""The warm launcher that the scaffold walk-through and the published-config runs fork their commands from
(tests/warm_commands.py): a command's exit code and output come back as subprocess.run's would, and a command
that hangs is killed with its session at its timeout instead of hanging the suite."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from warm_commands import WarmCommands


def test_exit_code_and_output_come_back_and_a_hung_command_is_killed(tmp_path: Path) -> None:
    (tmp_path / "speaks.py").write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)\n")
    (tmp_path / "hangs.py").write_text("import time\ntime.sleep(600)\n")
    with WarmCommands(tmp_path, dict(os.environ), preload="") as warm:
        done = warm.run("speaks", [])
        assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="hangs ran past 1 s"):
            warm.run("hangs", [], timeout_s=1.0)
        assert time.monotonic() - start < 10
