"""What the Qwen2.5-VL and Qwen3 text-encoder parity tests share: token batches with padding on either side, the
reference runs (transformers, SDPA and eager attention), and the bf16 floor.

The bf16 floor is measured, not assumed: transformers' own model in bf16 with its SDPA attention against the same
model with its eager attention (softmax in fp32, probabilities rounded to bf16 before the value product) is two
correct bf16 implementations of one checkpoint. The native bf16 output must stay within BF16_FLOOR_FACTOR times
that difference of the SDPA reference (PyTorch's compile accuracy check uses the same idea with 2x; field notes
section 6). Both are taken over real tokens only: a left-padded query row that may see no key is zero under SDPA
and a uniform average under eager attention, a difference of definition, not of rounding, and pipelines drop
those rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from numerics import rel_l2

BF16_FLOOR_FACTOR = 2.0

LENGTH = 11
# (real tokens, padding side) per row: a full row, right padding, left padding.
ROWS = ((LENGTH, "right"), (6, "right"), (8, "left"))
PAD_ID = 0


def token_batch(vocab: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, L) and the 0/1 attention mask, padded with PAD_ID on the side each row names."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(ROWS), LENGTH), generator=gen)
    mask = torch.zeros_like(ids)
    for row, (length, side) in enumerate(ROWS):
        real = slice(0, length) if side == "right" else slice(LENGTH - length, LENGTH)
        mask[row, real] = 1
    ids[mask == 0] = PAD_ID
    return ids, mask


@dataclass
class Comparison:
    """Worst figures over a list of paired hidden states."""

    rel_l2: float
    max_abs: float
    worst_index: int


def compare_states(
    native: tuple[torch.Tensor, ...], reference: tuple[torch.Tensor, ...], tokens: torch.Tensor | None = None
) -> Comparison:
    """Worst rel L2 and max abs difference over all hidden states (each must have the reference's shape/dtype),
    over the token positions where `tokens` (B, L) is true (all positions when None)."""
    assert len(native) == len(reference), f"{len(native)} hidden states, reference has {len(reference)}"
    worst = Comparison(0.0, 0.0, -1)
    for i, (a, b) in enumerate(zip(native, reference, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"state {i}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        if tokens is not None:
            a, b = a[tokens.bool()], b[tokens.bool()]
        err = rel_l2(a, b, 1e-30)
        if err >= worst.rel_l2:
            worst = Comparison(err, max(worst.max_abs, (a.double() - b.double()).abs().max().item()), i)
        else:
            worst.max_abs = max(worst.max_abs, (a.double() - b.double()).abs().max().item())
    return worst


def reference_states(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """transformers' `hidden_states` (embeddings, each layer, last one final-normed)."""
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": mask}
        return tuple(model(input_ids=ids, output_hidden_states=True, **kwargs).hidden_states)


def native_states(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = model(ids, mask, output_hidden_states=True)
    assert out.hidden_states is not None
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    return out.hidden_states
