"""Nothing is ever unpickled: the code base holds no call that could unpickle (checked on its syntax tree), the
reference side asks Diffusers for safetensors only, and the guard every hostile test runs under is armed.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_helpers import Unpickled

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("harness", "native_models", "references", "scripts", "tests", "ci", "cases")


def python_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py") if "hostile" not in p.parts)


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else "<expression>"
    return None


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def unpickling_calls(source: str) -> list[str]:
    """Calls that can unpickle: pickle/dill/joblib loads, torch.load without weights_only=True, np.load with
    allow_pickle true, a Diffusers pipeline's from_pretrained without use_safetensors=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "dill", "cloudpickle"):
            loaders = [a.name for a in node.names if a.name in ("load", "loads", "Unpickler")]
            found += [f"line {node.lineno}: from {node.module} import {name}" for name in loaders]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"line {node.lineno}: {name}"
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
                    "dill.load", "dill.loads", "joblib.load", "cloudpickle.load", "cloudpickle.loads"):
            found.append(where)
        elif name in ("torch.load", "torch.serialization.load") and _keyword(node, "weights_only") is not True:
            found.append(f"{where} without weights_only=True")
        elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") not in (None, False):
            found.append(f"{where} with allow_pickle")
        elif name.endswith("Pipeline.from_pretrained") and _keyword(node, "use_safetensors") is not True:
            found.append(f"{where} without use_safetensors=True")
    return found


def test_the_scanner_finds_what_it_looks_for() -> None:
    sample = (
        "import pickle, torch, numpy as np\nfrom pickle import loads\npickle.loads(b'')\ntorch.load('x')\n"
        "torch.load('x', weights_only=False)\ntorch.load('x', weights_only=True)\nnp.load('x', allow_pickle=True)\n"
        "np.load('x')\nFluxPipeline.from_pretrained('x')\nFluxPipeline.from_pretrained('x', use_safetensors=True)\n"
    )
    assert len(unpickling_calls(sample)) == 6, unpickling_calls(sample)


def test_no_code_can_unpickle() -> None:
    offenders = {str(path.relative_to(ROOT)): calls for path in python_files()
                 if (calls := unpickling_calls(path.read_text(encoding="utf-8")))}
    assert offenders == {}, offenders


@pytest.mark.parametrize("attempt", [
    lambda: pickle.loads(pickle.dumps(1)),
    lambda: pickle.load(open(__file__, "rb")),  # noqa: SIM115 - fails before reading
    lambda: pickle.Unpickler(open(__file__, "rb")).load(),  # noqa: SIM115
    lambda: torch.load(__file__, weights_only=True),
    lambda: np.load(__file__, allow_pickle=True),
], ids=["loads", "load", "Unpickler", "torch.load", "np.load"])
def test_the_guard_is_armed(attempt) -> None:
    """The hostile suite's guard (conftest.py) fails any test that unpickles: proven on each entry point."""
    with pytest.raises(Unpickled):
        attempt()
