"""Load a file of scripts/ as a module, so that a test can reuse the script's own functions.

scripts/ is not a package, and its files are run as programs (they put the repository root on sys.path
themselves), so a test loads one from its path. The module is registered in sys.modules under the file's stem
before it runs: dataclasses and pickling look their module up there.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(stem: str) -> ModuleType:
    """scripts/STEM.py, executed once per call and registered as sys.modules[STEM]."""
    spec = importlib.util.spec_from_file_location(stem, SCRIPTS / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
