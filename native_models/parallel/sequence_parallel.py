"""Sequence parallelism (Ulysses): the plan styles, the sequence layout and the all-to-all attention wrapper.

The token sequence of length L is padded with zeros to a multiple of the SP size w and split into w contiguous
shards of L_pad / w tokens. Everything token-wise (norms, projections, FFN, cross-attention to the whole text)
runs on the shard. Self-attention exchanges sequence for heads (all-to-all), attends over the full padded
sequence with the padded keys masked out, and exchanges back. After the last token-wise layer the shards are
gathered and the padding stripped. A model's `_sp_plan` says where each of these happens:
- `SplitInput(arg, dim)`: split a module's positional input (the token stream entering the first block);
- `SplitOutput(dim)`: split a module's output (a tensor or a tuple of tensors, e.g. the rotary tables);
- `Ulysses()`: wrap a parameter-free attention module `f(q, k, v, attn_mask=None)` on (B, H, L, D) tensors;
- `GatherOutput(dim)`: gather a module's output to the full sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from native_models.parallel import comm
from native_models.parallel.context import ParallelContext, SequenceState


def _state(ctx: ParallelContext) -> SequenceState:
    if ctx.sequence is None:
        raise ValueError("sequence-parallel style applied without a sequence-parallel context")
    return ctx.sequence


@dataclass(frozen=True)
class SplitInput:
    """Split positional input `arg` of the module along `dim` before it runs."""

    arg: int
    dim: int

    def apply(self, module: nn.Module, name: str, ctx: ParallelContext) -> None:
        state, arg, dim = _state(ctx), self.arg, self.dim

        def hook(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            if len(args) <= arg or not isinstance(args[arg], torch.Tensor):
                raise ValueError(f"sp plan: '{name}' was not called with a tensor as positional input {arg}")
            return (*args[:arg], state.split(args[arg], dim), *args[arg + 1 :])

        module.register_forward_pre_hook(hook)


@dataclass(frozen=True)
class SplitOutput:
    """Split the module's output (a tensor, or each tensor of a tuple / NamedTuple) along `dim`."""

    dim: int

    def apply(self, module: nn.Module, name: str, ctx: ParallelContext) -> None:
        state, dim = _state(ctx), self.dim

        def hook(_: nn.Module, __: Any, output: Any) -> Any:
            if isinstance(output, torch.Tensor):
                return state.split(output, dim)
            if isinstance(output, tuple) and all(isinstance(t, torch.Tensor) for t in output):
                parts = [state.split(t, dim) for t in output]
                return type(output)(*parts) if hasattr(output, "_fields") else tuple(parts)
            raise ValueError(f"sp plan: '{name}' returned {type(output).__name__}, not a tensor or tuple of tensors")

        module.register_forward_hook(hook)


@dataclass(frozen=True)
class GatherOutput:
    """Gather the module's sequence-sharded output along `dim` into the full sequence, padding stripped."""

    dim: int

    def apply(self, module: nn.Module, name: str, ctx: ParallelContext) -> None:
        state, dim = _state(ctx), self.dim

        def hook(_: nn.Module, __: Any, output: Any) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"sp plan: '{name}' returned {type(output).__name__}, not a tensor")
            return state.gather(output, dim)

        module.register_forward_hook(hook)


class UlyssesAttention(nn.Module):
    """Attention over a sequence-sharded input: all-to-all to head shards, attend, all-to-all back.

    q, k, v (B, H, L/w, D) -> (B, H/w, L_pad, D) -> inner attention with padded keys masked -> (B, H, L/w, D).
    """

    def __init__(self, inner: nn.Module, state: SequenceState) -> None:
        super().__init__()
        self.inner = inner
        self.state = state
        # Instance attributes, so a fault catalog can break one instance without patching anything global:
        self.to_heads = comm.sequence_to_heads  # the exchange before attention
        self.to_sequence = comm.heads_to_sequence  # and after it
        self.mask_padded_keys = True  # False lets the zero-padded tokens take part as keys (a fault)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("Ulysses attention does not take an external attention mask")
        if q.shape[1] % self.state.world:
            raise ValueError(f"{q.shape[1]} heads do not divide by sequence-parallel size {self.state.world}")
        group = self.state.group
        qkv = self.to_heads(torch.cat((q, k, v), dim=0), group)  # one exchange for all three: (3B, H/w, L_pad, D)
        q, k, v = qkv.chunk(3, dim=0)
        mask = self.state.current().key_mask(q.device) if self.mask_padded_keys else None
        return self.to_sequence(self.inner(q, k, v, attn_mask=mask), group)  # (B, H, L/w, D)


@dataclass(frozen=True)
class Ulysses:
    """Wrap a parameter-free attention module in `UlyssesAttention`."""

    def apply(self, module: nn.Module, name: str, ctx: ParallelContext) -> nn.Module:
        if any(True for _ in module.parameters()):
            raise ValueError(f"sp plan: Ulysses wraps a parameter-free attention call, but '{name}' has parameters")
        return UlyssesAttention(module, _state(ctx))
