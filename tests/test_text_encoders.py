"""Parity of the native CLIP text and T5 encoders with transformers, on tiny random checkpoints.

The transformers model is the reference: it is built with a fixed seed, saved with `save_pretrained`, and the
native model is loaded from that folder through the project loader, so key names and config parsing are tested
with the numerics. fp32 must agree to float rounding (relative L2 <= 1e-6); bf16 runs both sides in bf16, the
reference loaded as Diffusers loads it (`from_pretrained(dtype=...)`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from numerics import assert_fp32_close, assert_half_close
from safetensors.torch import save_file

from native_models.attention import attention_backend
from native_models.errors import CheckpointError
from native_models.loader import load_component, load_state_dict
from native_models.models.clip_text import CLIPTextHParams, CLIPTextModel, CLIPTextModelWithProjection
from native_models.models.t5_encoder import T5EncoderHParams, T5EncoderModel

VOCAB = 300
EOS = 299
PAD = 1


# ----------------------------------------------------------------------------------------------------------- CLIP


def clip_config(hidden_act: str = "quick_gelu", eos_token_id: int = EOS) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=37,
        projection_dim=24,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        bos_token_id=VOCAB - 2,
        eos_token_id=eos_token_id,
        pad_token_id=PAD,
    )


def clip_input_ids() -> torch.Tensor:
    """Three prompts of different lengths, bos ... eos then eos-padding (as Diffusers' CLIP tokenizers pad), so
    the pooled token must be the *first* eos; one row of full length 77 and no padding."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB - 2, (3, 77), generator=gen)
    ids[:, 0] = VOCAB - 2
    for row, length in enumerate((5, 40, 77)):
        ids[row, length - 1 :] = EOS
    return ids


def save_reference(model: transformers.PreTrainedModel, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("hidden_act", "eos_token_id", "with_projection"),
    [
        ("quick_gelu", EOS, False),
        ("gelu", 2, False),  # legacy configs (SD 1.x / SDXL): pooled at the largest token id
        ("gelu_new", EOS, True),
        ("gelu_pytorch_tanh", EOS, False),
    ],
)
def test_clip_text_fp32_parity(tmp_path: Path, hidden_act: str, eos_token_id: int, with_projection: bool) -> None:
    torch.manual_seed(0)
    ref_cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    ref = ref_cls(clip_config(hidden_act, eos_token_id)).eval()
    folder = save_reference(ref, tmp_path / "text_encoder")
    native = load_component(CLIPTextModelWithProjection if with_projection else CLIPTextModel, folder)

    ids = clip_input_ids()
    with torch.no_grad():
        expected = ref(ids, output_hidden_states=True)
        got = native(ids, output_hidden_states=True)
        got_short = native(ids[:, :20])
        expected_short = ref(ids[:, :20])

    assert_fp32_close("last_hidden_state", got.last_hidden_state, expected.last_hidden_state)
    assert got.hidden_states is not None and len(got.hidden_states) == len(expected.hidden_states) == 4
    for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states, strict=True)):
        assert_fp32_close(f"hidden_states[{i}]", a, b)
    if with_projection:
        assert_fp32_close("text_embeds", got.text_embeds, expected.text_embeds)
    else:
        assert_fp32_close("pooler_output", got.pooler_output, expected.pooler_output)
        assert_fp32_close("pooler_output (L=20)", got_short.pooler_output, expected_short.pooler_output)
    assert_fp32_close("last_hidden_state (L=20)", got_short.last_hidden_state, expected_short.last_hidden_state)
    assert got_short.hidden_states is None


def test_clip_text_bf16_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = save_reference(transformers.CLIPTextModel(clip_config()), tmp_path / "text_encoder")
    ref = transformers.CLIPTextModel.from_pretrained(folder, dtype=torch.bfloat16).eval()
    native = load_component(CLIPTextModel, folder, dtype=torch.bfloat16)
    ids = clip_input_ids()
    with torch.no_grad():
        expected = ref(ids, output_hidden_states=True)
        got = native(ids, output_hidden_states=True)
    assert_half_close("last_hidden_state", got.last_hidden_state, expected.last_hidden_state)
    assert_half_close("pooler_output", got.pooler_output, expected.pooler_output)
    for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states, strict=True)):
        assert_half_close(f"hidden_states[{i}]", a, b)


