"""The TODO blocks a scaffolded family starts with: `# TODO(scaffold:ID) begin: what to write` ... `# TODO(scaffold:ID)
end`. Each block is one step of docs/adding-a-model.md; replacing a block (markers included) with the model's code
is how a step is done, and the gate lists the blocks left (`todo blocks`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BEGIN = re.compile(r"^\s*# TODO\(scaffold:(?P<id>[a-z0-9-]+)\) begin: (?P<what>.*)$")
END = re.compile(r"^\s*# TODO\(scaffold:(?P<id>[a-z0-9-]+)\) end\s*$")


@dataclass(frozen=True)
class TodoBlock:
    id: str
    what: str
    path: Path
    line: int  # 1-based line of the begin marker

    def where(self, root: Path | None = None) -> str:
        path = self.path.relative_to(root) if root is not None and self.path.is_relative_to(root) else self.path
        return f"{path}:{self.line}"


def todo_blocks(paths: list[Path]) -> list[TodoBlock]:
    """Every begin marker in `paths` (files that do not exist or cannot be read are skipped), in file order."""
    found: list[TodoBlock] = []
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for number, text in enumerate(lines, start=1):
            match = BEGIN.match(text)
            if match:
                found.append(TodoBlock(match["id"], match["what"].strip(), path, number))
    return found


def todo_ids(text: str) -> list[str]:
    """The block ids a text names as `TODO(scaffold:ID)`, in order of first mention (docs, messages)."""
    return list(dict.fromkeys(re.findall(r"TODO\(scaffold:([a-z0-9-]+)\)", text)))


def replace_block(text: str, block_id: str, code: str) -> str:
    """`text` with the block `block_id` (its markers included) replaced by `code`; ValueError when absent."""
    lines = text.splitlines(keepends=True)
    begin = next((i for i, line in enumerate(lines) if (m := BEGIN.match(line)) and m["id"] == block_id), None)
    end = next((i for i, line in enumerate(lines) if (m := END.match(line)) and m["id"] == block_id), None)
    if begin is None or end is None or end < begin:
        raise ValueError(f"no TODO(scaffold:{block_id}) block here")
    return "".join(lines[:begin]) + code.rstrip("\n") + "\n" + "".join(lines[end + 1:])
