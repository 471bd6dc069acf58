"""The published-config builders' random fill (references/common/published_build.py), on a small T5 built the way
the builders build theirs: on the meta device, then every saved tensor drawn once."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5EncoderModel

from references.common import published_build
from references.common.published_build import DefaultDtype, fill_random, unallocated

T5 = {"vocab_size": 96, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_heads": 4, "num_layers": 1,
      "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


def filled_t5(seed: int) -> T5EncoderModel:
    with DefaultDtype(torch.bfloat16), unallocated():
        model = T5EncoderModel(T5Config(**T5))
    return fill_random(model, seed)


def test_every_saved_tensor_is_drawn_deterministically_and_none_is_constant() -> None:
    first, again, other = (filled_t5(seed).state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert all(not torch.equal(first[name], other[name]) for name in first)
    constant = [name for name, tensor in first.items() if tensor.float().std() == 0]
    assert not constant, constant
    assert {tensor.dtype for tensor in first.values()} == {torch.bfloat16}


def test_tied_embeddings_stay_one_tensor() -> None:
    """T5 reads its input embedding as encoder.embed_tokens and saves it as shared: drawing the two apart made
    transformers load one and the native encoder the other (encode/prompt_embeds rel_l2 1.41)."""
    model = filled_t5(0)
    assert torch.equal(model.shared.weight, model.encoder.embed_tokens.weight)


def test_embedding_rows_past_the_drawn_ones_repeat_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(published_build, "DRAWN_ROWS", 40)
    table = filled_t5(0).shared.weight
    assert torch.equal(table[40:80], table[:40]) and torch.equal(table[80:], table[:16])
    assert len({tuple(row.tolist()) for row in table[:40]}) == 40
