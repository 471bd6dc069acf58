"""What can make a golden unusable: the exceptions every golden module raises (exit 2 in the CLI)."""

from __future__ import annotations


class GoldenError(Exception):
    """A golden cannot be used: for another case/dtype/device/checkpoint, of another schema, or a bad name."""


class GoldenMissing(GoldenError):
    """No golden (or draft) where one is needed."""


class GoldenCorrupt(GoldenError):
    """A golden file whose bytes do not match its hash, or that is not a well-formed golden at all."""
