"""Native Qwen-Image VAE decoder (the native Wan decoder built from a Qwen-Image config) against Diffusers'
AutoencoderKLQwenImage on a tiny random VAE saved with `save_pretrained`.

QwenImagePipeline decodes one latent frame at a time (T = 1, then takes frame 0); T = 2 is checked too, so the
causal cache across frames is covered. bf16 must stay within twice the difference between two correct bf16 decodes
of the reference itself: its default SDPA kernel against torch's math kernel (forced with `sdpa_kernel`).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import AutoencoderKLQwenImage as DiffusersAutoencoderKLQwenImage
from numerics import rel_l2
from torch.nn.attention import SDPBackend, sdpa_kernel

from native_models.attention import attention_backend
from native_models.components import MODEL_CLASSES
from native_models.loader import load_component
from native_models.models.autoencoder_kl_qwenimage import AutoencoderKLQwenImage
from references.common.tiny_build import randomise_constant_parameters

TINY = {
    "base_dim": 8,
    "z_dim": 4,
    "dim_mult": [1, 2, 2, 2],  # x8, as Qwen-Image
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.1, -0.2, 0.3, -0.4],
    "latents_std": [1.5, 0.8, 2.0, 1.1],
}
BATCH, LATENT_H, LATENT_W = 2, 3, 5
FP32_REL_L2 = 1e-5
BF16_FLOOR_FACTOR = 2.0


class Models:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded: dict[tuple[str, torch.dtype], torch.nn.Module] = {}

    def reference(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        if ("ref", dtype) not in self._loaded:
            model = DiffusersAutoencoderKLQwenImage.from_pretrained(self.folder, torch_dtype=dtype).eval()
            self._loaded["ref", dtype] = model
        return self._loaded["ref", dtype]

    def native(self, dtype: torch.dtype = torch.float32) -> AutoencoderKLQwenImage:
        if ("native", dtype) not in self._loaded:
            self._loaded["native", dtype] = load_component(AutoencoderKLQwenImage, self.folder, dtype)
        return self._loaded["native", dtype]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Random weights, no constant parameter; conv_out scaled up so a few pixels (about 1%) reach the [-1, 1]
    clamp: the clamp is exercised without hiding much of the comparison."""
    torch.manual_seed(0)
    model = DiffusersAutoencoderKLQwenImage(**TINY).eval()
    changed = randomise_constant_parameters(model, seed=0, index=3)
    assert any(name.endswith("gamma") for name in changed)
    with torch.no_grad():
        model.decoder.conv_out.weight.mul_(1.5)
        model.decoder.conv_out.bias.mul_(1.5)
    folder = tmp_path_factory.mktemp("qwenimage-vae") / "vae"
    model.save_pretrained(folder)
    return Models(folder)


def latents(frames: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(frames)
    return torch.randn(BATCH, TINY["z_dim"], frames, LATENT_H, LATENT_W, generator=gen).to(dtype)


def decode(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.decode(z)
    return out if isinstance(out, torch.Tensor) else out.sample


def test_registered_for_checkpoints() -> None:
    assert MODEL_CLASSES["AutoencoderKLQwenImage"].endswith("autoencoder_kl_qwenimage:AutoencoderKLQwenImage")


def test_decoder_weights_load_strictly(models: Models) -> None:
    expected = {k: v for k, v in models.reference().state_dict().items() if k.startswith(("decoder.", "post_quant"))}
    actual = models.native().state_dict()
    assert sorted(actual) == sorted(expected)
    assert all(torch.equal(actual[k], v) for k, v in expected.items())


@pytest.mark.parametrize("frames", [1, 2])
def test_fp32_matches_diffusers(models: Models, frames: int) -> None:
    expected, actual = decode(models.reference(), latents(frames)), decode(models.native(), latents(frames))
    assert actual.shape == expected.shape == (BATCH, 3, 1 + 4 * (frames - 1), 8 * LATENT_H, 8 * LATENT_W)
    err, max_abs = rel_l2(actual, expected), (actual - expected).abs().max().item()
    clamped = (expected.abs() == 1).float().mean().item()
    print(f"qwen-image VAE fp32 T={frames}: rel L2 {err:.3e}, max abs {max_abs:.3e} ({clamped:.2%} clamped)")
    assert err <= FP32_REL_L2 and clamped < 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bitwise_equal_on_the_same_attention_kernel(models: Models, dtype: torch.dtype) -> None:
    with attention_backend("sdpa"):
        actual = decode(models.native(dtype), latents(2, dtype))
    assert torch.equal(actual, decode(models.reference(dtype), latents(2, dtype)))


def test_bf16_within_measured_floor(models: Models) -> None:
    z = latents(1, torch.bfloat16)
    expected = decode(models.reference(torch.bfloat16), z)
    with sdpa_kernel(SDPBackend.MATH):
        other_kernel = decode(models.reference(torch.bfloat16), z)
    actual = decode(models.native(torch.bfloat16), z)
    floor, err = rel_l2(other_kernel, expected), rel_l2(actual, expected)
    print(f"qwen-image VAE bf16 T=1: native rel L2 {err:.3e} (max abs "
          f"{(actual.double() - expected.double()).abs().max():.3e}); floor (reference sdpa vs math) {floor:.3e}")
    assert floor > 0, "the reference's two attention kernels agree bitwise: no floor measured"
    assert err <= BF16_FLOOR_FACTOR * floor


def test_attributes_for_the_pipeline(models: Models) -> None:
    """What QwenImagePipeline reads around the decoder: statistics, z_dim, and the x8 scale factor."""
    native, reference = models.native(), models.reference()
    assert native.latents_mean == reference.config.latents_mean == TINY["latents_mean"]
    assert native.latents_std == reference.config.latents_std
    assert native.z_dim == reference.config.z_dim
    assert native.vae_scale_factor_spatial == 2 ** len(reference.config.temperal_downsample) == 8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decoder_base_dim": 4}, "unknown AutoencoderKLQwenImage config key 'decoder_base_dim'"),
        ({"temperal_downsample": [False, True]}, "temperal_downsample needs 3 entries"),
        ({"latents_mean": [0.0]}, "latents_mean has 1 entries but z_dim is 4"),
    ],
)
def test_unsupported_config_raises(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AutoencoderKLQwenImage.from_config({**TINY, **change})
