"""What `diffparity drill --out DIR` writes: drill.json (every drilled call's section), drill.md, drill.html."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from harness.files import write_json_atomic, write_text_atomic
from harness.report.drill_view import drill_html, drill_markdown
from harness.report.html import STYLE


def write_drill_artifacts(out_dir: Path, case: str, request: dict[str, Any], sections: list[dict[str, Any]],
                          fault: str | None = None) -> None:
    document = {"case": case, "request": request, "fault": fault, "drills": sections}
    md = [f"### diffparity drill `{case}`" + (f" (fault `{fault}`)" if fault else ""), ""]
    html = [f"<h1>diffparity drill: {escape(case)}" + (f" (fault {escape(fault)})" if fault else "") + "</h1>"]
    for data in sections:
        md += [f"- {line}" for line in drill_markdown({"drill": data})]
        html.append(drill_html({"drill": data}))
    write_text_atomic(out_dir / "drill.md", "\n".join(md) + "\n")
    write_text_atomic(out_dir / "drill.html", f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                                              f"<title>diffparity drill {escape(case)}</title><style>{STYLE}</style>"
                                              f"</head><body>{''.join(html)}</body></html>\n")
    write_json_atomic(out_dir / "drill.json", document)
