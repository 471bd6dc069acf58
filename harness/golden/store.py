"""Where goldens live: `golden/CASE/DTYPE.DEVICE_CLASS[.draft|.obtained].safetensors`, and finding them.

Files are keyed by case, dtype and device class (device class `cpu` or `cuda-smXY` as
harness/compare/tolerances.py names it), so a golden recorded on one class of machine is never used on another.
Beside a golden live its draft (`.draft.safetensors`, written by `record`) and, after a failed verify, the native
trace that failed (`.obtained.safetensors`), as pytest-regressions keeps the obtained file beside the expected
one; golden/.gitignore keeps both out of git.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.golden.errors import GoldenError

ROOT = Path(__file__).resolve().parents[2]  # the repository
GOLDEN_ROOT = ROOT / "golden"
GOLDEN_DIR_ENV = "DIFFPARITY_GOLDEN_DIR"  # another golden root, for every command and test that takes the default
KINDS = {"golden": ".safetensors", "draft": ".draft.safetensors", "obtained": ".obtained.safetensors"}
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


def golden_path(case: str, dtype: str, device_cls: str, root: Path | None = None, kind: str = "golden") -> Path:
    """root/CASE/DTYPE.DEVICE_CLASS[.draft|.obtained].safetensors"""
    for label, value in (("case", case), ("dtype", dtype), ("device class", device_cls)):
        if not isinstance(value, str) or not _NAME_OK.fullmatch(value) or ".." in value or len(value) > 120:
            raise GoldenError(f"{label} {str(value)[:60]!r} cannot name a golden file (at most 120 letters, digits, "
                              "'-', '_', '.', '@')")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return (root or default_root()) / case / f"{dtype}.{device_cls}{KINDS[kind]}"


def default_root() -> Path:
    """$DIFFPARITY_GOLDEN_DIR, else the repository's golden/ folder."""
    return Path(os.environ.get(GOLDEN_DIR_ENV) or GOLDEN_ROOT)


@dataclass(frozen=True)
class GoldenFile:
    """One file found under the golden root, classified by its name."""

    path: Path
    case: str
    dtype: str
    device_class: str
    kind: str  # golden, draft or obtained


def parse_golden_name(path: Path) -> GoldenFile | None:
    """The case/dtype/device class/kind a file's place and name say, or None for a name that is not one."""
    name = path.name
    for kind, suffix in sorted(KINDS.items(), key=lambda item: -len(item[1])):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            dtype, _, device_cls = stem.partition(".")
            if dtype and device_cls and "." not in device_cls:
                return GoldenFile(path, path.parent.name, dtype, device_cls, kind)
            return None
    return None


def scan_goldens(root: Path | None = None) -> tuple[list[GoldenFile], list[Path]]:
    """(files named like goldens, drafts or obtained traces; other files) under root, skipping golden/tolerances
    (calibrations) and dotfiles."""
    root = root or default_root()
    found: list[GoldenFile] = []
    strays: list[Path] = []
    if not root.is_dir():
        return found, strays
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    strays += [p for p in entries if not p.is_dir()]  # a golden lives in its case's folder
    for case_dir in (p for p in entries if p.is_dir() and p.name != "tolerances"):
        for path in sorted(case_dir.rglob("*")):
            if any(part.startswith(".") for part in path.relative_to(case_dir).parts) or path.is_dir():
                continue
            parsed = parse_golden_name(path) if path.parent == case_dir else None
            if parsed is None:
                strays.append(path)
            else:
                found.append(parsed)
    return found, strays
