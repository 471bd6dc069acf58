"""Building a native model without allocating its weights: on the meta device, from its config.json.

Two builds happen per component. `check_build_size` builds everything (buffers too) on the meta device under an
element budget, so a config declaring 10**9 layers fails before anything is allocated. `build_empty` then builds
the model the loader fills: its parameters on the meta device (no random init, no fp32 copy of the weights),
its buffers computed for real at construction, as Diffusers does through accelerate's `init_empty_weights`.
Buffers are small (rotary tables) and the non-persistent ones are not in the checkpoint, so computing them in
the constructor, with the code that defines them, is the one way that needs no hook in the model classes.
"""

from __future__ import annotations

import math
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
    """`torch.nn.init` on a meta (or empty) tensor has nothing to fill: skip it.

    Under the meta device (the size check), a small tensor factory (at most SMALL_FACTORY elements: biases,
    norms, modulation tables, rotary ranges) makes its tensor on the CPU instead, so what a constructor computes
    from it (`torch.randn(1, 6, dim) / dim**0.5`, a rotary table from an arange) runs on CPU kernels. On the meta
    device many of those ops run torch's Python reference kernels, whose first call imports torch._dynamo and
    sympy: about 1.4 s in every process that checked a wan, qwenimage or zimage model. The build counts the same
    elements either way, and a large factory (a weight matrix; a config asking for 10**9 of something) stays on
    the meta device and allocates nothing."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        if getattr(func, "__module__", "") == "torch.nn.init":
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and (target.is_meta or target.numel() == 0):
                return target  # nothing to fill (torch warns on an empty one: a config with a zero size)
        if func in _FACTORIES and _lands_on_meta(kwargs) and _small(_factory_numel(func, args, kwargs)):
            return func(*args, **{**kwargs, "device": "cpu"})
        return func(*args, **kwargs)


SMALL_FACTORY = 2**16
_SHAPED = (torch.empty, torch.zeros, torch.ones, torch.randn, torch.rand)
_FACTORIES = (*_SHAPED, torch.full, torch.arange, torch.linspace, torch.logspace, torch.tensor)


def _lands_on_meta(kwargs: dict[str, Any]) -> bool:
    """No device asked for (an explicit one, meta included, is kept) and the ambient device is meta."""
    return kwargs.get("device") is None and "out" not in kwargs and torch.get_default_device().type == "meta"


def _small(numel: int | None) -> bool:
    return numel is not None and numel <= SMALL_FACTORY


def _factory_numel(func: Callable[..., torch.Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """Elements of the tensor `func(*args, **kwargs)` makes; None when the arguments are not plain (the factory
    then runs as called)."""
    try:
        if func is torch.tensor:
            return None if isinstance(args[0] if args else kwargs.get("data"), torch.Tensor) else 0  # data in memory
        if func in _SHAPED or func is torch.full:
            if "size" in kwargs:
                size = kwargs["size"]
            else:  # full(size, value); empty(2, 3) or empty((2, 3))
                size = args[0] if func is torch.full or not isinstance(args[0], int) else args
            return math.prod(int(n) for n in size)
        if func is torch.arange:
            values = [float(v) for v in (*args, *(kwargs[k] for k in ("start", "end", "step") if k in kwargs))]
            start, end, step = (0.0, values[0], 1.0) if len(values) == 1 else (
                values[0], values[1], values[2] if len(values) > 2 else 1.0)
            return max(0, math.ceil((end - start) / step))
        return int(args[2] if len(args) > 2 else kwargs["steps"])  # linspace, logspace
    except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError, RuntimeError):
        return None


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
            with _registration_hooks(budget, budget):
                build_on_meta(cls, config)
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


def build_on_meta(cls: type, config: dict[str, Any]) -> torch.nn.Module:
    """`cls` built from `config` on the meta device, for what its structure says (sizes, plans, parallel
    checks): nothing allocated but small factories, which run on CPU kernels (SkipInitOnMeta), so the build
    imports no torch._dynamo."""
    with torch.device("meta"), SkipInitOnMeta():
        return cls.from_config(config)  # type: ignore[attr-defined]


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
