"""What a run expects its checkpoint to draw: a picture (the noise gate can fail the run) or noise (it informs).

`--expect picture|noise|auto`. Auto decides from what is known about the weights: a case's own checkpoint by the
case (`Case.expects_picture`), a `--model` checkpoint by its build record (`diffparity_build.json`, written by the
builders here): `"random_weights": true` expects noise; any other checkpoint (a real or trained one) a picture.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

EXPECT_CHOICES = ("picture", "noise", "auto")
BUILD_RECORD = "diffparity_build.json"  # references/common/tiny_build.py BUILD_INFO_FILE


@dataclass(frozen=True)
class Expectation:
    """report["expect"]: what was asked (`requested`), what it resolved to (`expects`) and why."""

    requested: str  # picture | noise | auto
    expects: str  # picture | noise
    reason: str

    @property
    def picture(self) -> bool:
        return self.expects == "picture"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def says_random_weights(checkpoint: Path) -> bool | None:
    """The build record's `random_weights` (True/False), or None without a readable record saying either."""
    try:
        record = json.loads((checkpoint / BUILD_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    value = record.get("random_weights")
    if value is None and "build_version" in record and "seed" in record:
        # a tiny checkpoint cached by an older diffparity: its builder (references/common/tiny_build.py
        # save_checkpoint, the only writer of build_version + seed) made random weights before it said so
        return True
    return value if isinstance(value, bool) else None


def resolve_expectation(requested: str | None, case_expects_picture: bool, checkpoint: Path | None,
                        case_name: str) -> Expectation:
    """`requested` (None: auto) for a run of `case_name`; `checkpoint` is the --model folder (None: the case's own)."""
    requested = requested or "auto"
    if requested not in EXPECT_CHOICES:
        raise ValueError(f"--expect must be one of {', '.join(EXPECT_CHOICES)}, got {requested!r}")
    if requested != "auto":
        return Expectation(requested, requested, f"--expect {requested}")
    if checkpoint is None:
        expects = "picture" if case_expects_picture else "noise"
        weights = "trained or real" if case_expects_picture else "random"
        return Expectation("auto", expects, f"case {case_name} has {weights} weights")
    random_weights = says_random_weights(checkpoint)
    if random_weights:
        return Expectation("auto", "noise", f"{BUILD_RECORD} says random weights")
    why = "says trained weights" if random_weights is False else "absent or silent on the weights"
    return Expectation("auto", "picture", f"a real checkpoint should draw a picture ({BUILD_RECORD} {why})")
