"""Timing one call the same way on both sides: a wall clock on the CPU, CUDA events around synchronisation on a
GPU, and the summary statistics a comparison of two sides needs (median and spread of the repeats)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, float | None]:
    """(milliseconds, peak MiB allocated above the start or None) of one `fn()` call under no_grad.

    On CUDA the work is bracketed by synchronisation and timed by events (kernel launches are asynchronous, so a
    host clock would time the launches); the peak is torch's allocator peak during the call. On the CPU torch
    keeps no allocator statistics, so no peak is reported."""
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            return float(start.elapsed_time(end)), peak
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3, None


@dataclass
class Samples:
    """The repeats of one side of one stage, in milliseconds."""

    ms: list[float] = field(default_factory=list)
    peak_mib: float | None = None  # the largest allocator peak seen (CUDA only)
    weights_mib: float | None = None  # parameters and buffers of the module(s) timed

    def add(self, ms: float, peak_mib: float | None) -> None:
        self.ms.append(ms)
        if peak_mib is not None:
            self.peak_mib = max(self.peak_mib or 0.0, peak_mib)

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    def quartiles(self) -> tuple[float, float]:
        """(25th, 75th) percentiles: the spread shown beside the median (min/max with fewer than 4 repeats)."""
        if len(self.ms) < 4:
            return min(self.ms), max(self.ms)
        q = statistics.quantiles(self.ms, n=4, method="inclusive")
        return q[0], q[2]

    def to_dict(self) -> dict[str, Any]:
        low, high = self.quartiles()
        return {"median_ms": self.median, "p25_ms": low, "p75_ms": high, "min_ms": min(self.ms),
                "max_ms": max(self.ms), "samples_ms": list(self.ms), "peak_mib": self.peak_mib,
                "weights_mib": self.weights_mib}


Prepare = Callable[[], Callable[[], Any]]  # makes the call to time (a fresh scheduler state...), untimed


def alternate(native: Prepare, reference: Prepare, repeats: int, device: torch.device,
              native_samples: Samples, reference_samples: Samples) -> None:
    """`repeats` timed calls of each side, alternating which goes first, so a slow drift of the machine (other
    processes, frequency, caches) lands on both sides alike. Each call is prepared (untimed) just before it."""
    for index in range(repeats):
        order = ((native, native_samples), (reference, reference_samples))
        for prepare, samples in order if index % 2 == 0 else order[::-1]:
            samples.add(*time_call(prepare(), device))


def module_mib(*modules: Any) -> float | None:
    """MiB of the parameters and buffers of the torch modules among `modules` (None when there is none)."""
    found = [m for m in modules if isinstance(m, torch.nn.Module)]
    if not found:
        return None
    total = sum(t.numel() * t.element_size() for m in found for t in (*m.parameters(), *m.buffers()))
    return total / 2**20
