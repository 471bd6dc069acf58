"""A log-scale line plot as inline SVG, drawn here so the HTML report needs no plotting library and no script.

Why not matplotlib's SVG backend (measured on this 2-core machine, load average 5-6): importing matplotlib takes
0.7-1.1 s and drawing this plot 0.4-0.55 s, against 0.5 ms here, on a flux-tiny run of about 4 s; its SVG is
42 KB for four series of 20 steps against 12 KB here for six; and it would add seven packages to requirements.lock.

Values that a log axis cannot show (0, negative) are drawn as hollow markers on the bottom edge and said so in
the caption; NaN or missing values break the line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

THRESHOLD_COLOUR = "#d9480f"  # the threshold line and its label; no series or heat-ramp colour comes near it


@dataclass
class PlotSeries:
    label: str
    colour: str  # "#rrggbb"
    values: list[float | None]
    dashed: bool = False


@dataclass
class PlotBox:
    width: int = 640
    height: int = 330
    left: int = 64
    right: int = 16
    top: int = 16
    bottom: int = 90  # room for the x label and two rows of legend

    @property
    def inner_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def inner_height(self) -> int:
        return self.height - self.top - self.bottom


def _decades(values: list[float]) -> tuple[int, int]:
    """The decade range [lo, hi] (powers of ten) that holds every positive value, at least one decade wide."""
    lo = math.floor(math.log10(min(values)))
    hi = math.ceil(math.log10(max(values)))
    return (lo, hi) if hi > lo else (lo, lo + 1)


def log_line_plot(
    x: list[int],
    series: list[PlotSeries],
    y_label: str,
    x_label: str = "denoising step",
    threshold: float | None = None,
    box: PlotBox | None = None,
    threshold_label: str | None = None,
) -> str:
    """An <svg> element: one polyline per series over x, y on a log10 axis, optional dashed threshold line
    (labelled `threshold_label`, default 'tolerance <value>')."""
    box = box or PlotBox()
    for s in series:
        if len(s.values) != len(x):
            raise ValueError(f"series '{s.label}' has {len(s.values)} values for {len(x)} x positions")
    positive = [v for s in series for v in s.values if v is not None and math.isfinite(v) and v > 0]
    if threshold is not None and threshold > 0:
        positive.append(threshold)
    lo, hi = _decades(positive) if positive else (-8, 0)
    if threshold is not None and threshold > 0:  # room on both sides of the threshold line
        hi = max(hi, math.ceil(math.log10(threshold) + 0.5))
        lo = min(lo, math.floor(math.log10(threshold) - 0.5))
    x_lo, x_hi = (min(x), max(x)) if x else (0, 1)
    x_span = (x_hi - x_lo) or 1

    def px(value: float) -> float:
        return box.left + (value - x_lo) / x_span * box.inner_width if x_hi > x_lo else box.left + box.inner_width / 2

    def py(value: float) -> float:
        return box.top + (hi - math.log10(value)) / (hi - lo) * box.inner_height

    bottom = box.top + box.inner_height
    out = [
        f'<svg class="plot" width="{box.width}" height="{box.height}" '
        f'viewBox="0 0 {box.width} {box.height}" role="img" aria-label="{escape(y_label)} per {escape(x_label)}">',
        f'<rect x="{box.left}" y="{box.top}" width="{box.inner_width}" height="{box.inner_height}" '
        'fill="#ffffff" stroke="#999999"/>',
    ]
    for decade in range(lo, hi + 1):
        y = py(10.0**decade)
        out.append(f'<line x1="{box.left}" y1="{y:.1f}" x2="{box.left + box.inner_width}" y2="{y:.1f}" '
                   'stroke="#e3e3e3"/>')
        out.append(f'<text x="{box.left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">1e{decade}</text>')
    for step in _x_ticks(x):
        xp = px(step)
        out.append(f'<line x1="{xp:.1f}" y1="{bottom}" x2="{xp:.1f}" y2="{bottom + 4}" stroke="#666666"/>')
        out.append(f'<text x="{xp:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11">{step}</text>')
    out.append(f'<text x="{box.left + box.inner_width / 2:.1f}" y="{bottom + 30}" text-anchor="middle" '
               f'font-size="12">{escape(x_label)}</text>')
    out.append(f'<text transform="translate(14 {box.top + box.inner_height / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle" font-size="12">{escape(y_label)}</text>')
    if threshold is not None and threshold > 0:
        yt = py(threshold)
        out.append(f'<line x1="{box.left}" y1="{yt:.1f}" x2="{box.left + box.inner_width}" y2="{yt:.1f}" '
                   f'stroke="{THRESHOLD_COLOUR}" stroke-width="2" stroke-dasharray="5 3" '
                   'shape-rendering="crispEdges"/>')
        label = threshold_label or f"tolerance {threshold:.3g}"
        out.append(f'<text x="{box.left + box.inner_width - 4}" y="{yt - 4:.1f}" text-anchor="end" '
                   f'font-size="11" fill="{THRESHOLD_COLOUR}">{escape(label)}</text>')
    for s in series:
        out.extend(_series_marks(s, x, px, py, top=box.top, bottom=bottom))
    out.extend(_legend(series, box))
    out.append("</svg>")
    return "\n".join(out)


def _x_ticks(x: list[int]) -> list[int]:
    if len(x) <= 12:
        return list(x)
    stride = math.ceil(len(x) / 10)
    return list(x[::stride]) + ([x[-1]] if (len(x) - 1) % stride else [])


def _series_marks(
    s: PlotSeries, x: list[int], px: Callable[[float], float], py: Callable[[float], float], top: float, bottom: float
) -> list[str]:
    """Polylines over runs of plottable points, a marker per point; 0 (inf) as a hollow marker at the bottom (top)."""
    dash = ' stroke-dasharray="7 4"' if s.dashed else ""
    marks: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if len(run) > 1:
            marks.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{s.colour}" '
                         f'stroke-width="2.5"{dash}/>')
        run.clear()

    for step, value in zip(x, s.values, strict=True):
        if value is None or math.isnan(value):
            flush()
            continue
        if value <= 0 or math.isinf(value):
            flush()
            y = bottom if value <= 0 else top
            marks.append(f'<circle cx="{px(step):.1f}" cy="{y:.1f}" r="3.5" fill="#ffffff" stroke="{s.colour}"/>')
            continue
        point = f"{px(step):.1f},{py(value):.1f}"
        run.append(point)
        marks.append(f'<circle cx="{px(step):.1f}" cy="{py(value):.1f}" r="3" fill="{s.colour}"/>')
    flush()
    return marks


def _legend(series: list[PlotSeries], box: PlotBox) -> list[str]:
    """One entry per series under the x label, wrapping onto a second row (the box leaves room for two)."""
    marks = []
    row_y = box.height - box.bottom + 52
    xpos = box.left
    for s in series:
        entry_width = 44 + 7 * len(s.label)
        if xpos > box.left and xpos + entry_width > box.width:
            xpos, row_y = box.left, row_y + 18
        dash = ' stroke-dasharray="7 4"' if s.dashed else ""
        marks.append(f'<line x1="{xpos}" y1="{row_y - 4}" x2="{xpos + 28}" y2="{row_y - 4}" stroke="{s.colour}" '
                     f'stroke-width="2.5"{dash}/>')
        marks.append(f'<text x="{xpos + 34}" y="{row_y}" font-size="12">{escape(s.label)}</text>')
        xpos += entry_width
    return marks
