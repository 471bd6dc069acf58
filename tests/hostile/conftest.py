"""Shared pieces of the hostile-input suite: nothing may be unpickled, and a CLI failure is one line, exit 2.

Every test in this folder runs with pickle's loaders, torch.load and numpy's pickle path replaced by a function
that fails the test: a pickle where safetensors is expected must be refused from its bytes, never loaded.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from hostile_helpers import Unpickled

_GUARD = {"active": False}
_REAL_UNPICKLER = pickle.Unpickler


class _GuardedUnpickler(_REAL_UNPICKLER):  # type: ignore[misc, valid-type]
    """pickle.Unpickler while a hostile test runs: a subclass (a module imported meanwhile may derive from it),
    whose load() fails the test while the guard is on and unpickles normally otherwise."""

    def load(self) -> object:
        if _GUARD["active"]:
            raise Unpickled("pickle.Unpickler.load was called: something tried to unpickle")
        return super().load()


def _refuse(name: str, original: Callable[..., object]) -> Callable[..., object]:
    def refuse(*args: object, **kwargs: object) -> object:
        if _GUARD["active"]:
            raise Unpickled(f"{name} was called: something tried to unpickle")
        return original(*args, **kwargs)

    return refuse


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if anything calls pickle.load/loads/Unpickler.load, torch.load, or np.load(allow_pickle=True)."""
    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, _refuse(f"pickle.{name}", getattr(pickle, name)))
    monkeypatch.setattr(pickle, "Unpickler", _GuardedUnpickler)
    monkeypatch.setattr(torch, "load", _refuse("torch.load", torch.load))
    original_np_load = np.load

    def np_load(*args: object, allow_pickle: bool = False, **kwargs: object) -> object:
        if allow_pickle and _GUARD["active"]:
            raise Unpickled("np.load(allow_pickle=True) was called")
        return original_np_load(*args, allow_pickle=allow_pickle, **kwargs)

    monkeypatch.setattr(np, "load", np_load)
    _GUARD["active"] = True
    try:
        yield
    finally:
        _GUARD["active"] = False


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str, str]]:
    """`cli(argv)` -> (exit code, stdout, stderr) of `diffparity ARGV` run in this process."""
    from hostile_helpers import run_cli

    return lambda argv: run_cli(argv, capsys)
