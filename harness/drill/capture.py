"""The reference's inputs to a component call, captured from an ordinary reference run.

A family's reference runner installs a `ComponentProbe` on its loaded Diffusers pipeline
(`Case.run_reference_probe`, references/<family>/cases.py) as it installs its recorder: instance-level hooks
only. The probe counts the pipeline's calls of each targeted component (a module's forward, or a method such
as `vae.decode`), and at the targeted call keeps the component and a copy of the arguments, then stops the
run (`ProbeDone`) once every target is captured. The reference pipeline is then freed, except the captured
components, which the drill runs again (harness/drill/session.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.drill.target import DrillTarget


class ProbeDone(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Every targeted call was captured: the rest of the reference run is not needed."""


def detached_copy(value: Any) -> Any:
    """`value` with every tensor (in tuples, lists and dicts) cloned, so it outlives the run it came from."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if type(value) in (tuple, list):
        return type(value)(detached_copy(v) for v in value)
    if type(value) is dict:
        return {k: detached_copy(v) for k, v in value.items()}
    return value


@dataclass
class Captured:
    """One targeted call: the reference component and its call's arguments."""

    target: DrillTarget
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class ComponentProbe:
    """Captures the reference's calls named by `targets` on a pipeline (`install(pipe)` / `remove()`)."""

    def __init__(self, targets: list[DrillTarget], stop: bool = True) -> None:
        self.targets = list(targets)
        self.stop = stop
        self.captured: dict[DrillTarget, Captured] = {}
        self.calls: dict[tuple[str, str], int] = {}
        self._undo: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return all(t in self.captured for t in self.targets)

    def install(self, pipe: Any) -> None:
        for component, method in {(t.component, t.method) for t in self.targets}:
            module = getattr(pipe, component, None)
            if not isinstance(module, nn.Module):
                raise ValueError(f"the reference pipeline {type(pipe).__name__} has no module '{component}'")
            if method == "forward":
                handle = module.register_forward_pre_hook(self._pre_hook(component, module), with_kwargs=True)
                self._undo.append(handle.remove)
            else:
                self._wrap(module, component, method)

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def _seen(self, component: str, method: str, module: nn.Module, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> None:
        index = self.calls.get((component, method), 0)
        self.calls[(component, method)] = index + 1
        for target in self.targets:
            if (target.component, target.method, target.call) == (component, method, index):
                self.captured[target] = Captured(target, module, detached_copy(args), detached_copy(kwargs))
        if self.stop and self.done:
            raise ProbeDone()

    def _pre_hook(self, component: str, module: nn.Module) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._seen(component, "forward", module, args, kwargs)
        return hook

    def _wrap(self, module: nn.Module, component: str, method: str) -> None:
        original = getattr(module, method)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._seen(component, method, module, args, kwargs)
            return original(*args, **kwargs)

        had_own = method in module.__dict__
        previous = module.__dict__.get(method)
        setattr(module, method, wrapper)

        def undo() -> None:
            if had_own:
                setattr(module, method, previous)
            else:
                module.__dict__.pop(method, None)

        self._undo.append(undo)
