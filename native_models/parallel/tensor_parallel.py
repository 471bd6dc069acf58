"""Tensor parallelism: the plan styles and the sharded layers they install.

A model's `_tp_plan` maps module-path patterns to these styles. Applying a style takes the full (loaded) module,
keeps this rank's shard of its weights, and returns a drop-in replacement with the same parameter names:
- `Colwise`: output features split (input replicated, output sharded by heads / FFN hidden units); no traffic.
- `Rowwise`: input features split (input sharded, output replicated): partial products all-reduced, bias once.
- `HeadShardedRMSNorm`: an RMSNorm over all heads whose input is head-sharded: the sum of squares is
  all-reduced, so every rank normalises by the global mean square (Wan's q/k norm spans all heads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from native_models.parallel import comm

if TYPE_CHECKING:
    from native_models.parallel.context import ParallelContext

M = TypeVar("M", bound=nn.Module)


def shard_range(total: int, rank: int, size: int, what: str) -> slice:
    """This rank's contiguous slice of `total` units split `size` ways (must divide evenly)."""
    if total % size:
        raise ValueError(f"{what}: {total} does not divide by tensor-parallel size {size}")
    step = total // size
    return slice(rank * step, (rank + 1) * step)


def _typed(module: nn.Module, kind: type[M], name: str, style: str) -> M:
    """`module` as a `kind`, or a ValueError naming the module and style (subclasses are not accepted)."""
    if type(module) is not kind:
        raise ValueError(f"tp plan: '{name}' is {type(module).__name__}, but style {style} needs {kind.__name__}")
    return module  # type: ignore[return-value]


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)  # clone: lets the full tensor be freed


class ColwiseLinear(nn.Linear):
    """nn.Linear holding rows [r*n, (r+1)*n) of the full weight and bias: y_shard = x @ W_shard^T + b_shard."""

    @classmethod
    def shard(cls, linear: nn.Linear, rank: int, size: int, name: str) -> ColwiseLinear:
        rows = shard_range(linear.out_features, rank, size, f"'{name}' out_features")
        weight = linear.weight
        sharded = cls(linear.in_features, rows.stop - rows.start, bias=linear.bias is not None, device="meta")
        sharded.weight = _param(weight[rows])
        if linear.bias is not None:
            sharded.bias = _param(linear.bias[rows])
        return sharded


class RowwiseLinear(nn.Linear):
    """nn.Linear holding columns [r*n, (r+1)*n) of the full weight: y = all_reduce(x_shard @ W_shard^T) + b."""

    group: dist.ProcessGroup | None

    @classmethod
    def shard(
        cls, linear: nn.Linear, rank: int, size: int, group: dist.ProcessGroup | None, name: str
    ) -> RowwiseLinear:
        cols = shard_range(linear.in_features, rank, size, f"'{name}' in_features")
        sharded = cls(cols.stop - cols.start, linear.out_features, bias=linear.bias is not None, device="meta")
        sharded.weight = _param(linear.weight[:, cols])
        if linear.bias is not None:
            sharded.bias = _param(linear.bias)  # replicated, added once after the reduction
        sharded.group = group
        return sharded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = comm.all_reduce_sum(F.linear(x, self.weight), self.group)
        return y if self.bias is None else y + self.bias


class ShardedRMSNorm(nn.Module):
    """RMSNorm over `full_dim` channels of which this rank holds a contiguous shard (weight shard included).

    Mirrors torch's CPU rms_norm (bitwise at TP=1 in fp32 and bf16): everything in float32, one cast at the end.
    """

    def __init__(self, weight: torch.Tensor, full_dim: int, eps: float, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.weight = _param(weight)
        self.full_dim = full_dim
        self.eps = eps
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        sum_sq = comm.all_reduce_sum(xf.pow(2).sum(dim=-1, keepdim=True), self.group)  # (..., 1) over all heads
        return (xf * torch.rsqrt(sum_sq / self.full_dim + self.eps) * self.weight.float()).to(x.dtype)


@dataclass(frozen=True)
class Colwise:
    """Split an nn.Linear's output features across the TP ranks."""

    def apply(self, module: nn.Module, name: str, ctx: ParallelContext) -> nn.Module:
        linear = _typed(module, nn.Linear, name, "Colwise")
        return ColwiseLinear.shard(linear, ctx.mesh.tp_rank, ctx.mesh.tp, name)


@dataclass(frozen=True)
class Rowwise:
    """Split an nn.Linear's input features across the TP ranks and all-reduce its output."""

    def apply(self, module: nn.Module, name: str, ctx: ParallelContext) -> nn.Module:
        linear = _typed(module, nn.Linear, name, "Rowwise")
        return RowwiseLinear.shard(linear, ctx.mesh.tp_rank, ctx.mesh.tp, ctx.mesh.tp_group, name)


@dataclass(frozen=True)
class HeadShardedRMSNorm:
    """An nn.RMSNorm over all heads, fed the column-parallel (head-sharded) output of a projection."""

    def apply(self, module: nn.Module, name: str, ctx: ParallelContext) -> nn.Module:
        norm = _typed(module, nn.RMSNorm, name, "HeadShardedRMSNorm")
        if norm.weight is None or len(norm.normalized_shape) != 1 or norm.eps is None:
            raise ValueError(f"tp plan: '{name}' must be an affine RMSNorm over one dim with a set eps, got {norm}")
        full = norm.normalized_shape[0]
        channels = shard_range(full, ctx.mesh.tp_rank, ctx.mesh.tp, f"'{name}' channels")
        return ShardedRMSNorm(norm.weight[channels], full, norm.eps, ctx.mesh.tp_group)
