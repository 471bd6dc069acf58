"""Ulysses sequence parallelism for MMDiT joint attention: image tokens sharded, the text stream replicated.

In a dual-stream (MMDiT) block, text and image tokens have their own weights but attend jointly over
[text, image]. Here only the image stream is split across the sequence-parallel ranks (it is the long one: 4096
tokens at 1024 px against a few hundred text tokens); every rank keeps the whole text stream and computes it
redundantly, which keeps the text-side layers unchanged. The joint attention call then:

1. exchanges image q/k/v sequence <-> heads (all-to-all): (B, L_img/w, H, D) -> (B, L_img_pad, H/w, D);
2. takes this rank's H/w heads of the (whole) text q/k/v;
3. attends over [text, image] with the padded image keys masked out (and the text padding mask, if any);
4. sends the image output back (all-to-all) and all-gathers the text output over heads, so every rank again holds
   the whole text stream with all heads.

`JointUlysses()` wraps a parameter-free module `f(txt_q, txt_k, txt_v, img_q, img_k, img_v, txt_mask=None,
img_mask=None) -> (txt_out, img_out)` on (B, L, H, D) tensors, where `img_mask` (1 or B, L_img) marks real image
keys. The model's `_sp_plan` also splits the image tokens and their rotary table before the first block and
gathers after the last token-wise layer (`SplitInput`, `SplitOutput`, `GatherOutput` of sequence_parallel.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from native_models.parallel import comm
from native_models.parallel.sequence_parallel import SequenceState

if TYPE_CHECKING:
    from native_models.parallel.plan import ParallelContext


class JointUlyssesAttention(nn.Module):
    """Joint [text, image] attention with the image stream sequence-sharded and the text stream replicated."""

    def __init__(self, inner: nn.Module, state: SequenceState) -> None:
        super().__init__()
        self.inner = inner
        self.state = state
        # Instance attributes, so a test can break one exchange and show that parity catches it:
        self.to_heads = comm.sequence_to_heads
        self.to_sequence = comm.heads_to_sequence
        self.gather_heads = comm.all_gather_cat
        self.mask_padded_keys = True

    def forward(
        self,
        txt_q: torch.Tensor, txt_k: torch.Tensor, txt_v: torch.Tensor,
        img_q: torch.Tensor, img_k: torch.Tensor, img_v: torch.Tensor,
        txt_mask: torch.Tensor | None = None, img_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Text (B, L_txt, H, D) whole, image (B, L_img/w, H, D) shards -> text (B, L_txt, H, D), image shard."""
        if img_mask is not None:
            raise ValueError("joint Ulysses attention builds the image key mask itself; got an external one")
        heads, world, group = img_q.shape[2], self.state.world, self.state.group
        if heads % world:
            raise ValueError(f"{heads} heads do not divide by sequence-parallel size {world}")
        if txt_q.shape[2] != heads:
            raise ValueError(f"text has {txt_q.shape[2]} heads, image {heads}: they must match")
        batch = img_q.shape[0]
        image = torch.cat((img_q, img_k, img_v), dim=0).transpose(1, 2)  # (3B, H, L_img/w, D)
        image = self.to_heads(image, group).transpose(1, 2)  # (3B, L_img_pad, H/w, D)
        img_q, img_k, img_v = image.split(batch, dim=0)
        mine = slice(self.state.rank * heads // world, (self.state.rank + 1) * heads // world)
        layout = self.state.current()
        key_mask = layout.key_mask(img_q.device) if self.mask_padded_keys else None  # (1, 1, 1, L_img_pad)
        txt_out, img_out = self.inner(
            txt_q[:, :, mine], txt_k[:, :, mine], txt_v[:, :, mine], img_q, img_k, img_v,
            txt_mask=txt_mask, img_mask=None if key_mask is None else key_mask.view(1, -1),
        )  # fmt: skip
        img_out = self.to_sequence(img_out.transpose(1, 2), group).transpose(1, 2)  # (B, L_img/w, H, D)
        txt_out = self.gather_heads(txt_out, group, 2)  # (B, L_txt, H, D), heads in rank order
        return txt_out, img_out


@dataclass(frozen=True)
class JointUlysses:
    """Wrap a parameter-free joint-attention module in `JointUlyssesAttention`."""

    def apply(self, module: nn.Module, name: str, ctx: ParallelContext) -> nn.Module:
        if any(True for _ in module.parameters()):
            raise ValueError(f"sp plan: JointUlysses wraps a parameter-free attention call, '{name}' has parameters")
        if ctx.sequence is None:
            raise ValueError("sequence-parallel style applied without a sequence-parallel context")
        return JointUlyssesAttention(module, ctx.sequence)


__all__ = ["JointUlysses", "JointUlyssesAttention"]
