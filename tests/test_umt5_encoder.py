"""Parity of the native UMT5 encoder (Wan 2.1's text encoder) with transformers' `UMT5EncoderModel`.

UMT5 differs from T5 in one place: every block owns a relative-position-bias table. The reference is built with a
fixed seed, saved with `save_pretrained` and loaded back, and the native model is loaded from the same folder
through the project loader (strict, transformers' parameter names). fp32 must agree to float rounding; half
precision is compared by cosine; with torch's own SDPA kernel choice the two are bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from numerics import HALF_COSINE, assert_fp32_close, cosine

from native_models.attention import attention_backend
from native_models.errors import CheckpointError
from native_models.loader import load_component
from native_models.models.t5_encoder import T5EncoderHParams, T5EncoderModel, UMT5EncoderModel

VOCAB = 120
LENGTH = 26  # offsets reach beyond max_distance (20): the log-spaced buckets are exercised
PROMPT_LENGTHS = (26, 9, 1)  # a full row, a padded row, a row holding only its end-of-sequence token


def umt5_config(**overrides: object) -> transformers.UMT5Config:
    values: dict = dict(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=3,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    values.update(overrides)
    return transformers.UMT5Config(**values)


def umt5_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded with id 0 after each prompt's length, and the matching 0/1 mask (as WanPipeline's
    tokenizer call gives them); the last real token of each row is the end-of-sequence id 1."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(2, VOCAB, (len(PROMPT_LENGTHS), LENGTH), generator=gen)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(PROMPT_LENGTHS):
        ids[row, length - 1] = 1
        ids[row, length:] = 0
        mask[row, :length] = 1
    return ids, mask


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    target = tmp_path_factory.mktemp("umt5") / "text_encoder"
    transformers.UMT5EncoderModel(umt5_config()).save_pretrained(target)
    return target


def reference(folder: Path, dtype: torch.dtype = torch.float32) -> transformers.UMT5EncoderModel:
    return transformers.UMT5EncoderModel.from_pretrained(folder, dtype=dtype).eval()


def test_every_block_owns_a_bias_table(folder: Path) -> None:
    native = load_component(UMT5EncoderModel, folder)  # strict: every reference tensor has a native home
    assert native.hp.bias_per_layer
    tables = [name for name, _ in native.named_parameters() if name.endswith("relative_attention_bias.weight")]
    assert tables == [f"encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight" for i in range(3)]
    # The tables differ, and each one is used: zeroing block 2's table changes the output.
    bias_1, bias_2 = (native.encoder.block[i].layer[0].SelfAttention.relative_attention_bias.weight for i in (1, 2))
    assert not torch.equal(bias_1, bias_2)
    ids, mask = umt5_inputs()
    with torch.no_grad():
        before = native(ids, attention_mask=mask).last_hidden_state
        native.encoder.block[2].layer[0].SelfAttention.relative_attention_bias.weight.zero_()
        after = native(ids, attention_mask=mask).last_hidden_state
    assert (before - after).abs().max() > 1e-3


def test_umt5_fp32_parity(folder: Path) -> None:
    ref = reference(folder)
    native = load_component(UMT5EncoderModel, folder)
    ids, mask = umt5_inputs()
    for name, kwargs in (("padding mask", {"attention_mask": mask}), ("no mask", {})):
        with torch.no_grad():
            expected = ref(ids, output_hidden_states=True, **kwargs)
            got = native(ids, output_hidden_states=True, **kwargs)
        assert_fp32_close(f"{name}: last_hidden_state", got.last_hidden_state, expected.last_hidden_state)
        assert got.hidden_states is not None and len(got.hidden_states) == len(expected.hidden_states) == 4
        for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states, strict=True)):
            assert_fp32_close(f"{name}: hidden_states[{i}]", a, b)
    # The mask matters: padded keys change the padded rows' real tokens.
    with torch.no_grad():
        masked = native(ids, attention_mask=mask).last_hidden_state
        unmasked = native(ids).last_hidden_state
    assert (masked[1, : PROMPT_LENGTHS[1]] - unmasked[1, : PROMPT_LENGTHS[1]]).abs().max() > 1e-3
    assert torch.equal(masked[0], unmasked[0])  # the full row has nothing to mask


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_umt5_half_parity(folder: Path, dtype: torch.dtype) -> None:
    ref = reference(folder, dtype)
    native = load_component(UMT5EncoderModel, folder, dtype=dtype)
    # transformers keeps `wo` in fp32 under fp16 only (`_keep_in_fp32_modules`); the native model must agree.
    for block, ref_block in zip(native.encoder.block, ref.encoder.block, strict=True):
        assert block.layer[1].DenseReluDense.wo.weight.dtype == ref_block.layer[1].DenseReluDense.wo.weight.dtype
        assert block.layer[0].SelfAttention.relative_attention_bias.weight.dtype == dtype
    ids, mask = umt5_inputs()
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).last_hidden_state
        got = native(ids, attention_mask=mask).last_hidden_state
    assert got.dtype == expected.dtype and torch.isfinite(got).all()
    assert cosine(got, expected) >= HALF_COSINE, f"cosine {cosine(got, expected):.6f}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_umt5_bitwise_under_reference_attention_kernel(folder: Path, dtype: torch.dtype) -> None:
    """With torch's own SDPA kernel choice (what transformers calls) every op is the reference's op in the
    reference's order and dtype, so the outputs are bit-identical."""
    ref = reference(folder, dtype)
    native = load_component(UMT5EncoderModel, folder, dtype=dtype)
    ids, mask = umt5_inputs()
    with torch.no_grad(), attention_backend("sdpa"):
        assert torch.equal(native(ids, attention_mask=mask).last_hidden_state,
                           ref(ids, attention_mask=mask).last_hidden_state)  # fmt: skip


def test_model_type_must_match_the_class(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'umt5'"):
        UMT5EncoderModel.from_config(transformers.T5Config(vocab_size=VOCAB).to_dict())
    with pytest.raises(ValueError, match="'t5' or 'mt5'"):
        T5EncoderModel.from_config(umt5_config().to_dict())
    with pytest.raises(CheckpointError, match="model_type"):
        load_component(T5EncoderModel, folder)


def test_umt5_defaults_for_missing_keys() -> None:
    """Keys a config.json leaves out take UMT5Config's defaults, not T5Config's."""
    hp = T5EncoderHParams.from_config({"model_type": "umt5"}, model_types=("umt5",))
    expected = transformers.UMT5Config()
    assert (hp.vocab_size, hp.d_ff, hp.num_layers, hp.num_heads, hp.gated, hp.act) == (
        expected.vocab_size, expected.d_ff, expected.num_layers, expected.num_heads, True, expected.dense_act_fn,
    )  # fmt: skip
