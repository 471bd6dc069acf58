"""Stop a real `diffparity run` with a real signal at a chosen moment and look at what it left behind.

`stop_run` starts the command in a session of its own (so every process it ever started, ranks forked by the
forkserver included, is found by its session id), waits for a progress line on stderr, sends the signal, and
counts the session's processes still alive five seconds after the command exits (stopping early once none is)
and the hidden folders left in its output folder and the checkpoint cache. Run this file to measure the issue's
matrix (SIGTERM and SIGINT at 5 moments of `run wan-tiny --tp 2 --sp 2`):

    .venv/bin/python tests/hostile/stop_signals.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIFFPARITY = [sys.executable, "-m", "harness.cli"]
# moment name -> (stderr text to wait for, rank processes to wait for after it, seconds after that). The rank
# moments wait for the ranks themselves, not for a time: the ranks of `run wan-tiny --tp 2 --sp 2` take ~3 s
# here, and a fixed 2 s after the line came after them under a lighter load (the signal then hit a finished
# command). "ranks-late" is 0.8 s into the ranks' run (1.5 s after all four were up, they had finished).
MOMENTS = {
    "start": ("", 0, 1.0),
    "reference": ("reference (Diffusers)", 0, 1.0),
    "ranks-start": ("steps on 4 ranks", 4, 0.3),
    "ranks-late": ("steps on 4 ranks", 4, 0.8),
    "writing": ("comparing and writing", 0, 0.0),
}
PREVIOUS = {"report.json": b'{"verdict": "pass", "case": "wan-tiny"}\n', "report.html": b"<html>old</html>",
            "native.png": b"old png"}


def session_processes(sid: int) -> list[str]:
    """'pid command' of every live process (zombies aside) in session `sid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{entry.name} {stat[stat.find('(') + 1:stat.rfind(')')]}")
    return found


def ranks_alive(sid: int) -> int:
    """Rank processes alive in session `sid`: forked by the forkserver, so their command line is the server's
    (`...multiprocessing.forkserver...`) and so is their parent's."""
    servers: dict[int, int] = {}  # pid -> parent pid, of the session's processes running the forkserver's code
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z" and b"forkserver" in cmdline:
            servers[int(entry.name)] = int(fields[1])
    return sum(parent in servers for parent in servers.values())


def wait_for_session_to_empty(sid: int, grace_s: float) -> list[str]:
    """The session's processes still alive `grace_s` after the command exited ([] as soon as none is: once the
    whole session is gone nothing is left that could start another, so waiting longer shows nothing new)."""
    deadline = time.monotonic() + grace_s
    left = session_processes(sid)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = session_processes(sid)
    return left


def hidden_folders(*folders: Path) -> list[str]:
    return [str(p) for folder in folders if folder.is_dir() for p in folder.iterdir() if p.name.startswith(".")
            and p.is_dir()]


@dataclass
class StopResult:
    moment: str
    signal_name: str
    exit_code: int | None
    stop_s: float  # signal -> command exited
    processes_left: list[str]
    hidden_left: list[str]
    previous_state: str  # "intact" (report.json byte for byte), "marked" (moved to previous/ + error.json), "lost"
    error_json: dict = field(default_factory=dict)
    stderr_tail: str = ""


def write_previous_run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in PREVIOUS.items():
        (out / name).write_bytes(data)


def previous_state(out: Path) -> str:
    if all((out / n).is_file() and (out / n).read_bytes() == d for n, d in PREVIOUS.items()):
        return "intact"
    moved = all((out / "previous" / n).is_file() and (out / "previous" / n).read_bytes() == d
                for n, d in PREVIOUS.items())
    if moved and not (out / "report.json").exists() and (out / "error.json").is_file():
        return "marked"
    if (out / "report.json").is_file() and b"wan-tiny" in (out / "report.json").read_bytes() \
            and (out / "report.json").read_bytes() != PREVIOUS["report.json"]:
        return "replaced by the finished run"
    return "lost"


def stop_run(argv: list[str], out: Path, moment: str, signum: int, env: dict[str, str] | None = None,
             timeout_s: float = 240.0) -> StopResult:
    """Run `diffparity ARGV --out OUT` (OUT holding a previous run), stop it with `signum` at `moment`."""
    write_previous_run(out)
    needle, ranks, delay = MOMENTS[moment]
    process = subprocess.Popen(DIFFPARITY + argv + ["--out", str(out)], cwd=ROOT, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, start_new_session=True, env=env or os.environ.copy())
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if needle in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if needle == "":
        seen.set()
    deadline = time.monotonic() + timeout_s
    while not seen.is_set() and process.poll() is None and time.monotonic() < deadline:
        seen.wait(0.1)
    while ranks and ranks_alive(process.pid) < ranks and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    sent = time.monotonic()
    if process.poll() is None:
        process.send_signal(signum)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = None
    stopped = time.monotonic() - sent
    left = wait_for_session_to_empty(process.pid, grace_s=5.0)
    if left:  # never leave them to the machine: the test fails, the processes go
        os.killpg(process.pid, signal.SIGKILL)
    reader.join(timeout=5)
    cache = Path(os.environ.get("DIFFPARITY_CACHE", ROOT / ".cache" / "diffparity")) / "checkpoints"
    error_file = out / "error.json"
    error = json.loads(error_file.read_text()) if error_file.is_file() else {}
    return StopResult(moment, signal.Signals(signum).name, code, round(stopped, 2), left,
                      hidden_folders(out, cache), previous_state(out), error, "".join(lines[-5:]))


def main() -> int:
    import tempfile

    argv = ["run", "wan-tiny", "--tp", "2", "--sp", "2"]
    results = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for signum in (signal.SIGTERM, signal.SIGINT):
            for moment in MOMENTS:
                out = Path(tmp) / f"{moment}-{signum}"
                result = stop_run(argv, out, moment, signum)
                results.append(result)
                print(f"{result.signal_name:7} {moment:12} exit {result.exit_code} stopped in {result.stop_s:5.2f} s, "
                      f"{len(result.processes_left)} processes left {result.processes_left}, "
                      f"{len(result.hidden_left)} hidden folders, previous run {result.previous_state}", flush=True)
    bad = [r for r in results if r.processes_left or r.hidden_left or r.previous_state == "lost"]
    print(f"{len(results)} stops in {time.monotonic() - start:.0f} s: {len(bad)} left something behind")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
