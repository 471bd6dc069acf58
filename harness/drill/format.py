"""The drill on the terminal: one block per component call, the verdict first, then the worst modules."""

from __future__ import annotations

import math
from typing import Any

from harness.report.drill_view import module_label, summary_sentence


def _e(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.2e}" if math.isfinite(value) else str(value)


def _row(entry: dict[str, Any], component: str, ranks: bool) -> str:
    local, inherited = entry.get("local") or {}, entry.get("inherited") or {}
    verdict = {True: "pass", False: "FAIL", None: "-"}[entry.get("passed")]
    if entry.get("passed") is None and entry.get("inherited_passed") is False:
        verdict = "FAIL (inherited)"
    if entry.get("vs_single_rank_passed") is False:
        verdict = "FAIL (ranks)"
    single = f" {_e((entry.get('vs_single_rank') or {}).get('rel_l2')):>9}" if ranks else ""
    note = entry.get("local_problem") or entry.get("note") or ""
    if entry.get("threshold_source") == "default":
        note = ("default threshold; " + note) if note else "default threshold"
    return (f"{module_label(entry.get('module'), component)[:58]:<58} {str(entry.get('kind'))[:22]:<22} "
            f"{_e(local.get('rel_l2')):>9} {_e(inherited.get('rel_l2')):>9}{single} {_e(entry.get('threshold')):>9} "
            f"{verdict:<6} {note[:70]}")


def format_drill(data: dict[str, Any], every: bool = False, top: int = 10) -> str:
    """A report.json `drill` section as a terminal block."""
    component = str(data.get("component"))
    lines = [f"== {component}: {data.get('target', {}).get('stage')} "
             f"{'' if (data.get('target') or {}).get('step') is None else 'step ' + str(data['target']['step'])}",
             f"module: {summary_sentence(data)}"]
    if data.get("status") != "ran":
        return "\n".join(lines)
    summary = data.get("summary") or {}
    lines.append(f"{summary.get('modules')} modules, {summary.get('compared')} compared, {summary.get('forced')} "
                 f"forced at module level; {summary.get('failed_local')} fail locally, "
                 f"{summary.get('failed_inherited')} inherited; floors {(data.get('floors') or {}).get('source')}; "
                 f"{sum((data.get('timings_s') or {}).values()):.1f} s")
    ranks = any("vs_single_rank" in entry for entry in data.get("modules") or [])
    header = (f"{'module':<58} {'kind':<22} {'local':>9} {'inherited':>9}" + (f" {'vs 1 rank':>9}" if ranks else "")
              + f" {'threshold':>9} {'verdict':<6} note")
    by_name = {entry.get("module"): entry for entry in data.get("modules") or []}
    if every:
        rows = list(data.get("modules") or [])
        lines += ["every module, in execution order:", header]
    else:
        rows = [by_name[w["module"]] for w in data.get("worst") or [] if w.get("module") in by_name][:top]
        lines += [f"worst {len(rows)} (error / threshold):", header]
    lines += [_row(entry, component, ranks) for entry in rows]
    return "\n".join(lines)
