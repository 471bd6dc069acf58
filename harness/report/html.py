"""`report.html`: one self-contained page that opens offline in any browser.

No external resource of any kind: images are embedded as base64 PNG, the drift plot is inline SVG drawn by
`harness.svg_plot`, styles are inline, and there is no script. Sections, top to bottom: request and first
divergence, per-stage table coloured by verdict, the drill-down to a module (harness/report/drill_view.py),
native / reference / |difference| heat-map per frame, the drift plot, image metrics, environment, and every
record (collapsed).
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import torch

from harness.report import view
from harness.report.drill_view import drill_html
from harness.report.images import frame_images, heat_gradient_css
from harness.report.plots import PlotSeries, log_line_plot

# One colour per drift field (solid: free run, dashed: teacher-forced); none of them occurs in the heat ramp.
FIELD_COLOURS = {"latents": "#1f77b4", "transformer_output": "#2ca02c"}
OTHER_COLOURS = ("#9467bd", "#8c564b", "#17becf")
MIN_DISPLAY_SIDE = 192  # small frames are scaled up by a whole factor (pixelated) to at least this many pixels
MAX_DISPLAY_SCALE = 8

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d1d1f;
       background: #ffffff; max-width: 1200px; }
h1 { font-size: 20px; margin: 0 0 6px; } h2 { font-size: 16px; margin: 22px 0 8px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; font-weight: 600; color: #ffffff; }
.badge.pass { background: #1e7b34; } .badge.fail { background: #b3261e; }
.lead { margin: 4px 0; } .muted { color: #666666; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
tr.pass td { background: #e6f4ea; } tr.fail td { background: #fde7e9; }
tr.first td { outline: 2px solid #b3261e; }
.frames { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; margin-bottom: 10px; }
figure { margin: 0; } figcaption { font-size: 12px; color: #444444; margin-top: 2px; }
img.frame { image-rendering: pixelated; display: block; border: 1px solid #cccccc; }
.scale { display: flex; align-items: center; gap: 8px; font-size: 12px; }
.scale .bar { width: 192px; height: 12px; border: 1px solid #cccccc; }
details summary { cursor: pointer; margin: 8px 0; }
"""


