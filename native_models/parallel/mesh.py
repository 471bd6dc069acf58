"""Process-group set-up: the world from torchrun's environment, laid out as a 2D mesh (sequence x tensor).

Global rank r sits at mesh position (sp_rank, tp_rank) = (r // tp, r % tp): the ranks of one tensor-parallel
group are adjacent (TP all-reduces every layer, so it gets the closest links), and each sequence-parallel group
takes one rank from every TP group with the same tp_rank. gloo on the CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from native_models.errors import NativeError


class ParallelError(NativeError):
    """A parallel topology that cannot run: sizes that do not multiply to the world, missing launcher variables."""


@dataclass(frozen=True)
class ParallelMesh:
    """This rank's place in a tp x sp mesh, and the process groups it talks in (None when a size is 1)."""

    tp: int = 1
    sp: int = 1
    rank: int = 0
    tp_group: dist.ProcessGroup | None = None
    sp_group: dist.ProcessGroup | None = None

    @property
    def world(self) -> int:
        return self.tp * self.sp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def sp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def is_parallel(self) -> bool:
        return self.world > 1


SINGLE = ParallelMesh()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ParallelError(f"environment variable {name}={value!r} is not an integer") from None


def check_sizes(tp: int, sp: int, world: int) -> None:
    """Raise ParallelError unless tp and sp are positive and tp * sp equals the world size."""
    if tp < 1 or sp < 1:
        raise ParallelError(f"parallel sizes must be positive, got tp={tp}, sp={sp}")
    if tp * sp != world:
        raise ParallelError(f"tp={tp} x sp={sp} = {tp * sp} ranks, but the launcher started WORLD_SIZE={world}")


def default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_parallel(
    tp: int = 1,
    sp: int = 1,
    device: str | torch.device = "cpu",
    backend: str | None = None,
    timeout_s: float = 600.0,
) -> ParallelMesh:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) as a tp x sp mesh.

    A single process with tp = sp = 1 needs no launcher and gets `SINGLE`. On CUDA the rank's device is
    LOCAL_RANK. Every rank must call this with the same sizes (the groups are created collectively).
    """
    world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    check_sizes(tp, sp, world)
    if world == 1:
        return SINGLE
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing and not dist.is_initialized():
        raise ParallelError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: launch with torchrun")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    if not dist.is_initialized():
        dist.init_process_group(
            backend or default_backend(device), rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
    return build_mesh(tp, sp, rank)


def build_mesh(tp: int, sp: int, rank: int) -> ParallelMesh:
    """Create the TP and SP groups (collectively: every rank creates every group, in the same order)."""
    tp_group = sp_group = None
    for sp_index in range(sp):
        ranks = [sp_index * tp + t for t in range(tp)]
        group = dist.new_group(ranks) if tp > 1 else None
        if rank in ranks:
            tp_group = group
    for tp_index in range(tp):
        ranks = [s * tp + tp_index for s in range(sp)]
        group = dist.new_group(ranks) if sp > 1 else None
        if rank in ranks:
            sp_group = group
    return ParallelMesh(tp=tp, sp=sp, rank=rank, tp_group=tp_group, sp_group=sp_group)


def destroy_parallel() -> None:
    """Leave the process group (a no-op for a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()
