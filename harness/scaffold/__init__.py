"""`diffparity scaffold FAMILY`: the skeleton of a new model family, with TODO blocks where the model code goes.

- templates.py: the text of each file a family needs (native pipeline module, reference package with tiny
  builder, runner, cases and faults, the case file), written for a family name;
- markers.py: the `# TODO(scaffold:ID) begin ... end` blocks, read back by the gate (harness/verdicts/gate.py);
- writer.py: `scaffold_family(family, root)`: checks the name, stages every file, then moves them into place
  with the family's line added to references/families.py (all or nothing).
"""

from harness.scaffold.markers import TodoBlock, todo_blocks, todo_ids
from harness.scaffold.writer import ScaffoldError, scaffold_family

__all__ = ["ScaffoldError", "TodoBlock", "scaffold_family", "todo_blocks", "todo_ids"]
