"""What a parallelized model carries: its mesh and, under sequence parallelism, the layout of the forward in progress.

Shared by the plan that attaches it (plan.py) and the styles that read it (sequence_parallel.py,
tensor_parallel.py, capture.py), so none of them imports another for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from native_models.parallel import comm
from native_models.parallel.mesh import ParallelMesh


@dataclass(frozen=True)
class SequenceLayout:
    """How a sequence of `length` tokens is split over `world` ranks: zero-padded, then contiguous shards."""

    length: int
    world: int
    rank: int

    @property
    def padded(self) -> int:
        return -(-self.length // self.world) * self.world

    @property
    def shard(self) -> int:
        return self.padded // self.world

    @property
    def pad(self) -> int:
        return self.padded - self.length

    def split(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The full tensor (length along `dim`) -> this rank's shard (`shard` along `dim`), padding with zeros."""
        if x.shape[dim] != self.length:
            raise ValueError(f"cannot split dim {dim} of {tuple(x.shape)}: the sequence has {self.length} tokens")
        if self.pad:
            pad_shape = list(x.shape)
            pad_shape[dim] = self.pad
            x = torch.cat((x, x.new_zeros(pad_shape)), dim=dim)
        return x.narrow(dim, self.rank * self.shard, self.shard)

    def strip(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """A gathered tensor (`padded` along `dim`) without its padding."""
        if x.shape[dim] != self.padded:
            raise ValueError(f"cannot strip dim {dim} of {tuple(x.shape)}: expected {self.padded} padded tokens")
        return x.narrow(dim, 0, self.length)

    def key_mask(self, device: torch.device) -> torch.Tensor | None:
        """Boolean (1, 1, 1, padded) mask, True for real keys; None when nothing is padded."""
        if not self.pad:
            return None
        return (torch.arange(self.padded, device=device) < self.length).view(1, 1, 1, -1)


class SequenceState:
    """The layout of the forward in progress, set by the split hooks and read by attention and the gather."""

    def __init__(self, group: dist.ProcessGroup | None, world: int, rank: int) -> None:
        self.group = group
        self.world = world
        self.rank = rank
        self.layout: SequenceLayout | None = None

    def split(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        self.layout = SequenceLayout(x.shape[dim], self.world, self.rank)
        return self.layout.split(x, dim)

    def current(self) -> SequenceLayout:
        if self.layout is None:
            raise RuntimeError("sequence-parallel layout unknown: no split hook has run in this forward")
        return self.layout

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's shard -> the full sequence (same on every rank), padding stripped."""
        layout = self.current()
        if x.shape[dim] != layout.shard:
            raise ValueError(f"dim {dim} of {tuple(x.shape)} is not a shard of {layout.shard} tokens")
        return layout.strip(comm.all_gather_cat(x, self.group, dim), dim)


@dataclass
class ParallelContext:
    """The mesh a model was parallelized for, and its sequence-parallel state (None without SP)."""

    mesh: ParallelMesh
    sequence: SequenceState | None = None
