"""Building a native model without allocating its weights: on the meta device, from its config.json.

Two builds happen per component. `check_build_size` builds everything (buffers too) on the meta device under an
element budget, so a config declaring 10**9 layers fails before anything is allocated. `build_empty` then builds
the model the loader fills: its parameters on the meta device (no random init, no fp32 copy of the weights),
its buffers computed for real at construction, as Diffusers does through accelerate's `init_empty_weights`.
Buffers are small (rotary tables) and the non-persistent ones are not in the checkpoint, so computing them in
the constructor, with the code that defines them, is the one way that needs no hook in the model classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules import module as torch_module
from torch.overrides import TorchFunctionMode

from native_models.build_memo import BoundedMemo, config_key
from native_models.errors import CheckpointError

# A model built from config.json may hold at most this many elements more than its checkpoint's tensors:
# tied weights are counted twice, and non-persistent buffers (rotary tables...) are not in the file.
BUILD_SLACK_NUMEL = 2**20
BUILD_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, OverflowError)
# (class, config.json) -> elements of its complete meta build: the size check of a config already built once in
# this process compares that count with the budget instead of building again (native_models/build_memo.py)
BUILT_NUMEL: BoundedMemo[int] = BoundedMemo()


class SkipInitOnMeta(TorchFunctionMode):
    """`torch.nn.init` on a meta tensor has nothing to fill: skip it. That also keeps torch off its meta path
    for in-place random fills, which imports torch._dynamo (about 1.5 s in every native process)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        if getattr(func, "__module__", "") == "torch.nn.init":
            target = args[0] if args else (kwargs or {}).get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **(kwargs or {}))


class _BuildBudget:
    """Counts the elements of every parameter and buffer registered while a model is built and stops the
    build once they exceed `limit`: a config.json declaring 10**9 layers or a width of 10**9 fails at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.numel = 0

    def __call__(self, module: torch.nn.Module, name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            self.numel += value.numel()
            if self.numel > self.limit:
                raise _OverBudget(self.numel)


class ConfigTooLarge(CheckpointError):
    """config.json describes a model far larger than its weights."""


class _OverBudget(Exception):
    def __init__(self, numel: int) -> None:
        super().__init__(numel)
        self.numel = numel


@contextmanager
def _registration_hooks(on_parameter: Callable[..., Any], on_buffer: Callable[..., Any] | None) -> Iterator[None]:
    handles = [torch_module.register_module_parameter_registration_hook(on_parameter)]
    if on_buffer is not None:
        handles.append(torch_module.register_module_buffer_registration_hook(on_buffer))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_build_size(cls: type, config: dict[str, Any], component_dir: Path, checkpoint_numel: int) -> None:
    """Build `cls` from `config` on the meta device (no memory allocated) and raise CheckpointError when it
    would hold far more elements than the checkpoint's tensors, or cannot be built at all."""
    limit = 2 * checkpoint_numel + BUILD_SLACK_NUMEL
    key = config_key(cls, config)
    numel = BUILT_NUMEL.get(key)
    if numel is None:
        budget = _BuildBudget(limit)
        try:
            with _registration_hooks(budget, budget), torch.device("meta"), SkipInitOnMeta():
                cls.from_config(config)  # type: ignore[attr-defined]
        except _OverBudget as exc:
            numel = exc.numel  # a partial count: the build stopped as soon as it passed the budget
        except BUILD_ERRORS as exc:
            raise _cannot_build(cls, component_dir, exc) from None
        else:
            numel = budget.numel
            BUILT_NUMEL.put(key, numel)
    if numel > limit:
        raise ConfigTooLarge(
            f"{component_dir / 'config.json'}: {cls.__name__} built from it would hold over {numel} elements, "
            f"its weights hold {checkpoint_numel} (a config value far too large?)"
        )


def _parameter_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> Any:
    if param is None or param.is_meta:
        return None
    return type(param)(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)


def build_empty(cls: type, config: dict[str, Any], component_dir: Path) -> torch.nn.Module:
    """`cls` built from `config` with every parameter on the meta device and every buffer computed (on the CPU,
    in the dtype its module chooses). A parameter created by a plain factory (`torch.empty` in nn.Linear) is
    allocated untouched for an instant and dropped; no random init runs."""
    try:
        with _registration_hooks(_parameter_on_meta, None), SkipInitOnMeta():
            return cls.from_config(config)  # type: ignore[attr-defined]
    except BUILD_ERRORS as exc:
        raise _cannot_build(cls, component_dir, exc) from None


def plan_dtypes(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Give every (meta) parameter and every buffer the dtype it will have in a `dtype` run, by casting the
    model itself: each class's own cast rules apply (Wan's fp32-kept modules, T5's fp32 `wo` under fp16) with no
    data to cast yet. Buffers are cast for real, as `.to(dtype)` after a full load would cast them."""
    model.to(dtype=dtype)


def _cannot_build(cls: type, component_dir: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"{component_dir / 'config.json'}: cannot build {cls.__name__} ({first_line(exc)})")


def first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["BUILD_SLACK_NUMEL", "ConfigTooLarge", "SkipInitOnMeta", "build_empty", "check_build_size", "plan_dtypes"]
