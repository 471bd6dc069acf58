"""Pieces shared by the `diffparity` subcommands: exit codes, the one-line parser, argument types."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import NoReturn

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input; reported as one line with exit code 2."""


def one_line(text: str) -> str:
    """`text` as one printable line: newlines, NUL, terminal escapes and other control characters (say, from a
    hostile file or case name) are shown escaped, never emitted."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on a single line (and still exits 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{one_line(self.prog)}: error: {one_line(message)} (see --help)\n")


def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _int(text: str) -> int:
    if len(text) > 40:  # int() of a 10**6-digit string is slow, and no count or seed is that long
        raise argparse.ArgumentTypeError(f"'{text[:20]}...' ({len(text)} characters) is not a usable integer")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None


def seed_int(text: str) -> int:
    """A random seed: 0 .. 2**64 - 1, torch.Generator.manual_seed's range."""
    value = non_negative_int(text)
    if value > 2**64 - 1:
        raise argparse.ArgumentTypeError(f"{value} is larger than the largest seed 2**64 - 1")
    return value


def bounded_int(high: int):
    """An argparse type: a positive integer up to `high` (so a typo cannot queue 10**9 runs)."""
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"{value} is more than {high}")
        return value

    return parse


def finite_float(text: str) -> float:
    """A float that is neither NaN nor infinite (a NaN guidance scale would only surface in the report)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def add_case_argument(parser: argparse.ArgumentParser) -> None:
    """The CASE positional of every subcommand that runs a parity case: one name and help text for all."""
    parser.add_argument("case", metavar="CASE", help="case name, e.g. flux-tiny (see `diffparity list`)")


def check_out_dir(path: Path, flag: str = "--out") -> None:
    """Create the output folder now and make sure it can be written, so an unusable `--out` (an existing file,
    a file among its parents, a read-only folder) fails in the first second with one line, not after the run."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{flag} {path} exists and is not a folder") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"{flag} {path}: cannot create the folder ({reason})") from None
    if not path.is_dir():
        raise UsageError(f"{flag} {path} exists and is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: the folder is not writable")
    check_path_room(path, flag)


# the longest name a run writes below its folder: a staging folder with a pid, then a temporary file of the
# longest artifact name (harness/files.py atomic_output: .NAME.xxxxxxxx.tmp)
LONGEST_ARTIFACT_SUFFIX = len("/.staging-4194304-xxxxxxxx/.native_1rank_forced.safetensors.xxxxxxxx.tmp")


def check_path_room(path: Path, flag: str = "--out") -> None:
    """Refuse a folder whose path leaves no room for the files a run writes below it (PATH_MAX, usually 4096
    bytes): a 4,000-character `--out` is accepted by mkdir and would fail only when the report is written."""
    try:
        limit = os.pathconf(path, "PC_PATH_MAX")
    except (OSError, ValueError):
        limit = 4096
    length = len(os.fsencode(os.path.abspath(path))) + LONGEST_ARTIFACT_SUFFIX
    if length >= limit:
        raise UsageError(f"{flag} {str(path)[:60]}... is {length - LONGEST_ARTIFACT_SUFFIX} bytes long: the files "
                         f"written below it would pass the system's path limit of {limit} bytes")
