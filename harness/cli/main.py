"""`diffparity`: the command line of the parity harness.

Exit codes: 0 parity holds, 1 parity fails, 2 bad input or usage (one line on stderr, no traceback; with
`--out`, only an `error.json` is written there). Set DIFFPARITY_DEBUG=1 to see tracebacks.
Each subcommand lives in `harness/cli/commands/<name>.py`; add a module there and list it in COMMANDS.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
from pathlib import Path

from harness.cli.common import EXIT_USAGE, OneLineParser, UsageError, one_line

COMMANDS = ("run", "compare", "calibrate", "faults", "noise", "list_cases", "golden", "gate", "scaffold", "bench")


def build_parser() -> argparse.ArgumentParser:
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
    from harness.golden.errors import GoldenError
    from harness.run.cases import CaseError
    from harness.trace.keys import TraceError
    from native_models.errors import NativeError

    return (UsageError, CaseError, NativeError, TraceError, ToleranceError, GoldenError)


def write_error_report(out_dir: Path | None, case: str | None, message: str) -> None:
    """The only artifact of a run that could not start: DIR/error.json with the one-line reason."""
    if out_dir is None:
        return
    from harness.files import write_json_atomic

    with contextlib.suppress(OSError, ValueError):  # an unusable folder (or a NUL in its name): stderr says it
        write_json_atomic(out_dir / "error.json", {"case": case, "error": message, "exit_code": EXIT_USAGE})


def main(argv: list[str] | None = None) -> int:
    # the libraries' own advisories (missing torchvision, accelerate...) are not the user's business here
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, not a crash
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("diffparity: interrupted", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line; DIFFPARITY_DEBUG shows it whole
        if os.environ.get("DIFFPARITY_DEBUG"):
            raise
        expected = isinstance(exc, known_errors())
        first_line = one_line((str(exc).splitlines() or [type(exc).__name__])[0])
        message = first_line if expected else f"internal error: {type(exc).__name__}: {first_line}"
        print(f"diffparity {args.command}: error: {message}", file=sys.stderr)
        out_dir = getattr(args, "out", None)
        if out_dir is None and hasattr(args, "out_default"):
            out_dir = args.out_default(args)
        write_error_report(out_dir, getattr(args, "case", None), message)
        if getattr(args, "point_latest", False):  # a default run folder (harness/run/run_folders.py): the newest run
            from harness.run.run_folders import point_latest

            point_latest(out_dir)
        return EXIT_USAGE


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
