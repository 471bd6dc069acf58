"""What `diffparity bench` measured, as data (JSON) and as a terminal table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from harness.bench.timing import Samples


@dataclass
class StageTiming:
    """One stage (a component's call, or the whole pipeline) timed on both sides."""

    name: str
    native: Samples
    reference: Samples
    native_calls: int = 1  # how often the stage ran in one pipeline run, per side
    reference_calls: int = 1
    native_class: str = ""
    reference_class: str = ""

    @property
    def ratio(self) -> float:
        """native / Diffusers median time: below 1 the native side is faster."""
        return self.native.median / self.reference.median if self.reference.median > 0 else math.inf

    @property
    def verdict(self) -> str:
        """Which side is slower, or 'tied' when each median lies inside the other side's spread."""
        n_low, n_high = self.native.quartiles()
        r_low, r_high = self.reference.quartiles()
        if r_low <= self.native.median <= r_high and n_low <= self.reference.median <= n_high:
            return "tied"
        return "native slower" if self.ratio > 1 else "native faster"

    def to_dict(self) -> dict[str, Any]:
        ratio = self.ratio
        return {"stage": self.name, "native": self.native.to_dict(), "reference": self.reference.to_dict(),
                "ratio": ratio if math.isfinite(ratio) else str(ratio), "verdict": self.verdict,
                "calls_per_run": {"native": self.native_calls, "reference": self.reference_calls},
                "classes": {"native": self.native_class, "reference": self.reference_class}}


@dataclass
class BenchResult:
    """A benchmark of one case and request: per stage and end to end, native against Diffusers."""

    case: str
    request: dict[str, Any]
    environment: dict[str, Any]  # device, threads, torch / diffusers versions, attention backend
    compile: dict[str, Any]  # side -> CompileSettings.to_dict() or None (eager)
    repeats: int
    warmup: int
    stages: list[StageTiming] = field(default_factory=list)
    end_to_end: StageTiming | None = None
    # stages that could not be timed, with why (e.g. one side encodes text through another method than forward)
    untimed: dict[str, str] = field(default_factory=dict)

    def all_stages(self) -> list[StageTiming]:
        return self.stages + ([self.end_to_end] if self.end_to_end is not None else [])

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "request": self.request, "environment": self.environment,
                "compile": self.compile, "repeats": self.repeats, "warmup": self.warmup,
                "stages": [s.to_dict() for s in self.stages],
                "end_to_end": self.end_to_end.to_dict() if self.end_to_end is not None else None,
                "untimed": dict(self.untimed)}

    def format(self) -> str:
        """The terminal table: per stage the median (25th-75th percentile) of each side, the ratio and verdict."""
        def side(samples: Samples) -> str:
            low, high = samples.quartiles()
            return f"{_ms(samples.median)} ({_ms(low)}-{_ms(high)})"

        modes = ", ".join(f"{s}: {'eager' if c is None else c['backend'] + '/' + c['mode'] + ' regional'}"
                          for s, c in self.compile.items())
        req = self.request
        frames = f"x{req['frames']} frames " if req.get("frames", 1) > 1 else ""
        head = (f"{self.case}: {req['height']}x{req['width']} {frames}{req['steps']} steps, {req['dtype']} on "
                f"{self.environment['device']}, {self.environment['threads']} thread(s), {modes}; median of "
                f"{self.repeats} (25th-75th pct), {self.warmup} warm-up")
        rows = [("stage", "calls", "native ms", "Diffusers ms", "native/Diffusers", "")]
        for stage in self.all_stages():
            calls = str(stage.native_calls) if stage.native_calls == stage.reference_calls else \
                f"{stage.native_calls}/{stage.reference_calls}"
            rows.append((stage.name, calls, side(stage.native), side(stage.reference), f"{stage.ratio:.2f}x",
                         stage.verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                          for row in rows]
        peaks = [f"{s.name} {s.native.peak_mib:.0f}/{s.reference.peak_mib:.0f}" for s in self.all_stages()
                 if s.native.peak_mib is not None and s.reference.peak_mib is not None]
        if peaks:
            lines.append("peak MiB above the weights, native/Diffusers: " + ", ".join(peaks))
        weights = [f"{s.name} {s.native.weights_mib:.1f}/{s.reference.weights_mib:.1f}" for s in self.stages
                   if s.native.weights_mib is not None and s.reference.weights_mib is not None]
        if weights:
            lines.append("weights MiB, native/Diffusers: " + ", ".join(weights))
        lines += [f"not timed: {name} ({why})" for name, why in self.untimed.items()]
        busy = busy_machine(self.environment.get("load_average"))
        if busy:
            lines.append(busy)
        return "\n".join(lines)


def busy_machine(load: dict[str, Any] | None) -> str | None:
    """A warning line when other work already kept every core busy as the bench started: both sides are then
    timed on a starved CPU, and a ratio can move by 2x from one run to the next (docs/speed.md, section 6)."""
    if not load or not load.get("cores") or load.get("start") is None or load["start"] < load["cores"]:
        return None
    return (f"busy machine: load average {load['start']:.1f} on {load['cores']} cores when the bench started "
            f"({load['end']:.1f} at the end): these ratios are not to be quoted; re-run on a quiet machine")


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"
