"""Native Qwen3 (Z-Image's text encoder, `Qwen3Model`; also `Qwen3ForCausalLM`) against transformers.

Qwen3 differs from Qwen2.5-VL's text path by configuration only: per-head RMSNorm of q and k before the rotary, a
head_dim of its own (here 16 with hidden 48, so q/k/v widths differ from the hidden size), `attention_bias` on all
four projections, 1D rotary with its own theta. Built tiny with every constant parameter randomised, saved with
`save_pretrained`, both sides loaded from the folder; grouped-query attention (4 on 2 heads), padding on either
side, batch 3. ZImagePipeline takes `hidden_states[-2]` (the second-to-last layer's output, un-normed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import transformers
from numerics import rel_l2
from qwen_text_checks import BF16_FLOOR_FACTOR, compare_states, native_states, reference_states, token_batch

from native_models.attention import attention_backend
from native_models.components import MODEL_CLASSES
from native_models.loader import load_component
from native_models.models.qwen_text import Qwen3ForCausalLM, Qwen3Model
from references.common.tiny_build import randomise_constant_parameters

VOCAB = 180
CONFIG = {
    "vocab_size": VOCAB,
    "hidden_size": 48,
    "intermediate_size": 80,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "attention_bias": False,
}
FP32_REL_L2 = 1e-6
ZIMAGE_LAYER = -2  # ZImagePipeline._encode_prompt: text_encoder(...).hidden_states[-2]


class Models:
    def __init__(self, folder: Path, reference_cls: type, native_cls: type) -> None:
        self.folder, self.reference_cls, self.native_cls = folder, reference_cls, native_cls
        self._loaded: dict[tuple[torch.dtype, str], torch.nn.Module] = {}

    def reference(self, dtype: torch.dtype = torch.float32, attn: str = "sdpa") -> torch.nn.Module:
        if (dtype, attn) not in self._loaded:
            self._loaded[(dtype, attn)] = self.reference_cls.from_pretrained(
                self.folder, dtype=dtype, attn_implementation=attn
            ).eval()
        return self._loaded[(dtype, attn)]

    def native(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        if (dtype, "native") not in self._loaded:
            self._loaded[(dtype, "native")] = load_component(self.native_cls, self.folder, dtype)
        return self._loaded[(dtype, "native")]


def build(tmp_path_factory: pytest.TempPathFactory, reference_cls: type, native_cls: type, **changes: object) -> Models:
    torch.manual_seed(0)
    reference = reference_cls(transformers.Qwen3Config(**{**CONFIG, **changes}))
    randomise_constant_parameters(reference, seed=0, index=1)
    folder = tmp_path_factory.mktemp("qwen3") / "text_encoder"
    reference.save_pretrained(folder)
    return Models(folder, reference_cls, native_cls)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build(tmp_path_factory, transformers.Qwen3Model, Qwen3Model)


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """The LM-head class with tied embeddings and biased projections: another checkpoint layout, other options."""
    return build(tmp_path_factory, transformers.Qwen3ForCausalLM, Qwen3ForCausalLM,
                 attention_bias=True, tie_word_embeddings=True)  # fmt: skip


def test_registered_for_checkpoints() -> None:
    assert MODEL_CLASSES["Qwen3Model"].endswith("qwen_text:Qwen3Model")
    assert MODEL_CLASSES["Qwen3ForCausalLM"].endswith("qwen_text:Qwen3ForCausalLM")


def test_weights_load_strictly_and_equal(models: Models) -> None:
    expected, actual = models.reference().state_dict(), models.native().state_dict()
    assert sorted(actual) == sorted(expected)
    assert all(torch.equal(actual[k], v) for k, v in expected.items())
    assert "layers.0.self_attn.q_norm.weight" in actual and "layers.0.self_attn.q_proj.bias" not in actual


@pytest.mark.parametrize("masked", [True, False], ids=["padding-mask", "no-mask"])
def test_fp32_matches_transformers(models: Models, masked: bool) -> None:
    ids, mask = token_batch(VOCAB)
    mask_or_none = mask.bool() if masked else None  # ZImagePipeline passes a boolean mask
    worst = compare_states(native_states(models.native(), ids, mask_or_none),
                           reference_states(models.reference(), ids, mask_or_none))  # fmt: skip
    print(f"qwen3 fp32 {'masked' if masked else 'unmasked'}: worst rel L2 {worst.rel_l2:.3e} "
          f"(hidden state {worst.worst_index}), max abs {worst.max_abs:.3e}")  # fmt: skip
    assert worst.rel_l2 <= FP32_REL_L2, f"hidden state {worst.worst_index}: rel L2 {worst.rel_l2:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bitwise_equal_on_the_same_attention_kernel(models: Models, dtype: torch.dtype) -> None:
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
    floor, worst = compare_states(eager, sdpa, mask), compare_states(native, sdpa, mask)
    print(f"qwen3 bf16 (real tokens): native vs transformers worst rel L2 {worst.rel_l2:.3e} (max abs "
          f"{worst.max_abs:.3e}); floor (eager vs sdpa) {floor.rel_l2:.3e} (max abs {floor.max_abs:.3e})")
    assert floor.rel_l2 > 0, "the two reference attention paths agree bitwise: no floor measured"
    assert worst.rel_l2 <= BF16_FLOOR_FACTOR * floor.rel_l2, f"{worst.rel_l2:.3e} > {BF16_FLOOR_FACTOR} x floor"


def test_zimage_layer_skips_the_last_layer(models: Models) -> None:
    """`hidden_state(-2)` is transformers' `hidden_states[-2]` (un-normed output of layer N-1), computed without
    running layer N; it differs from the final state, so taking -1 instead (a fault) shows."""
    ids, mask = token_batch(VOCAB)
    native = models.native()
    expected = reference_states(models.reference(), ids, mask.bool())
    calls: list[int] = []
    hook = native.layers[-1].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        got = native.hidden_state(ids, mask.bool(), ZIMAGE_LAYER)
    hook.remove()
    assert not calls
    assert rel_l2(got, expected[ZIMAGE_LAYER]) <= FP32_REL_L2
    assert rel_l2(expected[-1], expected[ZIMAGE_LAYER]) > 1e-2


def test_qk_norm_is_used(models: Models) -> None:
    """Dropping the q/k norms (a Qwen2.5-style config read for Qwen3) must show."""
    ids, mask = token_batch(VOCAB)
    native = models.native()
    expected = reference_states(models.reference(), ids, mask)[-1]
    for layer in native.layers:
        layer.self_attn.config = dataclasses.replace(native.config, qk_norm=False)
    try:
        with torch.no_grad():
            wrong = native(ids, mask).last_hidden_state
    finally:
        for layer in native.layers:
            layer.self_attn.config = native.config
    assert rel_l2(wrong, expected) > 1e-3


def test_causal_lm_with_tied_head_loads_and_matches(causal_lm: Models) -> None:
    ids, mask = token_batch(VOCAB)
    native = causal_lm.native()
    assert sorted(native.state_dict()) == sorted(f"model.{k}" for k in causal_lm.reference().model.state_dict())
    worst = compare_states(native_states(native, ids, mask), reference_states(causal_lm.reference(), ids, mask))
    print(f"qwen3 causal-lm fp32: worst rel L2 {worst.rel_l2:.3e}")
    assert worst.rel_l2 <= FP32_REL_L2
    assert native.text_model().layers[0].self_attn.o_proj.bias is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "qwen2"}, "'qwen3'"),
        ({"layer_types": ["full_attention", "sliding_attention", "full_attention"]}, "sliding-window"),
        ({"rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}}, "1D rotary"),
        ({"attention_bias": "yes"}, "'attention_bias' must be a boolean"),
        ({"head_dim": 15}, "head_dim=15 must be even"),
        ({"num_key_value_heads": 0}, "'num_key_value_heads' must be an integer >= 1, got 0"),
    ],
)
def test_unsupported_config_raises(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Qwen3Model.from_config({"model_type": "qwen3", **CONFIG, **change})


def test_defaults_for_missing_keys() -> None:
    """Keys a config.json leaves out take Qwen3Config's defaults (rope_theta 1e4, head_dim 128)."""
    expected = transformers.Qwen3Config()
    with torch.device("meta"):  # the default widths hold ~0.2 B parameters per layer: build without memory
        config = Qwen3Model.from_config({"model_type": "qwen3", "num_hidden_layers": 1, "vocab_size": 8}).config
    assert (config.hidden_size, config.head_dim, config.num_key_value_heads, config.rope_theta, config.rms_norm_eps) \
        == (expected.hidden_size, expected.head_dim, expected.num_key_value_heads,
            expected.rope_parameters["rope_theta"], expected.rms_norm_eps)  # fmt: skip
