"""Run a series of `python -m MODULE ARGS` commands in one folder from a warm interpreter.

A launcher process imports the heavy third-party packages once (torch, diffusers with its FLUX pipeline,
transformers, pytest: about 6 s of every fresh process here) and forks one child per command. The launcher never
imports this project's code, so each child imports it afresh from the folder and sees the files as they are when
the command starts, as a new process would. Used by tests/test_scaffold.py, which runs nine commands of
docs/adding-a-model.md while the files between them change.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

# imported once by the launcher, inherited by every command: the libraries, and the lazy diffusers modules a FLUX
# reference run imports
PRELOAD = "import torch, transformers, pytest\nfrom diffusers import FluxPipeline\n"
LAUNCHER = r"""
import json, os, sys, traceback

for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setsid()
        for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        os.chdir(job["cwd"])
        sys.path[0] = job["cwd"]
        sys.argv = [job["module"], *job["args"]]
        code = 0
        try:
            import runpy
            runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int | None):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass
class Completed:
    """What subprocess.run would have returned for the command (the fields the tests read)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class WarmCommands:
    """`with WarmCommands(folder, env) as warm: warm.run("harness.cli.main", [...])`; commands run one at a time."""

    def __init__(self, cwd: Path, env: dict[str, str], preload: str = PRELOAD) -> None:
        self.cwd = Path(cwd)
        self.env = env
        self.preload = preload  # Python source the launcher runs before its first command
        self.scratch = Path(tempfile.mkdtemp(prefix="warm-commands-"))

    def __enter__(self) -> WarmCommands:
        # the same environment as every command: variables read at import (HF_HUB_OFFLINE) must already hold
        self.launcher = subprocess.Popen([sys.executable, "-c", self.preload + LAUNCHER], cwd=self.cwd, env=self.env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def run(self, module: str, args: list[str], timeout_s: float = 1800.0) -> Completed:
        """Run one command; past `timeout_s` its whole session is killed and TimeoutError raised (as
        subprocess.run's timeout would), so a hung command fails its test instead of hanging the suite."""
        assert self.launcher.stdin is not None and self.launcher.stdout is not None
        out, err = self.scratch / "stdout", self.scratch / "stderr"
        job = {"module": module, "args": args, "cwd": str(self.cwd), "stdout": str(out), "stderr": str(err)}
        self.launcher.stdin.write(json.dumps(job) + "\n")
        self.launcher.stdin.flush()
        command = " ".join([module, *args])
        pid = json.loads(self._line(command))["pid"]
        finished: list[str] = []
        reader = threading.Thread(target=lambda: finished.append(self._line(command)), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if reader.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the command called setsid: its session is its process group
            reader.join(30)
            raise TimeoutError(f"{command} ran past {timeout_s:.0f} s and was killed")
        code = json.loads(finished[0])["returncode"]
        return Completed(["python", "-m", module, *args], code, out.read_text(errors="replace"),
                         err.read_text(errors="replace"))

    def _line(self, command: str) -> str:
        assert self.launcher.stdout is not None
        line = self.launcher.stdout.readline()
        if not line:
            raise RuntimeError(f"the warm launcher died running {command}")
        return line

    def __exit__(self, *_: object) -> None:
        if self.launcher.stdin is not None:
            self.launcher.stdin.close()
        try:
            self.launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
        for name in ("stdout", "stderr"):
            (self.scratch / name).unlink(missing_ok=True)
        self.scratch.rmdir()
