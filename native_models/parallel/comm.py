"""The few collectives the parallel layers use, on plain tensors (gloo and NCCL both implement them).

Kept apart so that the layout arithmetic of each exchange (which chunk goes to which rank) is in one place and
can be checked, and so a test can swap one out to prove that a wrong exchange is caught.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_size(group: dist.ProcessGroup | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


def all_reduce_sum(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Sum x over the group, in place; returns x."""
    if group_size(group) > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def all_gather_cat(x: torch.Tensor, group: dist.ProcessGroup | None, dim: int) -> torch.Tensor:
    """Concatenate every rank's x along `dim`, in group-rank order."""
    size = group_size(group)
    if size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=dim)


def _all_to_all(send: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """send (world, ...): chunk j goes to rank j; returns recv (world, ...): chunk i came from rank i."""
    send = send.contiguous()  # before empty_like, which would copy a permuted layout's strides into recv
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Ulysses forward exchange: (B, H, L/w, D) sequence shard -> (B, H/w, L, D) head shard.

    Rank j receives heads [j*H/w, (j+1)*H/w) of every rank's tokens, concatenated in rank (= sequence) order.
    """
    size = group_size(group)
    if size == 1:
        return x
    b, h, l_shard, d = x.shape
    send = x.reshape(b, size, h // size, l_shard, d).transpose(0, 1)  # (w, B, H/w, L/w, D): heads chunk j -> rank j
    recv = _all_to_all(send, group)  # (w, B, H/w, L/w, D): chunk i = rank i's tokens
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * l_shard, d)


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Ulysses backward exchange: (B, H/w, L, D) head shard -> (B, H, L/w, D) sequence shard (inverse of above)."""
    size = group_size(group)
    if size == 1:
        return x
    b, h_shard, length, d = x.shape
    send = x.reshape(b, h_shard, size, length // size, d).permute(2, 0, 1, 3, 4)  # (w, B, H/w, L/w, D)
    recv = _all_to_all(send, group)  # (w, B, H/w, L/w, D): chunk i = heads of rank i
    return recv.transpose(0, 1).reshape(b, size * h_shard, length // size, d)
