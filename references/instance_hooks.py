"""Removable hooks on one Diffusers pipeline instance, shared by the family reference runners.

Diffusers itself is never modified: bound methods are shadowed on the instance (`obj.__dict__[name]`) and
module hooks are registered on the instance's modules; `remove()` undoes both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from harness.trace import RecordKey, Trace


class InstanceHooks:
    """Instance-level method wrappers and module hook handles, removed together."""

    def __init__(self) -> None:
        self._wrapped: list[tuple[Any, str]] = []
        self._handles: list[Any] = []

    def after(self, obj: Any, name: str, after: Callable[[tuple, dict, Any], None]) -> None:
        """Shadow `obj.name` with a wrapper that calls `after(args, kwargs, result)` once it returned."""
        original = getattr(obj, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            after(args, kwargs, result)
            return result

        self._shadow(obj, name, wrapper)

    def around(self, obj: Any, name: str, around: Callable[[Any, tuple, dict], Any]) -> None:
        """Shadow `obj.name` with `around(original, args, kwargs)`, which decides what runs and returns."""
        original = getattr(obj, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return around(original, args, kwargs)

        self._shadow(obj, name, wrapper)

    def handle(self, handle: Any) -> None:
        """Keep a module hook handle (from register_forward_hook / register_forward_pre_hook) for removal."""
        self._handles.append(handle)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for obj, name in self._wrapped:
            obj.__dict__.pop(name, None)
        self._handles.clear()
        self._wrapped.clear()

    def _shadow(self, obj: Any, name: str, wrapper: Callable[..., Any]) -> None:
        setattr(obj, name, wrapper)
        self._wrapped.append((obj, name))


def baseline_tensor(
    baseline: Trace, stage: str, field: str, step: int | None = None, like: torch.Tensor | None = None
) -> torch.Tensor:
    """A record of the trace a forced reference run is fed from, in `like`'s device and dtype when given."""
    key = RecordKey(stage, field, step)
    tensor = baseline.get(key)
    if tensor is None:
        raise ValueError(f"forcing needs record {key.name()} in the baseline trace")
    return tensor if like is None else tensor.to(device=like.device, dtype=like.dtype)


def decode_baseline_latents(baseline: Trace, original: Any, args: tuple, kwargs: dict) -> Any:
    """`vae.decode` run on the baseline's `decode/latents` instead of the pipeline's own input."""
    if args:
        args = (baseline_tensor(baseline, "decode", "latents", like=args[0]), *args[1:])
    else:
        kwargs["z"] = baseline_tensor(baseline, "decode", "latents", like=kwargs["z"])
    return original(*args, **kwargs)
