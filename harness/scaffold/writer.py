"""Write a new family's skeleton into a repository tree: all of it or nothing.

The name is checked first (a lowercase Python identifier that names no existing family, module, folder or case
file); every file is then rendered into a hidden staging folder under the root, with the new text of
references/families.py (the family's package added to FAMILIES), and only then moved into place. A failure while
moving puts back what was already moved, so the tree is never left with half a family.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import tempfile
from pathlib import Path

from harness.scaffold.templates import family_files

FAMILIES_FILE = "references/families.py"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,19}$")  # 20 characters at most: generated lines stay within 120
# folder and module names that already mean something where a family's files go
RESERVED = {"common", "checkpoints", "families", "pipelines", "models", "registered_cases", "test"}
_FAMILIES_TUPLE = re.compile(r"(FAMILIES\s*:[^=]*=\s*\()(?P<body>[^)]*)(\))", re.S)


class ScaffoldError(Exception):
    """A family name the scaffold refuses, or a tree it cannot write into; nothing was written."""


def check_family_name(family: str) -> None:
    if not NAME.match(family):
        raise ScaffoldError(f"family name {family!r} must be a lowercase Python identifier: a letter, then letters, "
                            "digits or '_' (20 at most); it names a module, a folder and a case file")
    if keyword.iskeyword(family) or family in RESERVED:
        raise ScaffoldError(f"family name {family!r} is reserved; choose another")


def _families_text(root: Path, family: str) -> str:
    """references/families.py with "references.<family>" added at the end of FAMILIES."""
    path = root / FAMILIES_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScaffoldError(f"{path}: cannot read the family list ({exc.strerror or exc})") from None
    match = _FAMILIES_TUPLE.search(text)
    if match is None:
        raise ScaffoldError(f"{path}: no FAMILIES tuple found; is {root} a diffparity repository?")
    package = f"references.{family}"
    if re.search(rf"[\"']{re.escape(package)}[\"']", match["body"]):
        raise ScaffoldError(f"family '{family}' already exists: {FAMILIES_FILE} lists {package}")
    body = match["body"].rstrip()
    if body and not body.endswith(","):
        body += ","
    new_body = f"{body}\n    \"{package}\",\n"
    return text[: match.start("body")] + new_body + text[match.end("body"):]


def scaffold_family(family: str, root: Path) -> list[Path]:
    """Write the skeleton of `family` into the repository tree at `root`; the paths written, relative to root.

    Raises ScaffoldError (nothing written) for an invalid or existing name or a tree that is not a repository."""
    check_family_name(family)
    root = Path(root)
    files = family_files(family)
    existing = [path for path in (*files, f"references/{family}") if (root / path).exists()]
    if existing:
        raise ScaffoldError(f"family '{family}' already exists: {existing[0]} is there")
    families = _families_text(root, family)
    staging = Path(tempfile.mkdtemp(prefix=f".scaffold-{family}-", dir=root))
    moved: list[Path] = []
    try:
        for relative, text in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        (staging / FAMILIES_FILE).parent.mkdir(parents=True, exist_ok=True)
        (staging / FAMILIES_FILE).write_text(families)
        shutil.copymode(root / FAMILIES_FILE, staging / FAMILIES_FILE)
        # the reference package moves as one folder; the two single files and then the family list follow
        for relative in (f"references/{family}", f"native_models/pipelines/{family}.py", f"cases/test_{family}.py"):
            source, target = staging / relative, root / relative
            if not target.parent.is_dir():
                raise ScaffoldError(f"{target.parent} is not a folder; is {root} a diffparity repository?")
            os.rename(source, target)
            moved.append(target)
        os.replace(staging / FAMILIES_FILE, root / FAMILIES_FILE)
    except BaseException:
        for target in reversed(moved):
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [Path(p) for p in (*files, FAMILIES_FILE)]
