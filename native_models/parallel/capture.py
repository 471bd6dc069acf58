"""Sharding-aware capture: turn a rank's shard of an activation into the canonical full tensor.

Under sequence parallelism, every token-wise activation between the split and the gather holds only this rank's
tokens (plus padding on the last ranks); under tensor parallelism, activations inside attention and the FFN hold
only this rank's heads / hidden units. A trace records canonical tensors only, so a 2-rank trace compares
directly with a 1-rank trace (and with Diffusers). The DiT's own output is already gathered by its plan.
"""

from __future__ import annotations

import torch

from native_models.parallel import comm
from native_models.parallel.context import ParallelContext


def gather_sequence(x: torch.Tensor, ctx: ParallelContext | None, dim: int = 1) -> torch.Tensor:
    """A sequence shard of the current forward (`dim` = token axis) -> all tokens, padding stripped.

    Collective: every rank of the sequence-parallel group must call it. Without SP, returns x unchanged.
    """
    if ctx is None or ctx.sequence is None:
        return x
    return ctx.sequence.gather(x, dim)


def gather_tensor_parallel(x: torch.Tensor, ctx: ParallelContext | None, dim: int = -1) -> torch.Tensor:
    """A head / hidden-unit shard (column-parallel output, `dim` = feature axis) -> all features, in rank order.

    Collective over the tensor-parallel group. Without TP, returns x unchanged.
    """
    if ctx is None or ctx.mesh.tp == 1:
        return x
    return comm.all_gather_cat(x, ctx.mesh.tp_group, dim)
