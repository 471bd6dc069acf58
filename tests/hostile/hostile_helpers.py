"""Helpers of the hostile-input suite (imported by its test modules; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Reproducible in CI: the same examples every run (derandomize), no per-example deadline on a shared machine.
HOSTILE = settings(max_examples=200, derandomize=True, deadline=None, print_blob=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Unpickled(AssertionError):
    """Raised by conftest.py's stand-ins of every unpickling entry point while a hostile test runs."""


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`diffparity ARGV` in process: (exit code, stdout, stderr); argparse's SystemExit becomes the code."""
    from harness.cli.main import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, needle: str | None = None) -> str:
    """Exit 2, exactly one printable 'error:' line on stderr, no traceback, not an internal error."""
    assert code == 2, f"exit {code}, stderr: {err!r}"
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    line = error_lines[0]
    assert "Traceback" not in err and "internal error" not in line, err
    assert line.isprintable(), repr(line)
    if needle is not None:
        assert needle in line, line
    return line


def assert_only_error_json(out_dir: Path, needle: str | None = None) -> None:
    """A run that could not start leaves only error.json (with the same one-line reason) in its folder."""
    assert sorted(p.name for p in out_dir.iterdir()) == ["error.json"], sorted(p.name for p in out_dir.iterdir())
    report = json.loads((out_dir / "error.json").read_text())
    assert report["exit_code"] == 2 and "\n" not in report["error"]
    if needle is not None:
        assert needle in report["error"], report["error"]


def assert_one_line_message(error: BaseException, needle: str, max_length: int = 600) -> None:
    """The refusal names its cause (`needle`) in one short line: what a user reads next to a file name."""
    message = str(error)
    assert needle in message and "\n" not in message and len(message) < max_length, message


def make_fifo(path: Path) -> None:
    """A FIFO at `path`: opening it would block until a writer came, so a reader must refuse it unopened."""
    os.mkfifo(path)


def make_symlink_loop(path: Path) -> None:
    """`path` -> PATH.a -> PATH.b -> PATH.a: resolving it never ends (ELOOP)."""
    os.symlink(path.name + ".b", str(path) + ".a")
    os.symlink(path.name + ".a", str(path) + ".b")
    os.symlink(path.name + ".a", path)


class Overran(AssertionError):
    """An input that must fail fast did not."""


@contextlib.contextmanager
def fails_fast(seconds: float = 10.0, extra_memory: int = 2 * 1024**3) -> Iterator[None]:
    """Turn a hang into a test failure (SIGALRM after `seconds`) and an attempt to allocate gigabytes into a
    MemoryError/RuntimeError instead of an out-of-memory machine (address-space cap: the current size plus
    `extra_memory`), so a regression in a size guard fails this test rather than the CI machine."""
    def overran(signum: int, frame: object) -> None:
        raise Overran(f"did not fail within {seconds} s")

    previous_handler = signal.signal(signal.SIGALRM, overran)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + extra_memory
    capped = hard == resource.RLIM_INFINITY or cap < hard
    if capped:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if capped:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space() -> int:
    """This process's virtual memory size in bytes (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")
