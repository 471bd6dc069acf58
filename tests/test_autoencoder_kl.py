"""Parity of the native AutoencoderKL decoder with Diffusers' on tiny random VAEs saved in Diffusers format."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from numerics import cosine, rel_l2

from native_models.attention import attention_backend
from native_models.loader import load_component
from native_models.models.autoencoder_kl import AutoencoderKL

# FLUX.1-like: 4 blocks (x8), 16 latent channels, shift factor, no quant convs.
FLUX_LIKE: dict[str, Any] = {
    "block_out_channels": [8, 16, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 16,
    "norm_num_groups": 4,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
# SD-like: 3 blocks (x4), post_quant_conv, 2 layers per block, channel changes inside up blocks.
SD_LIKE: dict[str, Any] = {
    "block_out_channels": [8, 16, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 4,
}
# No mid-block attention and a non-SiLU resnet activation.
NO_ATTENTION: dict[str, Any] = {
    **SD_LIKE,
    "block_out_channels": [8, 8],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "mid_block_add_attention": False,
    "act_fn": "gelu",
}
CONFIGS = {"flux_like": FLUX_LIKE, "sd_like": SD_LIKE, "no_attention": NO_ATTENTION}

DTYPES = (torch.float32, torch.bfloat16)
FP32_REL_L2_MAX = 1e-5  # measured ~5e-7 .. 1e-6 under the CPU default (math) attention backend
BF16_COSINE_MIN = 0.999  # measured >= 0.9998


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread: these decodes are tiny, and on a busy machine thread hand-offs cost ~100x the math."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class Case:
    """One saved random VAE, its Diffusers reference outputs per dtype, and the latents they decode."""

    name: str
    folder: Path
    config: dict[str, Any]
    latents: torch.Tensor  # (B, C_lat, h, w) float32
    expected: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)  # (B, 3, H, W) per dtype

    def native_decode(self, dtype: torch.dtype) -> torch.Tensor:
        native = load_component(AutoencoderKL, self.folder, dtype=dtype)
        return native.decode(self.latents.to(dtype))


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    """A random Diffusers VAE (non-trivial norms and biases) saved to disk, decoded once per dtype by Diffusers.

    The reference output does not depend on the native attention backend, so every test reuses it.
    """
    config = CONFIGS[request.param]
    torch.manual_seed(0)
    model = DiffusersAutoencoderKL(**config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    latents = torch.randn(2, config["latent_channels"], 4, 6, generator=torch.Generator().manual_seed(1))
    result = Case(request.param, folder, config, latents)
    with torch.no_grad():
        for dtype in DTYPES:
            # nn.Module.to directly: ModelMixin.to only adds a warning (this VAE keeps no modules in fp32).
            reference = torch.nn.Module.to(copy.deepcopy(model), dtype)
            result.expected[dtype] = reference.decode(latents.to(dtype)).sample
    return result


def test_fp32_matches_diffusers(case: Case, record_property: Any) -> None:
    expected, actual = case.expected[torch.float32], case.native_decode(torch.float32)
    factor = 2 ** (len(case.config["block_out_channels"]) - 1)
    assert actual.shape == expected.shape == (2, 3, 4 * factor, 6 * factor)
    error = rel_l2(actual, expected)
    record_property("fp32_rel_l2", error)
    print(f"fp32 rel L2 {case.name}: {error:.3e}")
    assert error < FP32_REL_L2_MAX


def test_bf16_close_to_diffusers(case: Case, record_property: Any) -> None:
    expected, actual = case.expected[torch.bfloat16], case.native_decode(torch.bfloat16)
    assert actual.dtype == expected.dtype == torch.bfloat16
    similarity = cosine(expected, actual)
    record_property("bf16_cosine", similarity)
    print(f"bf16 cosine {case.name}: {similarity:.6f}")
    assert similarity >= BF16_COSINE_MIN


@pytest.mark.parametrize("dtype", DTYPES)
def test_bit_identical_with_sdpa_backend(case: Case, dtype: torch.dtype) -> None:
    """Diffusers calls torch's SDPA with torch's own kernel choice; selecting 'sdpa' reproduces it exactly."""
    with attention_backend("sdpa"):
        actual = case.native_decode(dtype)
    assert torch.equal(case.expected[dtype], actual)


def test_attributes_follow_config(case: Case) -> None:
    config = case.config
    native = load_component(AutoencoderKL, case.folder)
    assert native.vae_scale_factor == 2 ** (len(config["block_out_channels"]) - 1)
    assert native.scaling_factor == config.get("scaling_factor", 0.18215)
    assert native.shift_factor == config.get("shift_factor")
    assert (native.post_quant_conv is not None) == config.get("use_post_quant_conv", True)
    assert not any(name.startswith(("encoder.", "quant_conv.")) for name in native.state_dict())


# FLUX.1's vae/config.json verbatim (SD / SDXL VAEs differ by 4 latent channels and a post_quant_conv).
FLUX_VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.30.0.dev0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}
SD_VAE_CONFIG = {**FLUX_VAE_CONFIG, "latent_channels": 4, "scaling_factor": 0.18215, "shift_factor": None}
del SD_VAE_CONFIG["use_post_quant_conv"], SD_VAE_CONFIG["use_quant_conv"]  # Diffusers defaults: both on


@pytest.mark.parametrize("config", [FLUX_VAE_CONFIG, SD_VAE_CONFIG], ids=["flux", "sd"])
def test_full_size_parameter_names_and_shapes_match(config: dict[str, Any]) -> None:
    """Real-size architectures, built on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        reference = DiffusersAutoencoderKL.from_config(config)
        native = AutoencoderKL.from_config(config)
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith(("encoder.", "quant_conv."))}
    assert {k: v.shape for k, v in native.state_dict().items()} == expected
    assert native.vae_scale_factor == 8
    assert native.shift_factor == config["shift_factor"]


def test_convert_checkpoint_keys_drops_encoder_and_renames_legacy_attention() -> None:
    native = AutoencoderKL.from_config(SD_LIKE)
    weight = torch.zeros(1)
    state = {
        "encoder.conv_in.weight": weight,
        "quant_conv.bias": weight,
        "decoder.mid_block.attentions.0.query.weight": weight,
        "decoder.mid_block.attentions.0.proj_attn.bias": weight,
        "decoder.mid_block.attentions.0.group_norm.weight": weight,
        "decoder.conv_in.weight": weight,
    }
    assert set(native.convert_checkpoint_keys(state)) == {
        "decoder.mid_block.attentions.0.to_q.weight",
        "decoder.mid_block.attentions.0.to_out.0.bias",
        "decoder.mid_block.attentions.0.group_norm.weight",
        "decoder.conv_in.weight",
    }


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"up_block_types": ["AttnUpDecoderBlock2D"] * 3}, "AttnUpDecoderBlock2D"),
        ({"act_fn": "tanh"}, "tanh"),
        ({"norm_type": "spatial"}, "norm_type"),
        ({"norm_num_groups": 3}, "norm_num_groups 3"),
        ({"up_block_types": ["UpDecoderBlock2D"] * 2}, "up_block_types"),
    ],
)
def test_unsupported_config_raises(override: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        AutoencoderKL.from_config({**SD_LIKE, **override, "_class_name": "AutoencoderKL"})


def test_decode_rejects_wrong_latent_shape_and_dtype() -> None:
    native = AutoencoderKL.from_config(SD_LIKE).eval()
    with pytest.raises(ValueError, match=r"\(2, 5, 4, 4\)"):
        native.decode(torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError, match="bfloat16"):
        native.decode(torch.zeros(1, 4, 4, 4, dtype=torch.bfloat16))