def test_clip_text_loads_transformers4_layout(tmp_path: Path) -> None:
    """Diffusers folders hold transformers 4.x files: `text_model.`-prefixed keys, maybe a `position_ids` buffer."""
    torch.manual_seed(0)
    ref = transformers.CLIPTextModel(clip_config()).eval()
    folder = tmp_path / "text_encoder"
    ref.save_pretrained(folder)
    state = {f"text_model.{k}": v.contiguous() for k, v in load_state_dict(folder).items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    (folder / "model.safetensors").unlink()
    save_file(state, folder / "model.safetensors")
    native = load_component(CLIPTextModel, folder)
    ids = clip_input_ids()
    with torch.no_grad():
        assert_fp32_close("pooler_output", native(ids).pooler_output, ref(ids).pooler_output)


def test_clip_text_rejects_bad_config_and_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextHParams.from_config({"hidden_act": "relu2"})
    with pytest.raises(ValueError, match=r"'hidden_size' \(30\).*'num_attention_heads' \(4\)"):
        CLIPTextHParams.from_config({"hidden_size": 30, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="eos_token_id"):
        CLIPTextHParams.from_config({"eos_token_id": [2, 3]})
    native = CLIPTextModel.from_config(clip_config().to_dict())
    with pytest.raises(ValueError, match="length 78"):
        native(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        native(torch.zeros(78, dtype=torch.long))
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_act": "relu2"}')
    with pytest.raises(CheckpointError, match="relu2"):
        load_component(CLIPTextModel, folder)


# ------------------------------------------------------------------------------------------------------------- T5


def t5_config(feed_forward_proj: str) -> transformers.T5Config:
    return transformers.T5Config(
        vocab_size=100,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj=feed_forward_proj,
    )


def t5_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Length 24 so that offsets reach beyond max_distance (20); row 1 padded after 15 tokens."""
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 100, (2, 24), generator=gen)
    mask = torch.ones(2, 24, dtype=torch.long)
    ids[1, 15:] = 0
    mask[1, 15:] = 0
    return ids, mask


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
def test_t5_encoder_fp32_parity(tmp_path: Path, feed_forward_proj: str) -> None:
    torch.manual_seed(0)
    ref = transformers.T5EncoderModel(t5_config(feed_forward_proj)).eval()
    folder = save_reference(ref, tmp_path / "text_encoder_3")
    native = load_component(T5EncoderModel, folder)
    ids, mask = t5_inputs()
    for name, kwargs in (("no mask", {}), ("padding mask", {"attention_mask": mask})):
        with torch.no_grad():
            expected = ref(ids, output_hidden_states=True, **kwargs)
            got = native(ids, output_hidden_states=True, **kwargs)
        assert_fp32_close(f"{name}: last_hidden_state", got.last_hidden_state, expected.last_hidden_state)
        assert got.hidden_states is not None and len(got.hidden_states) == len(expected.hidden_states) == 3
        for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states, strict=True)):
            assert_fp32_close(f"{name}: hidden_states[{i}]", a, b)
    # The mask matters: padded keys change the unpadded row's neighbours' outputs.
    with torch.no_grad():
        unmasked = native(ids).last_hidden_state
    assert (got.last_hidden_state[1] - unmasked[1]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_t5_encoder_half_parity(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    folder = save_reference(transformers.T5EncoderModel(t5_config("gated-gelu")), tmp_path / "text_encoder_3")
    ref = transformers.T5EncoderModel.from_pretrained(folder, dtype=dtype).eval()
    native = load_component(T5EncoderModel, folder, dtype=dtype)
    # transformers keeps `wo` in fp32 for fp16 only (`_keep_in_fp32_modules`); the native model must agree.
    for block, ref_block in zip(native.encoder.block, ref.encoder.block, strict=True):
        assert block.layer[1].DenseReluDense.wo.weight.dtype == ref_block.layer[1].DenseReluDense.wo.weight.dtype
        assert block.layer[0].SelfAttention.q.weight.dtype == dtype
    ids, mask = t5_inputs()
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, output_hidden_states=True)
        got = native(ids, attention_mask=mask, output_hidden_states=True)
    assert_half_close("last_hidden_state", got.last_hidden_state, expected.last_hidden_state)
    for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states, strict=True)):
        assert_half_close(f"hidden_states[{i}]", a, b)


def test_t5_encoder_loads_embed_tokens_layout(tmp_path: Path) -> None:
    """Older files name the tied embedding `encoder.embed_tokens.weight` (alone or next to `shared.weight`)."""
    torch.manual_seed(0)
    ref = transformers.T5EncoderModel(t5_config("gated-gelu")).eval()
    folder = tmp_path / "text_encoder_3"
    ref.save_pretrained(folder)
    state = load_state_dict(folder)
    state["encoder.embed_tokens.weight"] = state.pop("shared.weight")
    (folder / "model.safetensors").unlink()
    save_file(state, folder / "model.safetensors")
    native = load_component(T5EncoderModel, folder)
    ids, mask = t5_inputs()
    with torch.no_grad():
        got = native(ids, attention_mask=mask).last_hidden_state
        expected = ref(ids, attention_mask=mask).last_hidden_state
    assert_fp32_close("last_hidden_state", got, expected)


def test_t5_encoder_rejects_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5EncoderHParams.from_config({"feed_forward_proj": "gelu-gated-x"})
    with pytest.raises(ValueError, match="dense_act_fn"):
        T5EncoderHParams.from_config({"feed_forward_proj": "gated-relu2"})
    with pytest.raises(ValueError, match="is_decoder"):
        T5EncoderHParams.from_config({"is_decoder": True})
    with pytest.raises(ValueError, match="relative_attention_num_buckets"):
        T5EncoderHParams.from_config({"relative_attention_num_buckets": 2})
    native = T5EncoderModel.from_config(t5_config("relu").to_dict())
    ids, mask = t5_inputs()
    with pytest.raises(ValueError, match="attention_mask"):
        native(ids, attention_mask=mask[:, :5])


# ----------------------------------------------------------------------------------------------- bit-exactness


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_equal_under_reference_attention_kernel(tmp_path: Path, dtype: torch.dtype) -> None:
    """With torch's own SDPA kernel choice (what transformers calls) instead of the CPU-default math kernel, every
    other op is the reference's op in the reference's order and dtype, so the outputs are bit-identical. The
    remaining fp32/bf16 differences of the default run therefore come from the attention kernel alone."""
    torch.manual_seed(0)
    clip_folder = save_reference(transformers.CLIPTextModel(clip_config()), tmp_path / "text_encoder")
    t5_folder = save_reference(transformers.T5EncoderModel(t5_config("gated-gelu")), tmp_path / "text_encoder_3")
    clip_ref = transformers.CLIPTextModel.from_pretrained(clip_folder, dtype=dtype).eval()
    t5_ref = transformers.T5EncoderModel.from_pretrained(t5_folder, dtype=dtype).eval()
    clip = load_component(CLIPTextModel, clip_folder, dtype=dtype)
    t5 = load_component(T5EncoderModel, t5_folder, dtype=dtype)
    ids = clip_input_ids()
    t5_ids, mask = t5_inputs()
    with torch.no_grad(), attention_backend("sdpa"):
        clip_got, clip_expected = clip(ids), clip_ref(ids)
        t5_got = t5(t5_ids, attention_mask=mask).last_hidden_state
        t5_expected = t5_ref(t5_ids, attention_mask=mask).last_hidden_state
    assert torch.equal(clip_got.last_hidden_state, clip_expected.last_hidden_state)
    assert torch.equal(clip_got.pooler_output, clip_expected.pooler_output)
    assert torch.equal(t5_got, t5_expected)
