"""The drill section of the reports (report["drill"], harness/drill/): the module tree, the worst modules, one line.

Kept apart from html.py and markdown.py so each renderer adds one call: `drill_html(report)` (module tree of the
divergent component with the path to the named module highlighted, and the ranked worst modules) and
`drill_markdown(report)` (one line). Both read the plain report dict and drop out silently when it has no drill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

from harness.report.view import fmt

DRILL_STYLE = """
.drill ul { list-style: none; margin: 0; padding-left: 16px; border-left: 1px dotted #c8c8c8; }
.drill li { margin: 1px 0; white-space: nowrap; font-size: 13px; }
.drill .kind { color: #666666; } .drill .num { font-family: ui-monospace, monospace; font-size: 12px; }
.drill .fail > span.name, .drill .fail > details > summary > span.name { color: #b3261e; font-weight: 600; }
.drill .path > span.name, .drill .path > details > summary > span.name { background: #fff3cd; }
.drill .named > span.name, .drill .named > details > summary > span.name { outline: 2px solid #b3261e; }
"""


def module_label(name: str | None, component: str | None = None) -> str:
    """A module name as the reports show it: the component's own forward is '' in report.json."""
    if name is None:
        return "none"
    if name == "":
        return f"{component or 'component'} (its own forward, outside every submodule)"
    return name


def section(report: dict[str, Any]) -> dict[str, Any] | None:
    drill = report.get("drill")
    return drill if isinstance(drill, dict) else None


def summary_sentence(drill: dict[str, Any]) -> str:
    """What the drill found, in one sentence."""
    status = drill.get("status")
    if status != "ran":
        return f"drill {status or 'not run'}: {drill.get('reason') or 'no reason given'}"
    component = drill.get("component")
    verdict = drill.get("verdict")
    if not verdict:
        summary = drill.get("summary") or {}
        ranks = drill.get("topology")
        agree = (f"; on {ranks.get('name')} every module's gathered output matches the single-rank run's"
                 if isinstance(ranks, dict) else "")
        text = (f"no module of {component} diverges on the reference's inputs ({summary.get('compared', '?')} of "
                f"{summary.get('modules', '?')} modules compared{agree})")
        if drill.get("trigger") == "first_divergence":
            text += ": the divergence lies in what reaches the component or in how its output is used"
        return text
    basis = verdict.get("basis")
    errors = verdict.get({"local": "local", "ranks": "vs_single_rank"}.get(str(basis), "inherited"))
    value = (errors or {}).get("rel_l2")
    problem = verdict.get("problem")
    label = "gathered output against the single-rank run's" if basis == "ranks" else basis
    size = problem if problem and value is None else (
        f"{label}: rel_l2 {fmt(value, 'e')} > threshold {fmt(verdict.get('threshold'), 'e')}"
        + (f" ({fmt(verdict.get('multiple'), 'x')})" if verdict.get("multiple") is not None else ""))
    return f"{module_label(verdict.get('module'), component)} [{verdict.get('kind')}] in {component}: {size}"


def drill_markdown(report: dict[str, Any]) -> list[str]:
    """report.md's line: the module the drill named (or why none)."""
    drill = section(report)
    if drill is None:
        return []
    text = summary_sentence(drill).replace("|", "\\|").replace("\n", " ")
    module = drill.get("module")
    if drill.get("status") == "ran" and module is not None:
        return [f"**Module:** `{module_label(module, drill.get('component'))}`: {text}"]
    return [f"**Module:** {text}"]


@dataclass
class Node:
    name: str  # full dotted name
    entry: dict[str, Any] | None = None
    children: dict[str, Node] = field(default_factory=dict)


def module_tree(modules: list[dict[str, Any]]) -> Node:
    """The drill's entries as a tree by dotted name (execution order kept among siblings)."""
    root = Node("")
    for entry in modules:
        name = str(entry.get("module", ""))
        if name == "":
            root.entry = entry
            continue
        node, path = root, []
        for part in name.split("."):
            path.append(part)
            node = node.children.setdefault(part, Node(".".join(path)))
        node.entry = entry
    return root


def _failed(entry: dict[str, Any] | None) -> bool:
    return bool(entry) and (entry.get("passed") is False or entry.get("inherited_passed") is False)


def _row(node: Node, leaf: str) -> str:
    entry = node.entry or {}
    local, inherited = entry.get("local") or {}, entry.get("inherited") or {}
    numbers = (f"local {fmt(local.get('rel_l2'), 'e')} · inherited {fmt(inherited.get('rel_l2'), 'e')}"
               f" · threshold {fmt(entry.get('threshold'), 'e')}") if entry else ""
    if entry and not local and not inherited:
        numbers = escape(str(entry.get("local_problem") or entry.get("note") or "not compared"))[:120]
    kind = escape(str(entry.get("kind", ""))) if entry else ""
    return (f'<span class="name">{escape(leaf)}</span> <span class="kind">{kind}</span> '
            f'<span class="num">{numbers}</span>')


def _render(node: Node, leaf: str, path: set[str], named: str | None) -> str:
    css = " ".join(c for c, on in (("fail", _failed(node.entry)), ("path", node.name in path),
                                   ("named", node.name == named)) if on)
    row = _row(node, leaf)
    if not node.children:
        return f'<li class="{css}">{row}</li>'
    inner = "".join(_render(child, key, path, named) for key, child in node.children.items())
    opened = " open" if node.name in path or node.name == "" else ""
    return f'<li class="{css}"><details{opened}><summary>{row}</summary><ul>{inner}</ul></details></li>'


def _worst_table(drill: dict[str, Any]) -> str:
    rows = drill.get("worst") or []
    if not rows:
        return ""
    body = "".join(
        f'<tr class="{"fail" if r.get("passed") is False else "pass"}"><td class="l">'
        f'{escape(module_label(r.get("module"), drill.get("component")))}</td><td class="l">'
        f'{escape(str(r.get("kind")))}</td><td class="l">{escape(str(r.get("basis")))}</td>'
        f'<td>{fmt(r.get("rel_l2"), "e")}</td><td>{fmt(r.get("threshold"), "e")}</td>'
        f'<td>{fmt(r.get("multiple"), "x")}</td></tr>' for r in rows)
    return ("<table><thead><tr><th class=\"l\">module</th><th class=\"l\">kind</th><th class=\"l\">judged by</th>"
            "<th>rel_l2</th><th>threshold</th><th>x threshold</th></tr></thead><tbody>" + body + "</tbody></table>")


def drill_html(report: dict[str, Any]) -> str:
    """report.html's drill section: the verdict, the worst modules, the module tree (failing path highlighted)."""
    drill = section(report)
    if drill is None:
        return ""
    parts = [f"<style>{DRILL_STYLE}</style>", "<h2>Drill-down: module of the first divergence</h2>",
             f'<p class="lead">{escape(summary_sentence(drill))}</p>']
    if drill.get("status") != "ran":
        return "\n".join(parts)
    target = drill.get("target") or {}
    summary = drill.get("summary") or {}
    floors = (drill.get("floors") or {}).get("source", "default")
    parts.append(f'<p class="muted">{escape(str(target.get("component")))}.{escape(str(target.get("method")))} '
                 f'call {escape(str(target.get("call")))}, re-run on the reference\'s inputs; '
                 f'{summary.get("compared", 0)} of {summary.get("modules", 0)} modules compared, '
                 f'{summary.get("forced", 0)} teacher-forced at module level; floors: {escape(str(floors))}. '
                 "Local: the native module fed the reference module's inputs; inherited: the native component's "
                 "own run.</p>")
    verdict = drill.get("verdict")
    if verdict:
        parts.append("<p>Named module's inputs (reference): " + escape("; ".join(verdict.get("inputs") or [])) +
                     "<br>outputs (native): " + escape("; ".join(verdict.get("outputs") or [])) + "</p>")
    parts.append(_worst_table(drill))
    named = drill.get("module")
    path = set()
    if named:
        pieces = named.split(".")
        path = {".".join(pieces[:i]) for i in range(len(pieces) + 1)}
    tree = module_tree(drill.get("modules") or [])
    parts.append(f'<details open><summary><b>Module tree</b> of {escape(str(drill.get("component")))}</summary>'
                 f'<div class="drill"><ul>{_render(tree, str(drill.get("component")), path, named)}</ul></div>'
                 "</details>")
    return "\n".join(p for p in parts if p)
