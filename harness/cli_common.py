"""Pieces shared by the `diffparity` subcommands: exit codes, the one-line parser, argument types."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input; reported as one line with exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on a single line (and still exits 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


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
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None


def make_progress(enabled: bool):
    """A factory of per-side tqdm step bars on stderr (shown only on a terminal), or None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def factory(side: str):
        def update(done: int, total: int) -> None:
            bar = bars.get(side)
            if bar is None:
                bar = bars[side] = tqdm(total=total, desc=f"{side} denoise", unit="step", file=sys.stderr,
                                        leave=False)
            bar.n = done
            bar.refresh()
            if done >= total:
                bar.close()

        return update

    return factory
