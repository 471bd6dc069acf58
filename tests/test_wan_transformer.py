"""Native Wan 2.1 DiT against Diffusers' WanTransformer3DModel on a tiny random checkpoint.

The Diffusers model is built with a fixed seed (norm weights perturbed, so a dropped weight shows), saved with
`save_pretrained`, and both sides load that folder: Diffusers with `from_pretrained(torch_dtype=...)`, the native
model through the project loader. fp32 must agree to float rounding; bf16 to cosine >= 0.999 (the harness' bar),
and on the same attention kernel both dtypes must be bitwise equal, since every other op is mirrored.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from numerics import cosine, rel_l2

from native_models.attention import attention_backend
from native_models.components import MODEL_CLASSES
from native_models.errors import CheckpointError
from native_models.loader import load_component
from native_models.models.wan_transformer import WanTransformer3DModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is first imported (by diffusers)
diffusers = pytest.importorskip("diffusers")

FP32_REL_L2 = 1e-6
BF16_COSINE = 0.999

TINY = {
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "patch_size": (1, 2, 2),
    "rope_max_seq_len": 1024,
}
LATENT = (3, 6, 10)  # (T, H, W): odd frame count, non-square -> token grid (3, 3, 5), 45 tokens
TEXT_LEN = 7
BATCH = 2


def make_inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """As WanPipeline calls the transformer: latents and text in the model dtype, timestep t.expand(B) (float32)."""
    gen = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(BATCH, TINY["in_channels"], *LATENT, generator=gen).to(dtype),
        "timestep": torch.tensor([999.0, 431.5]),
        "encoder_hidden_states": torch.randn(BATCH, TEXT_LEN, TINY["text_dim"], generator=gen).to(dtype),
    }


class Models:
    """Both sides loaded once per dtype from the same safetensors file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded: dict[torch.dtype, tuple[torch.nn.Module, WanTransformer3DModel]] = {}

    def get(self, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, WanTransformer3DModel]:
        if dtype not in self._loaded:
            reference = diffusers.WanTransformer3DModel.from_pretrained(self.folder, torch_dtype=dtype).eval()
            self._loaded[dtype] = (reference, load_component(WanTransformer3DModel, self.folder, dtype))
        return self._loaded[dtype]

    def outputs(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected, actual) on the same inputs; native on the current attention backend."""
        reference, native = self.get(dtype)
        inputs = make_inputs(dtype)
        with torch.no_grad():
            return reference(**inputs, return_dict=False)[0], native(**inputs)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    torch.manual_seed(0)
    reference = diffusers.WanTransformer3DModel(**TINY)
    with torch.no_grad():  # RMSNorm / affine LayerNorm weights start at one and zero; perturb them
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("wan") / "transformer"
    reference.save_pretrained(folder)
    return Models(folder)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_state_dict_names_dtypes_and_values_match(models: Models, dtype: torch.dtype) -> None:
    """Same keys, and in bf16 the same float32 islands (Diffusers' _keep_in_fp32_modules) with the same values."""
    reference, native = models.get(dtype)
    expected, actual = reference.state_dict(), native.state_dict()
    assert sorted(actual) == sorted(expected)
    mismatched = [k for k, v in expected.items() if actual[k].dtype != v.dtype or not torch.equal(actual[k], v)]
    assert not mismatched, f"{len(mismatched)} tensors differ in dtype or value, e.g. {mismatched[:3]}"
    if dtype == torch.bfloat16:
        assert native.blocks[0].scale_shift_table.dtype == torch.float32
        assert native.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
        assert native.rope.freqs_cos.dtype == torch.float32


def test_fp32_matches_diffusers(models: Models) -> None:
    expected, actual = models.outputs()
    assert actual.shape == expected.shape == (BATCH, TINY["out_channels"], *LATENT)
    err, max_abs = rel_l2(actual, expected), (actual - expected).abs().max().item()
    print(f"wan DiT fp32: rel L2 {err:.3e}, max abs {max_abs:.3e}")
    assert err <= FP32_REL_L2, f"fp32 rel L2 {err:.3e} > {FP32_REL_L2} (max abs {max_abs:.3e})"


def test_bf16_matches_diffusers(models: Models) -> None:
    expected, actual = models.outputs(torch.bfloat16)
    assert actual.dtype == expected.dtype == torch.bfloat16
    cos, err = cosine(actual, expected), rel_l2(actual, expected)
    print(f"wan DiT bf16: cosine {cos:.7f}, rel L2 {err:.3e}")
    assert cos >= BF16_COSINE, f"bf16 cosine {cos:.6f} < {BF16_COSINE} (rel L2 {err:.3e})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bitwise_equal_on_the_same_attention_kernel(models: Models, dtype: torch.dtype) -> None:
    """On torch's own SDPA kernel choice (what Diffusers calls), every other op is mirrored exactly."""
    with attention_backend("sdpa"):
        expected, actual = models.outputs(dtype)
    assert torch.equal(actual, expected), f"max abs diff {(actual - expected).abs().max().item():.3e}"


def test_rotary_tables_match_diffusers(models: Models) -> None:
    reference, native = models.get()
    latent = torch.zeros(1, TINY["in_channels"], *LATENT)
    ref_cos, ref_sin = reference.rope(latent)  # (1, L, 1, D) each, pairs repeated
    rope = native.rope(native.token_grid(latent))  # (L, 1, D/2)
    assert torch.equal(rope.cos.repeat_interleave(2, dim=-1), ref_cos[0])
    assert torch.equal(rope.sin.repeat_interleave(2, dim=-1), ref_sin[0])


def test_registered_for_checkpoints() -> None:
    assert MODEL_CLASSES["WanTransformer3DModel"] == "native_models.models.wan_transformer:WanTransformer3DModel"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # the image path needs both (tests/test_wan_image_transformer.py covers the I2V DiT itself)
        ({"added_kv_proj_dim": 32}, "image_dim=None and added_kv_proj_dim=32 must be set together"),
        ({"image_dim": 1280}, "image_dim=1280 and added_kv_proj_dim=None must be set together"),
        ({"qk_norm": "rms_norm"}, "qk_norm='rms_norm' is not supported"),
        ({"attention_head_dim": 15}, "attention_head_dim=15 must be even"),
        ({"window_size": [-1, -1]}, r"unsupported Wan transformer config keys \['window_size'\]"),
    ],
)
def test_unsupported_config_raises(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WanTransformer3DModel.from_config({**TINY, "_class_name": "WanTransformer3DModel", **change})


def test_loader_reports_unsupported_config(models: Models, tmp_path: Path) -> None:
    bad = tmp_path / "transformer"
    bad.mkdir()
    for file in models.folder.iterdir():
        (bad / file.name).write_bytes(file.read_bytes())
    config = (bad / "config.json").read_text().replace('"added_kv_proj_dim": null', '"added_kv_proj_dim": 32')
    (bad / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="added_kv_proj_dim=32"):
        load_component(WanTransformer3DModel, bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_states": torch.zeros(BATCH, 16, 3, 5, 10)}, r"\(3, 5, 10\) does not divide by patch_size"),
        ({"hidden_states": torch.zeros(BATCH, 8, 3, 6, 10)}, r"must be \(B, 16, T, H, W\)"),
        ({"timestep": torch.zeros(BATCH, 45)}, r"timestep must be \(B,\) = \(2,\), got \(2, 45\)"),
        ({"encoder_hidden_states": torch.zeros(BATCH, 7, 31)}, r"encoder_hidden_states must be \(2, L, 32\)"),
    ],
)
def test_bad_inputs_raise(models: Models, change: dict, message: str) -> None:
    _, native = models.get()
    with pytest.raises(ValueError, match=message):
        native(**{**make_inputs(torch.float32), **change})
