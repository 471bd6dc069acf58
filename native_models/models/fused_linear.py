"""Several projections of one input run as one GEMM, without changing the checkpoint's parameter names.

A DiT computes q, k, v as separate `nn.Linear`s of the same input. One GEMM of width sum(N_i) is bit-identical
(each output column is the same dot product) and, at Wan 1.3B's width (1536) on two CPU threads, faster: fewer
calls and parallel regions (docs/speed.md, sections 3 and 6; at FLUX's width 3072 it measured no faster, so the
FLUX DiT does not use it). The parts stay ordinary `nn.Linear`s under Diffusers' names, so strict loading, state
dicts and tensor-parallel plans (which shard by parameter name) see no difference; their weights become
row-slices of one fused tensor (`param.data` re-pointed, the Parameter objects kept), so an in-place write to a
part (a loader, a fault) is a write to the fused tensor.

Fusing happens lazily, on the first call that can use it, and again whenever a part's weight no longer lives in
the fused tensor (a dtype or device cast, a tensor-parallel shard, an assigned state dict): each rank fuses its
own shards. The parts run one by one, as before, whenever the fused GEMM would hide something: a forward hook
on a part (the drill and trace recorders observe parts), a replaced `forward`, autograd wanting the parts'
gradients, or tracing by torch.compile (which fuses on its own).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_globals


def observed(module: nn.Module) -> bool:
    """True when skipping the module's own call would hide something: a forward hook or pre-hook on it (or on
    every module), or a forward replaced on the instance."""
    return bool(
        module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__
        or module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks
    )


def fusable(linears: Sequence[nn.Module]) -> bool:
    """Whether these modules may run as one GEMM right now (see the module docstring for when they may not)."""
    if len(linears) < 2 or torch.compiler.is_compiling():
        return False
    first = linears[0]
    if not isinstance(first, nn.Linear):
        return False
    grad = torch.is_grad_enabled()
    for linear in linears:
        if not isinstance(linear, nn.Linear) or type(linear).forward is not nn.Linear.forward or observed(linear):
            return False
        if (linear.bias is None) != (first.bias is None) or linear.in_features != first.in_features:
            return False
        if linear.weight.dtype != first.weight.dtype or linear.weight.device != first.weight.device:
            return False
        if grad and (linear.weight.requires_grad or (linear.bias is not None and linear.bias.requires_grad)):
            return False
    return True


class FusedLinears:
    """The fused weight (sum N_i, K) and bias of a fixed group of `nn.Linear`s, and the call that uses them.

    Held as a plain attribute (not a buffer: the state dict keeps only the parts' names). Call it with the parts
    each time; it checks that they still live in its tensor (one pointer comparison per part) and re-fuses if not.
    """

    def __init__(self) -> None:
        self.weight: torch.Tensor | None = None  # (sum N_i, K)
        self.bias: torch.Tensor | None = None  # (sum N_i,) or None
        self.sizes: tuple[int, ...] = ()
        self._views: tuple[torch.Tensor | None, ...] = ()  # what each part's weight and bias must point at

    def __call__(self, x: torch.Tensor, linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, ...]:
        """x (..., K) -> one output (..., N_i) per part, in order: one GEMM when fusable, else each part's call."""
        if not fusable(linears):
            return tuple(linear(x) for linear in linears)
        weight = self.weight if self.is_current(linears) else self.fuse(linears)
        return tuple(part.contiguous() for part in F.linear(x, weight, self.bias).split(self.sizes, dim=-1))

    @staticmethod
    def _tensors(linears: Sequence[nn.Linear]) -> list[torch.Tensor | None]:
        return [t for linear in linears for t in (linear.weight, linear.bias)]

    def is_current(self, linears: Sequence[nn.Linear]) -> bool:
        """Every part's weight and bias are still the slices of the fused tensors handed out by `fuse`."""
        tensors = self._tensors(linears)
        if self.weight is None or len(tensors) != len(self._views):
            return False
        for tensor, view in zip(tensors, self._views, strict=True):
            if (tensor is None) != (view is None):
                return False
            if tensor is not None and view is not None and (
                tensor.data_ptr() != view.data_ptr() or tensor.shape != view.shape or tensor.dtype != view.dtype
                or tensor.device != view.device
            ):
                return False
        return True

    def fuse(self, linears: Sequence[nn.Linear]) -> torch.Tensor:
        """Concatenate the parts' weights (and biases), re-point each part at its slice (the old storage is freed
        unless held elsewhere); returns the fused weight (sum N_i, K)."""
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, usable outside inference mode too
            self.sizes = tuple(linear.out_features for linear in linears)
            weight = torch.cat([linear.weight.detach() for linear in linears])  # (sum N_i, K)
            for linear, part in zip(linears, weight.split(self.sizes), strict=True):
                linear.weight.data = part
            biases = [linear.bias for linear in linears if linear.bias is not None]  # all or none (fusable)
            self.bias = torch.cat([b.detach() for b in biases]) if biases else None  # (sum N_i,)
            if self.bias is not None:
                for bias, part in zip(biases, self.bias.split(self.sizes), strict=True):
                    bias.data = part
        self.weight = weight
        self._views = tuple(t.detach() if t is not None else None for t in self._tensors(linears))
        return weight
