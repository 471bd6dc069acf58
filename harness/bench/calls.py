"""Capturing one real call of a pipeline component, so it can be replayed alone and timed.

Each side's pipeline runs once with captures installed; each capture keeps the arguments of one call of
`owner.method` (an instance attribute wraps the bound method; nothing of the class is patched, and removing the
attribute restores it). Replaying gives the stage's cost on exactly the inputs the pipeline gives it. A stateful
owner (a multistep scheduler, whose `step` reads and advances its history) is copied just before the captured
call, and each replay runs on a fresh copy of that state, made outside the timed region.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

_NONE = object()  # no instance attribute of that name before the capture


class CallCapture:
    """The arguments of the first (or, with `last=True`, the last) call of `owner.<method>` during a run."""

    def __init__(self, owner: Any, method: str, last: bool = False, stateful: bool = False) -> None:
        self.owner = owner
        self.method = method
        self.last = last
        self.stateful = stateful
        self.args: tuple | None = None
        self.kwargs: dict[str, Any] | None = None
        self.state: Any = None  # a copy of `owner` just before the captured call (stateful owners)
        self.calls = 0
        self._previous: Any = _NONE

    def install(self) -> CallCapture:
        original = getattr(self.owner, self.method)
        self._previous = vars(self.owner).get(self.method, _NONE)  # an instance wrapper already there stays

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.args is None or self.last:
                self.args, self.kwargs = args, dict(kwargs)
                if self.stateful:
                    self.state = copy.deepcopy(self.owner)
                    vars(self.state).pop(self.method, None)  # the copy calls its own method, not this wrapper
            return original(*args, **kwargs)

        setattr(self.owner, self.method, wrapper)
        return self

    def remove(self) -> None:
        if self._previous is not _NONE:
            setattr(self.owner, self.method, self._previous)
        elif self.method in vars(self.owner):
            delattr(self.owner, self.method)

    @property
    def captured(self) -> bool:
        return self.args is not None

    def replay(self) -> Callable[[], Any]:
        """A no-argument function that makes the captured call again (on a fresh copy of the state, when the
        owner is stateful: the copy is made when this is called, the call when the returned function is)."""
        if self.args is None or self.kwargs is None:
            raise RuntimeError(f"{type(self.owner).__name__}.{self.method} was never called during the run")
        args, kwargs = self.args, self.kwargs
        if self.stateful:
            owner = copy.deepcopy(self.state)
            return lambda: getattr(owner, self.method)(*args, **kwargs)
        if self.method == "forward":  # through __call__, so the module's own hooks run as in the pipeline
            return lambda: self.owner(*args, **kwargs)
        return lambda: getattr(self.owner, self.method)(*args, **kwargs)


def captures_for(components: dict[str, Any]) -> dict[str, CallCapture]:
    """The calls a benchmark times, from one side's components by their Diffusers names: each text encoder's and
    the DiT's forward (first call), the scheduler's step (last call: a multistep scheduler then uses its full
    history), the VAE's decode."""
    found: dict[str, CallCapture] = {}
    for name in sorted(components):
        if name.startswith("text_encoder"):
            found[name] = CallCapture(components[name], "forward")
    found["transformer"] = CallCapture(components["transformer"], "forward")
    found["scheduler.step"] = CallCapture(components["scheduler"], "step", last=True, stateful=True)
    found["vae.decode"] = CallCapture(components["vae"], "decode")
    return found
