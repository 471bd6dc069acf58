"""`diffparity`: the command line of the parity harness.

Exit codes: 0 parity holds, 1 parity fails, 2 bad input or usage (one line on stderr, no traceback; with
`--out`, only an `error.json` is written there). Set DIFFPARITY_DEBUG=1 to see tracebacks.
Each subcommand lives in `harness/cli/commands/<name>.py`; add a module there and list it in COMMANDS.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import gc
import importlib
import os
import sys
from pathlib import Path

from harness.cli.common import EXIT_USAGE, OneLineParser, UsageError, one_line
from harness.lifetime import CommandLifetime, Interrupted
from harness.outcome import mark_failed_run

# OS errors that mean the disk or the folder refused (named as such, not an internal error): errno -> reason
OS_REFUSALS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENAMETOOLONG: "file name too long",
               errno.EFBIG: "file too large"}
COMMANDS = ("run", "drill", "compare", "calibrate", "faults", "noise", "list_cases", "golden", "gate", "scaffold",
            "bench")


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """The whole command line, built once per process (~15 ms: a session calling `main()` many times, the test
    suite, builds it once). Nothing parsing does changes it: handlers and defaults are set at registration."""
    parser = OneLineParser(
        prog="diffparity",
        description="Check a native diffusion pipeline against the HuggingFace Diffusers reference, stage by stage.",
        epilog="Exit codes: 0 parity holds, 1 parity fails, 2 bad input or usage.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS:
        importlib.import_module(f"harness.cli.commands.{name}").register(sub)
    return parser


def known_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, reported as one line with exit 2."""
    from harness.compare.tolerances import ToleranceError
    from harness.drill.target import DrillError
    from harness.golden.errors import GoldenError
    from harness.run.cases import CaseError
    from harness.trace.keys import TraceError
    from native_models.errors import NativeError

    return (UsageError, CaseError, NativeError, TraceError, ToleranceError, GoldenError, DrillError)


def write_error_report(out_dir: Path | None, case: str | None, message: str, interrupted: str | None = None) -> None:
    """The only artifact of a run that failed or was stopped: DIR/error.json with the one-line reason (and the
    signal that stopped it), the earlier run's files moved to DIR/previous/ (harness/report/artifacts.py)."""
    if out_dir is None:
        return
    record = {"case": case, "error": message, "exit_code": EXIT_USAGE, "interrupted": interrupted}
    with contextlib.suppress(OSError, ValueError):  # an unusable folder (or a NUL in its name): stderr says it
        mark_failed_run(Path(out_dir), record)


def main(argv: list[str] | None = None) -> int:
    """`diffparity ARGV` -> exit code. The command's lifetime (signal handlers) starts first, so a stop signal
    at any moment, even while the parser imports its subcommands, ends in one line and exit 2."""
    with CommandLifetime() as lifetime:  # stop signals stop every child process, then unwind (harness/lifetime.py)
        return _main(argv, lifetime)


def _stopped_by(exc: KeyboardInterrupt) -> str:
    return exc.args[0] if isinstance(exc, Interrupted) and exc.args else "SIGINT"


def _main(argv: list[str] | None, lifetime: CommandLifetime) -> int:
    # the libraries' own advisories (missing torchvision, accelerate...) are not the user's business here
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, not a crash
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt as exc:
        print(f"diffparity: interrupted ({_stopped_by(exc)}) before the command started", file=sys.stderr)
        return EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE

    def on_stop(name: str) -> None:  # a stop inside an import exits at once: the same line and record
        print(f"diffparity {args.command}: interrupted ({name}); nothing of this run is left as current",
              file=sys.stderr)
        _record_failure(args, f"interrupted by {name}", interrupted=name)

    lifetime.on_stop = on_stop
    try:
        return args.handler(args)
    except KeyboardInterrupt as exc:
        name = _stopped_by(exc)
        print(f"diffparity {args.command}: interrupted ({name}); nothing of this run is left as current",
              file=sys.stderr)
        _record_failure(args, f"interrupted by {name}", interrupted=name)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line; DIFFPARITY_DEBUG shows it whole
        if os.environ.get("DIFFPARITY_DEBUG"):
            raise
        message = failure_message(exc)
        print(f"diffparity {args.command}: error: {message}", file=sys.stderr)
        _record_failure(args, message)
        return EXIT_USAGE


def failure_message(exc: Exception) -> str:
    """One line for a failure: the message of a known error or of an OS refusal (a full disk, a read-only or
    unwritable folder, a name too long: the file and the reason), else an 'internal error' with its type."""
    first_line = one_line((str(exc).splitlines() or [type(exc).__name__])[0])
    if isinstance(exc, known_errors()):
        return first_line
    if isinstance(exc, OSError) and exc.errno in OS_REFUSALS:
        where = f" {one_line(str(exc.filename))}" if exc.filename is not None else ""
        return f"cannot write or read{where}: {exc.strerror or OS_REFUSALS[exc.errno]}"
    return f"internal error: {type(exc).__name__}: {first_line}"


def _record_failure(args: argparse.Namespace, message: str, interrupted: str | None = None) -> None:
    out_dir = getattr(args, "out", None)
    if out_dir is None and hasattr(args, "out_default"):
        out_dir = args.out_default(args)
    write_error_report(out_dir, getattr(args, "case", None), message, interrupted)
    if getattr(args, "point_latest", False):  # a default run folder (harness/run/run_folders.py): the newest run
        from harness.run.run_folders import point_latest

        point_latest(out_dir)


def entry() -> None:
    """The `diffparity` console script: main(), then exit without the interpreter's last garbage collection.

    Python's shutdown walks every object torch created at import (about 0.4 s on a 2-core machine); freezing
    them first skips that walk; streams are still flushed and atexit handlers still run. Only the process
    entry point does this: `main()` called in-process (tests) leaves the collector alone.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
