"""Split a suite into N partitions of about equal measured runtime (longest processing time first)."""

from __future__ import annotations

import heapq


def partition(durations: dict[str, float], count: int) -> list[list[str]]:
    """Greedy LPT: hand each test, longest first, to the partition with the least total so far.

    Ties break on the test id so a plan is reproducible. LPT is within 4/3 of the optimum makespan.
    """
    if count < 1:
        raise ValueError(f"partition count must be >= 1, got {count}")
    heap: list[tuple[float, int]] = [(0.0, index) for index in range(count)]
    parts: list[list[str]] = [[] for _ in range(count)]
    for test_id, seconds in sorted(durations.items(), key=lambda kv: (-kv[1], kv[0])):
        total, index = heapq.heappop(heap)
        parts[index].append(test_id)
        heapq.heappush(heap, (total + seconds, index))
    return parts


def totals(parts: list[list[str]], durations: dict[str, float]) -> list[float]:
    return [sum(durations[t] for t in part) for part in parts]
