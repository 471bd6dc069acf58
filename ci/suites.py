"""Which suite a test belongs to, from its markers, and how duplicate coverage is removed.

- `@pytest.mark.gpu(n)`: needs n CUDA GPUs -> suite `gpu-n`; unmarked tests -> suite `cpu`.
- `@pytest.mark.covers("flux", "tp2")`: the model and topology a case covers; within a suite, two items with
  the same coverage key and the same parameters are one case: only the first is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

SUITES = ("cpu", "gpu-1", "gpu-2", "gpu-4")


def suite_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("gpu")
    if marker is None:
        return "cpu"
    gpus = int(marker.args[0]) if marker.args else 1
    return f"gpu-{gpus}"


def coverage_key(item: pytest.Item) -> tuple[str, ...] | None:
    marker = item.get_closest_marker("covers")
    if marker is None:
        return None
    params = getattr(getattr(item, "callspec", None), "id", "")
    return (*map(str, marker.args), params)


def select(items: Iterable[pytest.Item], suite: str) -> tuple[list[pytest.Item], list[pytest.Item]]:
    """(kept, dropped): the suite's items with duplicated coverage removed, in collection order."""
    if suite not in SUITES:
        raise pytest.UsageError(f"unknown suite '{suite}'; suites are {', '.join(SUITES)}")
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    seen: set[tuple[str, ...]] = set()
    for item in items:
        if suite_of(item) != suite:
            dropped.append(item)
            continue
        key = coverage_key(item)
        if key is not None and key in seen:
            dropped.append(item)
            continue
        if key is not None:
            seen.add(key)
        kept.append(item)
    return kept, dropped
