"""Native Qwen2.5-VL text path (Qwen-Image's text encoder) against transformers' Qwen2_5_VLForConditionalGeneration.

The reference is built tiny with a fixed seed (vision tower included, as the pipeline's checkpoint has it), every
constant parameter randomised (references/tiny_build.py), saved with `save_pretrained` and loaded back by both
sides; the native model goes through the project loader (strict keys after dropping the vision tower and LM head).
Inputs exercise grouped-query attention (4 query heads on 2 key/value heads), padding on either side and batch 3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from numerics import rel_l2
from qwen_text_checks import (
    BF16_FLOOR_FACTOR,
    ROWS,
    compare_states,
    native_states,
    reference_states,
    token_batch,
)

import native_models.models.qwen_text as qwen_text
from native_models.attention import attention_backend
from native_models.components import MODEL_CLASSES
from native_models.errors import CheckpointError
from native_models.loader import load_component
from native_models.models.qwen_text import Qwen2_5_VLForConditionalGeneration, mrope_tables
from references.common.tiny_build import randomise_constant_parameters

VOCAB = 200
HEAD_DIM = 16
SECTIONS = [2, 3, 3]  # rotary pairs per (temporal, height, width) row: 8 pairs for a head of 16
TEXT = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "mrope_section": SECTIONS, "rope_theta": 10000.0},
    "bos_token_id": 1,
    "eos_token_id": 2,
}
VISION = {"depth": 1, "hidden_size": 16, "num_heads": 2, "out_hidden_size": 64, "intermediate_size": 16}
FP32_REL_L2 = 1e-6  # tighter than the 1e-5: float rounding of identical ops in another order


class Models:
    """(reference with SDPA, native) loaded once per dtype from one folder; the eager reference on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded: dict[tuple[torch.dtype, str], torch.nn.Module] = {}

    def reference(self, dtype: torch.dtype = torch.float32, attn: str = "sdpa") -> torch.nn.Module:
        key = (dtype, attn)
        if key not in self._loaded:
            self._loaded[key] = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
                self.folder, dtype=dtype, attn_implementation=attn
            ).eval()
        return self._loaded[key]

    def native(self, dtype: torch.dtype = torch.float32) -> Qwen2_5_VLForConditionalGeneration:
        key = (dtype, "native")
        if key not in self._loaded:
            self._loaded[key] = load_component(Qwen2_5_VLForConditionalGeneration, self.folder, dtype)
        return self._loaded[key]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    torch.manual_seed(0)
    config = transformers.Qwen2_5_VLConfig(text_config=TEXT, vision_config=VISION)
    reference = transformers.Qwen2_5_VLForConditionalGeneration(config)
    changed = randomise_constant_parameters(reference, seed=0, index=0)
    assert any("input_layernorm" in name for name in changed)  # norm weights of one are now visible to parity
    folder = tmp_path_factory.mktemp("qwen2_5_vl") / "text_encoder"
    reference.save_pretrained(folder)
    return Models(folder)


def test_registered_for_checkpoints() -> None:
    assert MODEL_CLASSES["Qwen2_5_VLForConditionalGeneration"].endswith("qwen_text:Qwen2_5_VLForConditionalGeneration")


def test_text_weights_load_strictly_and_equal(models: Models) -> None:
    reference, native = models.reference(), models.native()
    expected = {k: v for k, v in reference.state_dict().items() if k.startswith("model.language_model.")}
    actual = native.state_dict()
    assert sorted(actual) == sorted(expected)
    assert all(torch.equal(actual[k], v) for k, v in expected.items())
    assert native.text_model().config.kv_groups == 2 and native.text_model().config.head_dim == HEAD_DIM


