"""Progress where people wait: a line per phase, a heartbeat after silence, step bars only on a terminal.

The end-to-end check runs `diffparity run` as CI does, with stderr piped, and times every line it writes.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.progress import Progress, heartbeat_seconds, phase_of

ROOT = Path(__file__).resolve().parents[1]


def test_phases_steps_and_heartbeat_when_piped() -> None:
    stream = io.StringIO()
    with Progress("flux-tiny", stream=stream, heartbeat_s=0.2) as progress:
        progress.phase("reference (Diffusers), 2 steps")
        step = progress("reference")
        assert step is not None
        step(1, 2)
        time.sleep(0.6)  # silence: the heartbeat names the phase and the last step
        step(2, 2)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("] flux-tiny: reference (Diffusers), 2 steps")
    assert any("reference (Diffusers), 2 steps: still running (reference denoising step 1/2)" in line
               for line in lines)
    assert lines[-1].endswith("flux-tiny: reference: 2 denoising steps done")
    assert "\r" not in stream.getvalue()  # no bar on a pipe
    assert all(line.startswith("[") and " s] flux-tiny: " in line for line in lines)


def test_a_phase_that_fails_in_its_first_second_leaves_no_line() -> None:
    """A command that fails at once says only its one-line error; a phase that lasts has its line after delay_s."""
    stream = io.StringIO()
    with pytest.raises(ValueError), Progress("x", stream=stream, heartbeat_s=5) as progress:
        progress.phase("checking the golden")
        raise ValueError("no golden")
    assert stream.getvalue() == ""
    with Progress("x", stream=stream, heartbeat_s=5, delay_s=0.2) as progress:
        progress.phase("a long phase")
        time.sleep(0.6)
        assert "x: a long phase" in stream.getvalue()  # written while the phase still runs
        progress.phase("a short last phase")
    assert stream.getvalue().splitlines()[-1].endswith("x: a short last phase")  # a normal exit writes it


def test_disabled_progress_says_nothing_and_stops_its_thread() -> None:
    stream = io.StringIO()
    with Progress("x", stream=stream, enabled=False, heartbeat_s=0.05) as progress:
        progress.phase("one")
        assert progress("reference") is None
        time.sleep(0.2)
    assert stream.getvalue() == ""
    assert not [t for t in threading.enumerate() if t.name == "diffparity-heartbeat"]


def test_heartbeat_setting_and_phase_of(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFPARITY_HEARTBEAT_S", "2.5")
    assert heartbeat_seconds() == 2.5
    for bad in ("0", "-1", "soon", "1e9"):
        monkeypatch.setenv("DIFFPARITY_HEARTBEAT_S", bad)
        assert heartbeat_seconds() == 10.0
    phase_of(None)("ignored")  # a plain callback factory or None: phases go nowhere
    stream = io.StringIO()
    progress = Progress("y", stream=stream)
    phase_of(progress)("heard")
    progress.close()
    assert "y: heard" in stream.getvalue()


def test_piped_run_prints_a_line_per_phase_and_is_never_silent(tmp_path: Path) -> None:
    """`diffparity run` with stderr piped (a CI log) and a 1 s heartbeat: every phase has its line, the longest
    silence stays near the heartbeat, and no progress bar (carriage returns) reaches the log."""
    env = {**os.environ, "DIFFPARITY_HEARTBEAT_S": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "harness.cli.main", "run", "flux-tiny", "--steps", "2", "--height", "32",
               "--width", "32", "--out", str(tmp_path / "run")]
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stamped: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: stamped.extend((time.monotonic(), line) for line in proc.stderr))
    reader.start()
    stdout = proc.stdout.read()
    assert proc.wait(timeout=300) == 0, stdout
    reader.join()
    text = "".join(line for _, line in stamped)
    assert "\r" not in text
    for phase in ("checkpoint", "reference (Diffusers), 2 steps", "reference: 2 denoising steps done",
                  "native, 2 steps on one rank, then teacher-forced", "native: 2 denoising steps done",
                  "comparing and writing the report"):
        assert f"flux-tiny: {phase}" in text, text
    times = [start] + [t for t, _ in stamped]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert gaps[0] < 10, f"{gaps[0]:.1f} s before the first line"
    assert max(gaps[1:]) < 4, f"{max(gaps[1:]):.1f} s without a line (heartbeat 1 s):\n{text}"
    assert "verdict: PASS" in stdout
