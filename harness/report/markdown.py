"""`report.md`: the run in a few lines of GitHub Markdown, short enough for a pull-request comment.

Verdict, first divergence, the per-stage table (worst multiple of threshold and of floor, the rule under it),
the noise detector's verdicts with their reasons, image metrics and the difference scale, the drift at the last
step and the environment in one line; the numbers come from harness/report/view.py, as in report.html. Blocks
after the table are `BLOCKS`: a new one is a function of the report and an entry there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.report import view
from harness.report.drill_view import drill_markdown

MAX_FRAME_ROWS = 4  # a clip's frames beyond these are summarised by the worst one


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _stage_table(report: dict[str, Any]) -> list[str]:
    rows = view.stage_rows(report)
    if not rows:
        return []
    has_mode = any(r.mode for r in rows)
    has_floor = any(r.worst_floor_multiple is not None for r in rows)
    header = ["stage", *(["mode"] if has_mode else []), "records", "failed", "worst rel_l2", "min cos",
              "worst x threshold", *(["worst x floor"] if has_floor else []), "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        verdict = "✅ pass" if r.verdict == "pass" else "❌ **fail**"
        cells = [r.stage, *([r.mode or "—"] if has_mode else []), str(r.records), str(r.failed),
                 view.fmt(r.worst_rel_l2, "e"), view.fmt(r.min_cos, "cos"), view.fmt(r.worst_threshold_multiple, "x"),
                 *([view.fmt(r.worst_floor_multiple, "x")] if has_floor else []), verdict]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + ["", f"<sub>{_cell(view.threshold_rule(report))}</sub>"]


def _noise_lines(report: dict[str, Any]) -> list[str]:
    noise = view.noise(report)
    if noise is None:
        return []
    effect = "**fails the run**" if noise.fails_run else "does not fail the run"
    return [f"**Noise detector:** {_cell(noise.note)} ({effect}); native {_cell(noise.native)}; "
            f"reference {_cell(noise.reference)}"]


def _image_lines(report: dict[str, Any]) -> list[str]:
    rows = view.image_metric_rows(report)
    if not rows:
        problem = view.image_metrics_problem(report)
        return [f"Image metrics: {_cell(problem)}"] if problem else []
    shown = rows if len(rows) <= MAX_FRAME_ROWS else [min(rows, key=lambda r: view.number(r.get("ssim")) or 0.0)]
    lines = ["| frame | PSNR (dB) | SSIM | mean \\|diff\\| (0-255) |", "|---|---|---|---|"]
    for r in shown:
        label = str(r.get("frame", "?")) + ("" if shown is rows else f" (lowest SSIM of {len(rows)})")
        lines.append(f"| {label} | {view.fmt(r.get('psnr'), 'db')} | {view.fmt(r.get('ssim'), 'f6')} | "
                     f"{view.fmt(r.get('mad_255'))} |")
    largest = view.number(report.get("difference_max_255"))
    if largest is not None:
        lines += ["", f"Difference panels (side_by_side.png, report.html): 0 to {view.fmt(largest)} / 255, the run's "
                      "largest channel difference"]
    return lines


def _drift_line(report: dict[str, Any]) -> list[str]:
    drift = view.drift(report)
    if drift is None or not drift.normalised:
        return []
    parts = [f"{s.label} {view.fmt(s.values[-1], 'x')}" for s in drift.normalised if s.values]
    return [f"Drift at step {drift.steps[-1]} (x threshold): " + ", ".join(parts)]


def _ranks_line(report: dict[str, Any]) -> list[str]:
    """A multi-rank run (harness/run/multirank.py): the topology and its comparison with the single-rank run."""
    ranks = report.get("ranks")
    if not isinstance(ranks, dict):
        return []
    topology = ranks.get("topology") or {}
    single = ranks.get("vs_single_rank") or {}
    worst = single.get("worst") or {}
    step = "" if worst.get("step") is None else f" step {worst['step']}"
    where = f"{worst.get('stage')}/{worst.get('field')}{step}"
    text = (f"**Ranks:** {topology.get('name', '?')} ({topology.get('world', '?')} processes, "
            f"{topology.get('backend', '?')}): against the single-rank native run "
            f"**{str(single.get('verdict', 'n/a')).upper()}**, worst rel_l2 {view.fmt(worst.get('rel_l2'), 'e')} "
            f"({_cell(where)}); every rank handed the VAE the same latents: "
            f"{'yes' if ranks.get('ranks_identical') else 'NO'}")
    detail = single.get("first_divergence_detail")
    return [text] + ([f"First divergence from one rank: {_cell(detail)}"] if detail else [])


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown text for `report` (a report.json document)."""
    verdict = str(report.get("verdict", "unknown"))
    mark = "✅" if verdict == "pass" else "❌"
    lines = [
        f"### {mark} diffparity `{_cell(str(report.get('case', '?'))).replace('`', chr(39))}`: "
        f"**{_cell(verdict.upper())}**",  # the case may come from a trace's metadata: no newline, no backtick
        "",
        f"{_cell(view.request_line(report))}",
        "",
        f"**First divergence:** {_cell(view.first_divergence_text(report))}",
        *[line for line in drill_markdown(report) for line in ("", line)],
        "",
        *_stage_table(report),
    ]
    for render in BLOCKS:
        block = render(report)
        if block:
            lines += ["", *block]
    lines += ["", f"<sub>{_cell(view.environment_line(report))}</sub>"]
    return "\n".join(lines) + "\n"


# Blocks after the stage table, top to bottom; a new one (say, per-module rows of a drill-down) is a line here.
BLOCKS: list[Callable[[dict[str, Any]], list[str]]] = [_noise_lines, _ranks_line, _image_lines, _drift_line]
