"""Applying a model's parallel plans: `parallelize(model, mesh)` and the sharded loader built on it.

A model declares, as class data, `_tp_plan` and `_sp_plan`: {module-path pattern: style}. In a pattern, `*`
matches within one dotted component (`blocks.*.attn*.to_q` matches `blocks.3.attn2.to_q`). Every pattern must
match at least one module, otherwise the plan and the model have drifted apart and `parallelize` raises.
Styles either return a replacement module (same parameter names, this rank's shard of the weights) or register
hooks on the module; the model's own forward is the only forward.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from torch import nn

from native_models.loader import load_component
from native_models.parallel.context import ParallelContext, SequenceState
from native_models.parallel.mesh import ParallelError, ParallelMesh

CONTEXT_ATTR = "parallel_context"
M = TypeVar("M", bound=nn.Module)


class Style(Protocol):
    def apply(self, module: nn.Module, name: str, ctx: ParallelContext) -> nn.Module | None: ...


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a module-path pattern: `*` matches any characters except the dot."""
    return re.compile("".join("[^.]*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern)))


def matching_modules(model: nn.Module, pattern: str) -> list[str]:
    regex = pattern_regex(pattern)
    return [name for name, _ in model.named_modules() if regex.fullmatch(name)]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name), leaf, module)


def apply_plan(model: nn.Module, plan: dict[str, Style], ctx: ParallelContext, plan_name: str) -> int:
    """Apply every (pattern, style) of `plan`; returns the number of modules changed."""
    matches = {pattern: matching_modules(model, pattern) for pattern in plan}  # all checked before any change
    empty = [pattern for pattern, names in matches.items() if not names]
    if empty:
        raise ValueError(f"{type(model).__name__}.{plan_name}: pattern(s) {empty} match no module")
    count = 0
    for pattern, style in plan.items():
        for name in matches[pattern]:
            replacement = style.apply(model.get_submodule(name), name, ctx)
            if replacement is not None:
                _replace(model, name, replacement)
            count += 1
    return count


def _plan(model: nn.Module, attr: str) -> dict[str, Style]:
    plan = getattr(type(model), attr, None)
    if not isinstance(plan, dict) or not plan:
        raise ValueError(f"{type(model).__name__} declares no {attr}: it cannot run with this parallelism")
    return plan


def parallelize(model: nn.Module, mesh: ParallelMesh) -> ParallelContext:
    """Shard `model` (fully loaded, identical on every rank) in place for this rank of `mesh`.

    Sets and returns `model.parallel_context`. A model may define `check_parallel(tp, sp)` to reject sizes
    its heads cannot be split by (raised as ParallelError, a one-line user error).
    """
    if getattr(model, CONTEXT_ATTR, None) is not None:
        raise ValueError(f"{type(model).__name__} is already parallelized")
    ctx = ParallelContext(mesh)
    if mesh.is_parallel:
        check = getattr(model, "check_parallel", None)
        if check is not None:
            try:
                check(mesh.tp, mesh.sp)
            except ValueError as exc:
                raise ParallelError(str(exc)) from None
        if mesh.tp > 1:
            apply_plan(model, _plan(model, "_tp_plan"), ctx, "_tp_plan")
        if mesh.sp > 1:
            ctx.sequence = SequenceState(mesh.sp_group, mesh.sp, mesh.sp_rank)
            apply_plan(model, _plan(model, "_sp_plan"), ctx, "_sp_plan")
    setattr(model, CONTEXT_ATTR, ctx)
    return ctx


def parallel_context(model: nn.Module) -> ParallelContext | None:
    """The context `parallelize` attached to `model`, or None for a model that was never parallelized."""
    return getattr(model, CONTEXT_ATTR, None)


def load_parallel_component(
    cls: type[M],
    component_dir: Path,
    mesh: ParallelMesh,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> M:
    """Load the full checkpoint on the CPU (strictly, as `load_component`), keep this rank's shard, then move it."""
    model = load_component(cls, component_dir, dtype=dtype, device="cpu")
    parallelize(model, mesh)
    return model.to(device)

