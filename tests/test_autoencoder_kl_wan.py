"""Parity of the native Wan 2.1 VAE (decoder; encoder in tests/test_autoencoder_kl_wan_encoder.py) with Diffusers'
AutoencoderKLWan on tiny random VAEs saved to disk."""

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
from diffusers import AutoencoderKLWan as DiffusersAutoencoderKLWan
from numerics import cosine, rel_l2

from native_models.attention import attention_backend
from native_models.loader import load_component
from native_models.models.autoencoder_kl_wan import AutoencoderKLWan

# Wan 2.1's layout at a tiny width: x8 spatially, two temporal upsamplers (1 + 4 (T-1) frames).
WAN21_LIKE: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}
# Another layout: x4, one temporal upsampler in the *second* up block (1 + 2 (T-1) frames), a decoder width
# unlike the encoder's, two resnets per level, encoder attention (decode ignores it), its own latent statistics.
VARIANT: dict[str, Any] = {
    "base_dim": 8,
    "decoder_base_dim": 7,  # odd: an upsampler's channel halving floors (7 -> 3)
    "z_dim": 8,
    "dim_mult": [1, 1, 2],
    "num_res_blocks": 2,
    "attn_scales": [1.0],
    "temperal_downsample": [True, False],
    "latents_mean": [0.1 * i for i in range(8)],
    "latents_std": [1.0 + 0.1 * i for i in range(8)],
    "scale_factor_spatial": 4,
    "scale_factor_temporal": 2,
}
CONFIGS = {"wan21_like": WAN21_LIKE, "variant": VARIANT}
FACTORS = {"wan21_like": (8, 4), "variant": (4, 2)}  # (spatial, temporal), from the architectures above
LATENT_FRAMES = (1, 2, 3)
BATCH, LATENT_H, LATENT_W = 2, 3, 5  # non-square, odd

DTYPES = (torch.float32, torch.bfloat16)
FP32_REL_L2_MAX = 1e-5  # measured 5e-7 .. 1.2e-6 (math attention here vs torch's default CPU SDPA kernel there)
# bf16: measured >= 0.99963. The gap is the attention kernel alone: with 'sdpa' selected the outputs are
# bit-identical (test below), and Diffusers under the math kernel is exactly as far from Diffusers' default.
BF16_COSINE_MIN = 0.999
# bf16 error against an fp64 decode, as a multiple of Diffusers' own bf16 error against it (PyTorch's accuracy
# check allows 2x-3x for low precision). Measured 0.83 .. 1.04.
BF16_FLOOR_RATIO_MAX = 2.0


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread: these decodes are tiny, and on a busy machine thread hand-offs cost more than the math."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class Case:
    """One saved random Wan VAE, latents per frame count, and Diffusers' decodes per (frames, dtype)."""

    name: str
    folder: Path
    config: dict[str, Any]
    latents: dict[int, torch.Tensor] = field(default_factory=dict)  # T -> (B, z_dim, T, h, w) float32
    expected: dict[tuple[int, torch.dtype], torch.Tensor] = field(default_factory=dict)  # also float64

    def native(self, dtype: torch.dtype = torch.float32) -> AutoencoderKLWan:
        return load_component(AutoencoderKLWan, self.folder, dtype=dtype)


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    """A random Diffusers Wan VAE (non-trivial gammas and biases) saved to disk and decoded by Diffusers.

    `conv_out` is scaled down so that only ~0.1% of the output reaches the [-1, 1] clamp: the clamp is exercised
    without hiding most of the comparison.
    """
    config = CONFIGS[request.param]
    torch.manual_seed(0)
    model = DiffusersAutoencoderKLWan(**config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        model.decoder.conv_out.weight.mul_(0.3)
        model.decoder.conv_out.bias.mul_(0.3)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    result = Case(request.param, folder, config)
    references = {dtype: torch.nn.Module.to(copy.deepcopy(model), dtype) for dtype in (*DTYPES, torch.float64)}
    with torch.no_grad():
        for frames in LATENT_FRAMES:
            generator = torch.Generator().manual_seed(frames)
            z = torch.randn(BATCH, config["z_dim"], frames, LATENT_H, LATENT_W, generator=generator)
            result.latents[frames] = z
            for dtype, reference in references.items():
                result.expected[frames, dtype] = reference.decode(z.to(dtype)).sample
    return result


@pytest.mark.parametrize("frames", LATENT_FRAMES)
def test_fp32_matches_diffusers(case: Case, frames: int, record_property: Any) -> None:
    native = case.native()
    expected = case.expected[frames, torch.float32]
    actual = native.decode(case.latents[frames])
    spatial, temporal = FACTORS[case.name]
    video_shape = (BATCH, 3, 1 + temporal * (frames - 1), LATENT_H * spatial, LATENT_W * spatial)
    assert actual.shape == expected.shape == video_shape
    error = rel_l2(actual, expected)
    record_property("fp32_rel_l2", error)
    print(f"fp32 rel L2 {case.name} T={frames}: {error:.3e}")
    assert error < FP32_REL_L2_MAX
    assert actual.min() >= -1.0 and actual.max() <= 1.0


@pytest.mark.parametrize("frames", LATENT_FRAMES)
def test_bf16_close_to_diffusers(case: Case, frames: int, record_property: Any) -> None:
    expected = case.expected[frames, torch.bfloat16]
    actual = case.native(torch.bfloat16).decode(case.latents[frames].bfloat16())
    assert actual.dtype == expected.dtype == torch.bfloat16
    similarity = cosine(expected, actual)
    record_property("bf16_cosine", similarity)
    print(f"bf16 cosine {case.name} T={frames}: {similarity:.6f}")
    assert similarity >= BF16_COSINE_MIN


@pytest.mark.parametrize("frames", LATENT_FRAMES)
def test_bf16_error_within_diffusers_floor(case: Case, frames: int, record_property: Any) -> None:
    """Against an fp64 decode, native bf16 is about as accurate as Diffusers' bf16 (a floor, not a fixed number)."""
    exact = case.expected[frames, torch.float64]
    actual = case.native(torch.bfloat16).decode(case.latents[frames].bfloat16())
    ratio = rel_l2(actual, exact) / rel_l2(case.expected[frames, torch.bfloat16], exact)
    record_property("bf16_floor_ratio", ratio)
    print(f"bf16 error / Diffusers bf16 error {case.name} T={frames}: {ratio:.2f}")
    assert ratio <= BF16_FLOOR_RATIO_MAX


@pytest.mark.parametrize("dtype", DTYPES)
def test_bit_identical_with_sdpa_backend(case: Case, dtype: torch.dtype) -> None:
    """Diffusers calls torch's SDPA with torch's own kernel choice; selecting 'sdpa' reproduces it exactly,
    including the feature cache across 3 latent frames and the clamp."""
    frames = LATENT_FRAMES[-1]
    with attention_backend("sdpa"):
        actual = case.native(dtype).decode(case.latents[frames].to(dtype))
    assert torch.equal(case.expected[frames, dtype], actual)


def test_decoding_is_causal_and_streamed(case: Case) -> None:
    """Decoding the first k latent frames gives exactly the first frames of decoding all of them."""
    native = case.native()
    full = native.decode(case.latents[3])
    for k in (1, 2):
        prefix = native.decode(case.latents[3][:, :, :k])
        assert torch.equal(prefix, full[:, :, : native.decoded_num_frames(k)])


def test_attributes_follow_config(case: Case) -> None:
    native = case.native()
    spatial, temporal = FACTORS[case.name]
    assert native.vae_scale_factor_spatial == spatial
    assert native.vae_scale_factor_temporal == temporal
    assert [native.decoded_num_frames(t) for t in (1, 2, 3, 21)] == [1 + temporal * (t - 1) for t in (1, 2, 3, 21)]
    assert native.z_dim == native.latent_channels == case.config["z_dim"]
    reference_config = DiffusersAutoencoderKLWan.load_config(case.folder)
    assert native.latents_mean == reference_config["latents_mean"]
    assert native.latents_std == reference_config["latents_std"]
    reference = DiffusersAutoencoderKLWan.from_pretrained(case.folder, use_safetensors=True)
    assert {k: v.shape for k, v in native.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}  # the encoder (and quant_conv) included


def test_wan21_frame_formula() -> None:
    """The Wan 2.1 VAE: 1 latent frame -> 1 video frame, each further one -> 4 (81 frames <- 21 latents)."""
    native = AutoencoderKLWan.from_config(WAN21_LIKE)
    assert [native.decoded_num_frames(t) for t in (1, 2, 3, 5, 21)] == [1, 5, 9, 17, 81]


# Wan-AI/Wan2.1-T2V-1.3B-Diffusers vae/config.json (statistics left to the defaults, which equal it).
WAN21_VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKLWan",
    "_diffusers_version": "0.33.0.dev0",
    "attn_scales": [],
    "base_dim": 96,
    "dim_mult": [1, 2, 4, 4],
    "dropout": 0.0,
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
    "z_dim": 16,
}