@pytest.mark.parametrize("masked", [True, False], ids=["padding-mask", "no-mask"])
def test_fp32_matches_transformers(models: Models, masked: bool) -> None:
    ids, mask = token_batch(VOCAB)
    mask_or_none = mask if masked else None
    worst = compare_states(native_states(models.native(), ids, mask_or_none),
                           reference_states(models.reference(), ids, mask_or_none))  # fmt: skip
    print(f"qwen2.5-vl text fp32 {'masked' if masked else 'unmasked'}: worst rel L2 {worst.rel_l2:.3e} "
          f"(hidden state {worst.worst_index}), max abs {worst.max_abs:.3e}")  # fmt: skip
    assert worst.rel_l2 <= FP32_REL_L2, f"hidden state {worst.worst_index}: rel L2 {worst.rel_l2:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bitwise_equal_on_the_same_attention_kernel(models: Models, dtype: torch.dtype) -> None:
    """On torch's own SDPA kernel choice (what transformers calls) every other op is mirrored exactly."""
    ids, mask = token_batch(VOCAB)
    with attention_backend("sdpa"):
        native = native_states(models.native(dtype), ids, mask)
    expected = reference_states(models.reference(dtype), ids, mask)
    for i, (a, b) in enumerate(zip(native, expected, strict=True)):
        assert torch.equal(a, b), f"hidden state {i}: max abs diff {(a.double() - b.double()).abs().max():.3e}"


def test_bf16_within_measured_floor(models: Models) -> None:
    ids, mask = token_batch(VOCAB)
    sdpa = reference_states(models.reference(torch.bfloat16), ids, mask)
    eager = reference_states(models.reference(torch.bfloat16, "eager"), ids, mask)
    native = native_states(models.native(torch.bfloat16), ids, mask)
    floor = compare_states(eager, sdpa, mask)
    worst = compare_states(native, sdpa, mask)
    everywhere = compare_states(native, sdpa)
    print(f"qwen2.5-vl text bf16 (real tokens): native vs transformers worst rel L2 {worst.rel_l2:.3e} (max abs "
          f"{worst.max_abs:.3e}); floor (eager vs sdpa) {floor.rel_l2:.3e} (max abs {floor.max_abs:.3e}); "
          f"native over all positions {everywhere.rel_l2:.3e}")  # fmt: skip
    assert floor.rel_l2 > 0, "the two reference attention paths agree bitwise: no floor measured"
    assert worst.rel_l2 <= BF16_FLOOR_FACTOR * floor.rel_l2, f"{worst.rel_l2:.3e} > {BF16_FLOOR_FACTOR} x floor"


def test_hidden_state_selects_the_pipeline_layer(models: Models) -> None:
    """`hidden_state(i)` is transformers' `hidden_states[i]`; QwenImagePipeline takes -1 (the final-normed state)."""
    ids, mask = token_batch(VOCAB)
    native = models.native()
    states = native_states(native, ids, mask)
    with torch.no_grad():
        for index in (-1, -2, 0, 1):
            assert torch.equal(native.hidden_state(ids, mask, index), states[index]), index
    with pytest.raises(ValueError, match="hidden state index -5 out of range for 3 layers"):
        native.hidden_state(ids, mask, -5)


def test_padding_mask_reaches_real_tokens_only_under_left_padding(models: Models) -> None:
    """Causality hides right padding from every real token; left padding is hidden only by the mask. (A fault
    'mask ignored' is therefore invisible on right-padded prompts: worth knowing when choosing a test prompt.)"""
    ids, mask = token_batch(VOCAB)
    native = models.native()
    with torch.no_grad():
        masked = native(ids, mask).last_hidden_state
        unmasked = native(ids).last_hidden_state
    real = mask.bool()
    right_row = next(i for i, (n, side) in enumerate(ROWS) if side == "right" and n < ids.shape[1])
    left_row = next(i for i, (_, side) in enumerate(ROWS) if side == "left")
    assert torch.equal(masked[right_row][real[right_row]], unmasked[right_row][real[right_row]])
    assert rel_l2(masked[left_row][real[left_row]], unmasked[left_row][real[left_row]]) > 1e-3