def _table(headers: list[str], rows: list[tuple[str, list[str]]], left: int = 1) -> str:
    """A table; each row is (css class, cells); the first `left` columns are left-aligned."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{escape(h)}</th>' for i, h in enumerate(headers))
    body = []
    for css, cells in rows:
        tds = "".join(f'<td class="{"l" if i < left else ""}">{escape(c)}</td>' for i, c in enumerate(cells))
        body.append(f'<tr class="{css}">{tds}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _header(report: dict[str, Any]) -> str:
    verdict = str(report.get("verdict", "unknown"))
    req = report.get("request") or {}
    prompt = req.get("prompt")
    lines = [
        f'<h1>diffparity: {escape(str(report.get("case", "?")))} '
        f'<span class="badge {escape(verdict)}">{escape(verdict.upper())}</span></h1>',
        f'<p class="lead">{escape(view.request_line(report))}'
        + (f' · prompt “{escape(str(prompt))}”' if prompt else "") + "</p>",
        f'<p class="lead"><b>First divergence:</b> {escape(view.first_divergence_text(report))}</p>',
    ]
    source = view.tolerance_source(report)
    muted = [f"checkpoint {report['checkpoint']}" if report.get("checkpoint") else "",
             f"tolerances: {source}" if source else ""]
    if any(muted):
        lines.append(f'<p class="lead muted">{escape(" · ".join(m for m in muted if m))}</p>')
    return "\n".join(lines)


def _stage_section(report: dict[str, Any]) -> str:
    rows = view.stage_rows(report)
    if not rows:
        return ""
    has_mode = any(r.mode for r in rows)
    has_floor = any(r.worst_floor_multiple is not None for r in rows)
    headers = ["stage", *(["mode"] if has_mode else []), "records", "failed", "worst rel_l2", "min cos",
               *(["worst x floor"] if has_floor else []), "verdict"]
    body = []
    for r in rows:
        cells = [r.stage, *([r.mode or "—"] if has_mode else []), str(r.records), str(r.failed),
                 view.fmt(r.worst_rel_l2, "e"), view.fmt(r.min_cos, "cos"),
                 *([view.fmt(r.worst_floor_multiple, "x")] if has_floor else []), r.verdict]
        body.append((r.verdict, cells))
    return "<h2>Stages</h2>\n" + _table(headers, body, left=2 if has_mode else 1)


def _display_scale(height: int, width: int) -> int:
    return max(1, min(MAX_DISPLAY_SCALE, math.ceil(MIN_DISPLAY_SIDE / max(height, width, 1))))


def _images_section(native: torch.Tensor | None, reference: torch.Tensor | None) -> str:
    if native is None or reference is None:
        return ""
    try:
        frames, vmax = frame_images(native, reference)
    except ValueError as exc:  # other shapes: the records table already says so; show why there are no images
        return f'<h2>Images</h2>\n<p class="muted">no images: {escape(str(exc))}</p>'
    parts = ["<h2>Images</h2>"]
    for index, frame in enumerate(frames):
        scale = _display_scale(frame.height, frame.width)
        size = f'width="{frame.width * scale}" height="{frame.height * scale}"'
        note = f", reduced {frame.reduced_by}x" if frame.reduced_by > 1 else ""
        label = f"frame {index}: " if len(frames) > 1 else ""
        figures = [
            (frame.native, f"{label}native", "native"),
            (frame.reference, f"{label}reference", "reference"),
            (frame.difference, f"{label}|native − reference|{note}", "difference"),
        ]
        parts.append('<div class="frames">' + "".join(
            f'<figure><img class="frame {css}" {size} alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
            for data, caption, css in figures
        ) + "</div>")
    top = "identical frames" if vmax == 0.0 else f"{vmax:.3g} / 255"
    parts.append(f'<div class="scale"><span>|difference| 0</span><span class="bar" '
                 f'style="background: {heat_gradient_css()}"></span><span>{escape(top)} '
                 "(largest channel difference of the run)</span></div>")
    return "\n".join(parts)


def _drift_section(report: dict[str, Any]) -> str:
    drift = view.drift(report)
    if drift is None or not drift.series:
        return ""
    others = iter(OTHER_COLOURS * 4)
    colours = {}
    series = []
    for s in drift.series:
        colour = FIELD_COLOURS.get(s.field) or colours.setdefault(s.field, next(others))
        series.append(PlotSeries(s.label, colour, s.rel_l2, dashed=s.mode == "forced"))
    svg = log_line_plot(drift.steps, series, y_label="rel_l2 vs reference", threshold=drift.threshold)
    source = ("free run (solid) and teacher-forced local step error (dashed)" if drift.source == "drift"
              and any(s.mode == "forced" for s in drift.series) else "free run, from the per-step records")
    zero_note = ""
    if any(v is not None and v <= 0 for s in drift.series for v in s.rel_l2):
        zero_note = " Hollow markers on the bottom edge are exact zeros (bitwise-equal steps)."
    headers = ["series", *[str(step) for step in drift.steps]]
    rows = [("", [f"{s.label} rel_l2", *[view.fmt(v, "e") for v in s.rel_l2]]) for s in drift.series]
    rows += [("", [f"{s.label} cos", *[view.fmt(v, "cos") for v in s.cos]]) for s in drift.series if s.cos]
    rows += [("", [f"growth {name}", *[view.fmt(v) for v in values]]) for name, values in drift.growth.items()]
    return (
        "<h2>Drift per step</h2>\n"
        f'<p class="muted">rel_l2 of native against reference per denoising step, log scale: {source}.{zero_note}</p>\n'
        f'<div class="drift">{svg}</div>\n'
        f"<details><summary>drift values</summary>{_table(headers, rows)}</details>"
    )


def _image_metrics_section(report: dict[str, Any]) -> str:
    rows = view.image_metric_rows(report)
    problem = view.image_metrics_problem(report)
    if not rows:
        return f'<h2>Image metrics</h2>\n<p class="muted">{escape(problem)}</p>' if problem else ""
    body = [("", [str(r.get("frame", i)), view.fmt(r.get("psnr"), "db"), view.fmt(r.get("ssim"), "f6"),
                  view.fmt(r.get("mad_255"))]) for i, r in enumerate(rows)]
    return ("<h2>Image metrics</h2>\n"
            + _table(["frame", "PSNR (dB)", "SSIM", "mean |diff| (0-255)"], body)
            + '<p class="muted">decoded frames in [0, 1], native against reference; PSNR inf: identical.</p>')


def _environment_section(report: dict[str, Any]) -> str:
    rows = view.environment_rows(report)
    return "<h2>Environment</h2>\n" + _table(["", "value"], [("", [k, v]) for k, v in rows], left=2)


def _records_section(report: dict[str, Any]) -> str:
    records = report.get("records") or []
    if not records:
        return ""
    first = dict(report.get("first_divergence") or {})
    if report.get("first_divergence_mode"):  # schema 2 names the run (free / forced) beside the record
        first.setdefault("mode", report["first_divergence_mode"])
    has_mode = any("mode" in r for r in records)
    has_floor = any(r.get("floor_multiple") is not None for r in records)
    headers = ["record", *(["mode"] if has_mode else []), "shape", "rel_l2", "cos", "max_abs", "tolerance",
               *(["x floor"] if has_floor else []), "verdict"]
    body = []
    for r in records:
        metrics = r.get("metrics") or {}
        tol = r.get("tolerance") or {}
        keys = ("stage", "field", "step", *(("mode",) if "mode" in first else ()))
        is_first = bool(first) and not r.get("passed") and all(r.get(k) == first.get(k) for k in keys)
        verdict = "pass" if r.get("passed") else "fail"
        cells = [view.record_name(r), *([str(r.get("mode", "—"))] if has_mode else []),
                 "x".join(map(str, r.get("shape") or [])), view.fmt(metrics.get("rel_l2"), "e"),
                 view.fmt(metrics.get("cos"), "cos"), view.fmt(metrics.get("max_abs"), "e"),
                 f"{tol.get('metric', '?')} {view.fmt(tol.get('threshold'))}",
                 *([view.fmt(r.get("floor_multiple"), "x")] if has_floor else []),
                 verdict + (f": {r['problem']}" if r.get("problem") else "")]
        body.append((verdict + (" first" if is_first else ""), cells))
    return (f"<details><summary><b>All records</b> ({len(records)})</summary>"
            + _table(headers, body, left=2 if has_mode else 1) + "</details>")


def render_html(
    report: dict[str, Any], native: torch.Tensor | None = None, reference: torch.Tensor | None = None
) -> str:
    """The page for `report` (a report.json document); frames (B, C, H, W) in [0, 1] add the image section."""
    title = f"diffparity {report.get('case', '')}: {report.get('verdict', '')}"
    sections = [
        _header(report), _stage_section(report), drill_html(report), _images_section(native, reference),
        _drift_section(report),
        _image_metrics_section(report), _environment_section(report), _records_section(report),
    ]
    body = "\n".join(s for s in sections if s)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{STYLE}</style>'
            f"</head>\n<body>\n{body}\n</body></html>\n")

