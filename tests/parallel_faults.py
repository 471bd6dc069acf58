"""Shared by the multi-rank DiT tests (tests/test_wan_parallel.py, tests/test_qwenimage_parallel.py): planting a
shard bug by setting attributes on every module of one parallel class, and which planted bugs a topology shows."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def mutate(kind: type, **attributes: object) -> Callable[[torch.nn.Module], None]:
    """A mutation setting `attributes` on every `kind` module of a model (e.g. an all-reduce group to None)."""
    def apply(model: torch.nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, kind):
                for name, value in attributes.items():
                    setattr(module, name, value)

    return apply


def faults_for(names: Iterable[str], tp: int, sp: int) -> list[str]:
    """The planted bugs a topology can show: `sp_*` under sequence parallelism, `tp_*` under tensor parallelism."""
    return [name for name in names if (name.startswith("sp_") and sp > 1) or (name.startswith("tp_") and tp > 1)]