def test_wrong_gqa_grouping_is_detected(models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiling the key/value heads (h0, h1, h0, h1) instead of repeating each (h0, h0, h1, h1) must show."""
    ids, mask = token_batch(VOCAB)
    expected = reference_states(models.reference(), ids, mask)[-1]

    def tiled(x: torch.Tensor, groups: int) -> torch.Tensor:
        return x.repeat(1, groups, 1, 1)

    native = models.native()  # cached across tests: patch its attention modules' seam, not the module function
    for module in native.modules():
        if isinstance(module, qwen_text.QwenAttention):
            monkeypatch.setattr(module, "expand_kv", tiled)
    with torch.no_grad():
        wrong = native(ids, mask).last_hidden_state
    assert rel_l2(wrong, expected) > 1e-3


def test_text_only_mrope_equals_1d_rotary_and_sections_match_transformers(models: Models) -> None:
    """Text-only positions are equal in all three rows, so the sectioned table is plain 1D rotary; with distinct
    rows (an image prompt) the native recomposition equals transformers' table bit for bit."""
    inv_freq = models.native().text_model().inv_freq
    text = torch.arange(9)[None].expand(2, -1)  # (B, L)
    cos3, sin3 = mrope_tables(text[None].expand(3, -1, -1), inv_freq, tuple(SECTIONS), torch.float32)
    cos1, sin1 = mrope_tables(text, inv_freq, None, torch.float32)
    assert torch.equal(cos3, cos1) and torch.equal(sin3, sin1)
    rotary = models.reference().model.language_model.rotary_emb
    rows = torch.stack([torch.arange(9), torch.arange(9) * 2 + 1, 17 - torch.arange(9)])[:, None].expand(3, 2, 9)
    ref_cos, ref_sin = rotary(torch.zeros(1, dtype=torch.float32), rows)
    cos, sin = mrope_tables(rows, inv_freq, tuple(SECTIONS), torch.float32)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_bf16_keeps_rotary_frequencies_in_fp32(models: Models) -> None:
    native = models.native(torch.bfloat16)
    assert native.text_model().inv_freq.dtype == torch.float32
    assert native.text_model().layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


def test_transformers_5_key_layout_also_loads(models: Models) -> None:
    """transformers 5 saves the 4.x layout (`model.layers`, `visual`); files with `model.language_model` load too."""
    native = models.native()
    state = {f"model.language_model.{k.removeprefix('model.language_model.')}": v
             for k, v in native.state_dict().items()}  # fmt: skip
    state["model.visual.blocks.0.attn.qkv.weight"] = torch.zeros(3)
    state["lm_head.weight"] = torch.zeros(3)
    assert sorted(native.convert_checkpoint_keys(state)) == sorted(native.state_dict())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "qwen3"}, "'qwen2_5_vl'"),
        ({"text_config": {**TEXT, "use_sliding_window": True}}, "sliding-window attention is not supported"),
        ({"text_config": {**TEXT, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}}, "rope type 'yarn'"),
        ({"text_config": {**TEXT, "rope_parameters": {"mrope_section": [2, 2, 2]}}}, r"sums to 6, but the head has 8"),
        ({"text_config": {**TEXT, "num_key_value_heads": 3}}, "not a multiple of num_key_value_heads=3"),
        ({"text_config": {**TEXT, "hidden_act": "gelu"}}, "hidden_act='gelu' is not supported"),
    ],
)
def test_unsupported_config_raises(change: dict, message: str) -> None:
    base = {"model_type": "qwen2_5_vl", "text_config": TEXT, "vision_config": VISION}
    with pytest.raises(ValueError, match=message):
        Qwen2_5_VLForConditionalGeneration.from_config({**base, **change})


def test_legacy_top_level_text_keys() -> None:
    """Older Qwen2.5-VL config.json files keep the text settings at the top level (no `text_config`)."""
    legacy = {"model_type": "qwen2_5_vl", **{k: v for k, v in TEXT.items() if k != "rope_parameters"},
              "rope_scaling": {"type": "mrope", "mrope_section": SECTIONS}, "rope_theta": 500.0}  # fmt: skip
    config = Qwen2_5_VLForConditionalGeneration.from_config(legacy).text_model().config
    assert (config.hidden_size, config.rope_theta, config.mrope_section) == (64, 500.0, tuple(SECTIONS))


def test_bad_inputs_raise(models: Models) -> None:
    native = models.native()
    ids, mask = token_batch(VOCAB)
    with pytest.raises(ValueError, match=r"attention_mask must match input_ids \(3, 11\)"):
        native(ids, mask[:, :5])
    with pytest.raises(ValueError, match="integer token ids"):
        native(ids.float())


def test_loader_reports_unsupported_config(models: Models, tmp_path: Path) -> None:
    bad = tmp_path / "text_encoder"
    bad.mkdir()
    for file in models.folder.iterdir():
        (bad / file.name).write_bytes(file.read_bytes())
    config = (bad / "config.json").read_text().replace('"hidden_act": "silu"', '"hidden_act": "relu"')
    (bad / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="hidden_act='relu'"):
        load_component(Qwen2_5_VLForConditionalGeneration, bad)
