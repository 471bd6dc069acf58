"""`report.html`: one self-contained page that opens offline in any browser.

No external resource of any kind: images are embedded as base64 PNG, the drift plot is inline SVG drawn by
harness/report/plots.py, styles are inline, and there is no script. Sections, top to bottom (`SECTIONS`: a new
section is one function of the `Page` and one entry there): request and first divergence, per-stage table
coloured by verdict with each stage's worst multiple of its threshold and of its floor (the rule stated under
it), the noise detector's verdicts and reasons, the drill-down to a module (harness/report/drill_view.py),
native / reference / |difference| heat-map per frame on the run's scale, the drift plot (error / threshold per
record and step: 1.0 is the gate), image metrics, environment, and every record (collapsed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Any

import torch

from harness.report import view
from harness.report.drill_view import drill_html
from harness.report.images import display_scale, frame_images, heat_gradient_css, scale_text
from harness.report.plots import PlotSeries, log_line_plot

# One colour per drift field (solid: free run, dashed: teacher-forced); none of them occurs in the heat ramp.
FIELD_COLOURS = {"latents": "#1f77b4", "transformer_output": "#2ca02c", "noise_pred": "#9467bd"}
OTHER_COLOURS = ("#8c564b", "#17becf", "#7f7f7f")

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d1d1f;
       background: #ffffff; max-width: 1200px; }
h1 { font-size: 20px; margin: 0 0 6px; } h2 { font-size: 16px; margin: 22px 0 8px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; font-weight: 600; color: #ffffff; }
.badge.pass { background: #1e7b34; } .badge.fail { background: #b3261e; }
.lead { margin: 4px 0; } .muted { color: #666666; }
h1, p, .lead, figcaption, summary { overflow-wrap: break-word; }
p.rule { font-size: 12px; max-width: 900px; }
td.wrap { white-space: normal; text-align: left; max-width: 520px; overflow-wrap: anywhere; }
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


@dataclass
class Page:
    """What the sections render: the report.json document and, when the run has them, its decoded frames."""

    report: dict[str, Any]
    native: torch.Tensor | None = None
    reference: torch.Tensor | None = None


def _table(headers: list[str], rows: list[tuple[str, list[str]]], left: int = 1, wrap: tuple[int, ...] = ()) -> str:
    """A table; each row is (css class, cells); the first `left` columns are left-aligned, `wrap` columns wrap."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{escape(h)}</th>' for i, h in enumerate(headers))
    body = []
    for css, cells in rows:
        tds = "".join(f'<td class="{"wrap" if i in wrap else "l" if i < left else ""}">{escape(c)}</td>'
                      for i, c in enumerate(cells))
        body.append(f'<tr class="{css}">{tds}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _header(page: Page) -> str:
    report = page.report
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


def _stage_section(page: Page) -> str:
    rows = view.stage_rows(page.report)
    if not rows:
        return ""
    has_mode = any(r.mode for r in rows)
    has_floor = any(r.worst_floor_multiple is not None for r in rows)
    headers = ["stage", *(["mode"] if has_mode else []), "records", "failed", "worst rel_l2", "min cos",
               "worst x threshold", *(["worst x floor"] if has_floor else []), "verdict"]
    body = []
    for r in rows:
        cells = [r.stage, *([r.mode or "—"] if has_mode else []), str(r.records), str(r.failed),
                 view.fmt(r.worst_rel_l2, "e"), view.fmt(r.min_cos, "cos"), view.fmt(r.worst_threshold_multiple, "x"),
                 *([view.fmt(r.worst_floor_multiple, "x")] if has_floor else []), r.verdict]
        body.append((r.verdict, cells))
    return ("<h2>Stages</h2>\n" + _table(headers, body, left=2 if has_mode else 1)
            + f'\n<p class="muted rule">{_no_break_in_numbers(escape(view.threshold_rule(page.report)))}</p>')


def _no_break_in_numbers(text: str) -> str:
    """'1e-05' kept on one line: the exponent's hyphen becomes a non-breaking one."""
    return re.sub(r"(\d)e-(\d)", "\\1e\u2011\\2", text)


def _noise_section(page: Page) -> str:
    noise = view.noise(page.report)
    if noise is None:
        return ""
    effect = ("fails the run" if noise.fails_run else "does not fail the run")
    lines = [
        "<h2>Noise detector</h2>",
        f'<p class="lead"><span class="badge {noise.verdict}">{escape(noise.verdict.upper())}</span> '
        f"{escape(noise.note)} ({escape(effect)})</p>",
        f'<p class="lead"><b>native:</b> {escape(noise.native)}</p>',
        f'<p class="lead"><b>reference:</b> {escape(noise.reference)}</p>',
    ]
    if noise.checks:
        rows = [("fail" if check.fired else "", [check.name, check.native, check.reference, check.threshold,
                                                 check.fired or "—"]) for check in noise.checks]
        lines.append("<details><summary>noise checks</summary>"
                     + _table(["check", "native", "reference", "fires at", "fired on"], rows) + "</details>")
    return "\n".join(lines)


def _images_section(page: Page) -> str:
    native, reference = page.native, page.reference
    if native is None or reference is None:
        return ""
    try:
        frames, vmax = frame_images(native, reference)
    except ValueError as exc:  # other shapes: the records table already says so; show why there are no images
        return f'<h2>Images</h2>\n<p class="muted">no images: {escape(str(exc))}</p>'
    parts = ["<h2>Images</h2>"]
    for index, frame in enumerate(frames):
        scale = display_scale(frame.height, frame.width)
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
    parts.append(f'<div class="scale"><span>|difference| 0</span><span class="bar" '
                 f'style="background: {heat_gradient_css()}"></span><span>{escape(scale_text(vmax))} '
                 "(largest channel difference of the run)</span></div>")
    return "\n".join(parts)


def _drift_section(page: Page) -> str:
    drift = view.drift(page.report)
    if drift is None or not (drift.normalised or drift.rel_l2):
        return ""
    others = iter(OTHER_COLOURS * 4)
    colours: dict[str, str] = {}

    def colour(field_name: str) -> str:
        return FIELD_COLOURS.get(field_name) or colours.setdefault(field_name, next(others))

    forced = any(s.mode == "forced" for s in drift.normalised)
    parts = ["<h2>Drift per step</h2>"]
    if drift.normalised:
        series = [PlotSeries(s.label, colour(s.field), s.values, dashed=s.mode == "forced") for s in drift.normalised]
        svg = log_line_plot(drift.steps, series, y_label="error / threshold", threshold=1.0,
                            threshold_label="1.0: the gate")
        runs = "free run (solid) and teacher-forced local step error (dashed)" if forced else "free run"
        zero = any(v is not None and v <= 0 for s in drift.normalised for v in s.values)
        zero_note = " Hollow markers on the bottom edge are exact zeros (bitwise-equal steps)." if zero else ""
        parts.append(f'<p class="muted">Each record\'s error as a multiple of its own threshold, per denoising step, '
                     f"log scale: {runs}. A point above the line at 1.0 fails.{zero_note}</p>")
        parts.append(f'<div class="drift">{svg}</div>')
    headers = ["series", *[str(step) for step in drift.steps]]
    rows = [("", [f"{s.label} x threshold", *[view.fmt(v, "x") for v in s.values]]) for s in drift.normalised]
    rows += [("", [f"{s.label} rel_l2", *[view.fmt(v, "e") for v in s.values]]) for s in drift.rel_l2]
    rows += [("", [f"{s.label} cos", *[view.fmt(v, "cos") for v in s.values]]) for s in drift.cos]
    rows += [("", [f"growth {name}", *[view.fmt(v) for v in values]]) for name, values in drift.growth.items()]
    source = "" if drift.source == "drift" else " (from the per-step records)"
    parts.append(f"<details><summary>drift values{source}</summary>{_table(headers, rows)}</details>")
    return "\n".join(parts)


def _image_metrics_section(page: Page) -> str:
    rows = view.image_metric_rows(page.report)
    problem = view.image_metrics_problem(page.report)
    if not rows:
        return f'<h2>Image metrics</h2>\n<p class="muted">{escape(problem)}</p>' if problem else ""
    body = [("", [str(r.get("frame", i)), view.fmt(r.get("psnr"), "db"), view.fmt(r.get("ssim"), "f6"),
                  view.fmt(r.get("mad_255"))]) for i, r in enumerate(rows)]
    return ("<h2>Image metrics</h2>\n"
            + _table(["frame", "PSNR (dB)", "SSIM", "mean |diff| (0-255)"], body)
            + '<p class="muted">decoded frames in [0, 1], native against reference; PSNR inf: identical.</p>')


def _environment_section(page: Page) -> str:
    rows = view.environment_rows(page.report)
    return "<h2>Environment</h2>\n" + _table(["", "value"], [("", [k, v]) for k, v in rows], left=2)


def _records_section(page: Page) -> str:
    report = page.report
    records = report.get("records") or []
    if not records:
        return ""
    first = dict(report.get("first_divergence") or {})
    if report.get("first_divergence_mode"):  # schema 2 names the run (free / forced) beside the record
        first.setdefault("mode", report["first_divergence_mode"])
    has_mode = any("mode" in r for r in records)
    has_floor = any(r.get("floor_multiple") is not None for r in records)
    headers = ["record", *(["mode"] if has_mode else []), "shape", "rel_l2", "cos", "max_abs", "tolerance",
               "x threshold", *(["x floor"] if has_floor else []), "verdict"]
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
                 view.fmt(view.threshold_multiple(r), "x"),
                 *([view.fmt(r.get("floor_multiple"), "x")] if has_floor else []),
                 verdict + (f": {r['problem']}" if r.get("problem") else "")]
        body.append((verdict + (" first" if is_first else ""), cells))
    return (f"<details><summary><b>All records</b> ({len(records)})</summary>"
            + _table(headers, body, left=2 if has_mode else 1) + "</details>")


# Top to bottom. A new section (say, per-module rows of a drill-down) is a function of the Page and a line here.
def _drill_section(page: Page) -> str:
    return drill_html(page.report)


SECTIONS: list[Callable[[Page], str]] = [
    _header, _stage_section, _noise_section, _drill_section, _images_section, _drift_section, _image_metrics_section,
    _environment_section, _records_section,
]


def render_html(
    report: dict[str, Any], native: torch.Tensor | None = None, reference: torch.Tensor | None = None
) -> str:
    """The page for `report` (a report.json document); frames (B, C, H, W) in [0, 1] add the image section."""
    page = Page(report, native, reference)
    title = f"diffparity {report.get('case', '')}: {report.get('verdict', '')}"
    body = "\n".join(part for part in (section(page) for section in SECTIONS) if part)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{STYLE}</style>'
            f"</head>\n<body>\n{body}\n</body></html>\n")