def test_full_size_parameter_names_and_shapes_match() -> None:
    """The real Wan 2.1 architecture, built on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        reference = DiffusersAutoencoderKLWan.from_config(WAN21_VAE_CONFIG)
        native = AutoencoderKLWan.from_config(WAN21_VAE_CONFIG)
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in native.state_dict().items()} == expected
    assert (native.vae_scale_factor_spatial, native.vae_scale_factor_temporal) == (8, 4)
    assert native.latents_mean == list(reference.config.latents_mean)
    assert native.latents_std == list(reference.config.latents_std)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"is_residual": True}, "is_residual"),  # Wan 2.2's VAE
        ({"patch_size": 2}, "patch_size=2"),
        ({"temperal_downsample": [False, True]}, "temperal_downsample needs 3"),
        ({"scale_factor_spatial": 16}, "scale_factor_spatial=16"),
        ({"scale_factor_temporal": 8}, "scale_factor_temporal=8"),
        ({"z_dim": 8}, "latents_mean has 16 entries but z_dim is 8"),
        ({"decoder_conv": 3}, "decoder_conv"),
    ],
)
def test_unsupported_config_raises(override: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        AutoencoderKLWan.from_config({**WAN21_LIKE, **override, "_class_name": "AutoencoderKLWan"})


def test_decode_rejects_wrong_latent_shape_and_dtype() -> None:
    native = AutoencoderKLWan.from_config(WAN21_LIKE).eval()
    with pytest.raises(ValueError, match=r"\(1, 16, 4, 4\)"):
        native.decode(torch.zeros(1, 16, 4, 4))
    with pytest.raises(ValueError, match=r"\(1, 8, 1, 4, 4\)"):
        native.decode(torch.zeros(1, 8, 1, 4, 4))
    with pytest.raises(ValueError, match="bfloat16"):
        native.decode(torch.zeros(1, 16, 1, 4, 4, dtype=torch.bfloat16))
