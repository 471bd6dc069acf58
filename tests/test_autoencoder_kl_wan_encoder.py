"""Parity of the native Wan VAE *encoder* (image-to-video conditioning) with Diffusers' AutoencoderKLWan.encode.

Tiny random VAEs (every parameter perturbed, so none is constant), saved with `save_pretrained` and loaded by both
sides; videos of 1, 5 and 9 frames (1 + 4k: Diffusers encodes chunks of 1, 4, 4, ...), batch 2, non-square. Two
layouts: Wan 2.1's (x8, temporal /4: latent frames 1 + k) and a variant (x4, one temporal /2 in the *first* level,
two resnets per level, z_dim 8: latent frames 1 + 2k).

Bars: fp32 rel_l2 <= 1e-5 against Diffusers (measured up to 3.4e-7: the mid-block attention on the default CPU
kernel); bit for bit on torch's SDPA kernel choice in fp32 and bf16; bf16 on the default kernel within Diffusers'
own difference between the two kernels (two correct bf16 implementations), measured, not chosen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import AutoencoderKLWan as DiffusersAutoencoderKLWan
from numerics import rel_l2
from torch.nn.attention import SDPBackend, sdpa_kernel

from native_models.attention import attention_backend
from native_models.loader import load_component
from native_models.models.autoencoder_kl_wan import AutoencoderKLWan

WAN21_LIKE: dict[str, Any] = {
    "base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_scales": [],
    "temperal_downsample": [False, True, True],
}  # fmt: skip
VARIANT: dict[str, Any] = {
    "base_dim": 8, "decoder_base_dim": 7, "z_dim": 8, "dim_mult": [1, 1, 2], "num_res_blocks": 2, "attn_scales": [],
    "temperal_downsample": [True, False], "latents_mean": [0.1 * i for i in range(8)],
    "latents_std": [1.0 + 0.1 * i for i in range(8)], "scale_factor_spatial": 4, "scale_factor_temporal": 2,
}  # fmt: skip
CONFIGS = {"wan21_like": WAN21_LIKE, "variant": VARIANT}
FACTORS = {"wan21_like": (8, 4), "variant": (4, 2)}  # (spatial, temporal)
FRAMES = (1, 5, 9)
BATCH, HEIGHT, WIDTH = 2, 32, 48
DTYPES = (torch.float32, torch.bfloat16)
FP32_REL_L2_MAX = 1e-5


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def video(frames: int, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1]; as I2V conditioning: the first frame an image, the rest zeros, except for the
    second batch item, whose later frames are random too (so every chunk carries signal)."""
    generator = torch.Generator().manual_seed(frames)
    x = torch.rand(BATCH, 3, frames, height, width, generator=generator) * 2 - 1
    x[0, :, 1:] = 0
    return x


@dataclass
class Case:
    name: str
    folder: Path
    config: dict[str, Any]
    references: dict[torch.dtype, torch.nn.Module] = field(default_factory=dict)

    def native(self, dtype: torch.dtype = torch.float32) -> AutoencoderKLWan:
        return load_component(AutoencoderKLWan, self.folder, dtype=dtype)

    def expected(self, x: torch.Tensor, dtype: torch.dtype, math_kernel: bool = False) -> torch.Tensor:
        """Diffusers' posterior parameters (mean and log-variance), (B, 2 z_dim, T', h, w)."""
        with torch.no_grad():
            if math_kernel:
                with sdpa_kernel(SDPBackend.MATH):
                    return self.references[dtype].encode(x.to(dtype)).latent_dist.parameters
            return self.references[dtype].encode(x.to(dtype)).latent_dist.parameters


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    torch.manual_seed(0)
    model = DiffusersAutoencoderKLWan(**CONFIGS[request.param]).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp(f"enc-{request.param}")
    model.save_pretrained(folder)
    result = Case(request.param, folder, CONFIGS[request.param])
    for dtype in DTYPES:
        reference = DiffusersAutoencoderKLWan.from_pretrained(folder, dtype=dtype, use_safetensors=True)
        result.references[dtype] = reference.eval()
    return result


@pytest.mark.parametrize("frames", FRAMES)
def test_fp32_matches_diffusers(case: Case, frames: int) -> None:
    x = video(frames)
    expected = case.expected(x, torch.float32)
    posterior = case.native().encode(x)
    spatial, temporal = FACTORS[case.name]
    latent_frames = 1 + (frames - 1) // temporal
    assert posterior.parameters.shape == expected.shape == (
        BATCH, 2 * case.config["z_dim"], latent_frames, HEIGHT // spatial, WIDTH // spatial)
    assert case.native().encoded_num_frames(frames) == latent_frames
    err = rel_l2(posterior.parameters, expected)
    mode_err = rel_l2(posterior.mode(), expected[:, : case.config["z_dim"]])
    print(f"encode fp32 {case.name} F={frames}: rel L2 {err:.3e} (mode {mode_err:.3e})")
    assert err <= FP32_REL_L2_MAX and mode_err <= FP32_REL_L2_MAX


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_bit_identical_on_the_same_attention_kernel(case: Case, dtype: torch.dtype) -> None:
    """On torch's SDPA choice (what Diffusers calls) the chunked encode, its caches and quant_conv match bit for
    bit; so do the posterior mode and a sample from the same generator."""
    x = video(FRAMES[-1])
    with attention_backend("sdpa"):
        posterior = case.native(dtype).encode(x.to(dtype))
    with torch.no_grad():
        reference = case.references[dtype].encode(x.to(dtype)).latent_dist
    assert torch.equal(posterior.parameters, reference.parameters)
    assert torch.equal(posterior.mode(), reference.mode())
    sample = posterior.sample(torch.Generator().manual_seed(3))
    assert torch.equal(sample, reference.sample(torch.Generator().manual_seed(3)))
    assert not torch.equal(sample, posterior.mode())


@pytest.mark.parametrize("frames", FRAMES)
def test_bf16_within_the_two_kernel_floor(case: Case, frames: int) -> None:
    """bf16 on the default CPU kernel: no further from Diffusers than Diffusers on the math kernel is."""
    x = video(frames)
    expected = case.expected(x, torch.bfloat16)
    floor = rel_l2(case.expected(x, torch.bfloat16, math_kernel=True), expected)
    actual = case.native(torch.bfloat16).encode(x.bfloat16()).parameters
    err = rel_l2(actual, expected)
    print(f"encode bf16 {case.name} F={frames}: rel L2 {err:.3e}, two-kernel floor {floor:.3e}")
    assert actual.dtype == torch.bfloat16 and err <= floor


def test_odd_sizes_match(case: Case) -> None:
    """Sizes that are no multiple of the VAE factor (the zero-padded stride-2 convs round up) still match."""
    x = video(5, height=30, width=44)
    with attention_backend("sdpa"):
        actual = case.native().encode(x).parameters
    assert torch.equal(actual, case.expected(x, torch.float32))


def test_encoding_is_causal(case: Case) -> None:
    """Encoding the first 1 + 4k frames gives exactly the first latent frames of encoding all of them."""
    native = case.native()
    full = native.encode(video(9)).parameters
    for frames in (1, 5):
        prefix = native.encode(video(9)[:, :, :frames]).parameters
        assert torch.equal(prefix, full[:, :, : native.encoded_num_frames(frames)])


def test_encode_rejects_bad_video() -> None:
    native = AutoencoderKLWan.from_config(WAN21_LIKE).eval()
    with pytest.raises(ValueError, match=r"1 \+ 4k, H, W\) video, got \(1, 3, 6, 16, 16\)"):
        native.encode(torch.zeros(1, 3, 6, 16, 16))  # Diffusers would silently drop the sixth frame
    with pytest.raises(ValueError, match=r"\(B, 3, 1 \+ 4k, H, W\) video, got \(1, 4, 5, 16, 16\)"):
        native.encode(torch.zeros(1, 4, 5, 16, 16))
    with pytest.raises(ValueError, match="video is torch.bfloat16 but the VAE weights are torch.float32"):
        native.encode(torch.zeros(1, 3, 5, 16, 16, dtype=torch.bfloat16))


def test_encoder_attention_is_refused() -> None:
    """Diffusers' encoder cannot run attn_scales (its WanAttentionBlock takes no cache): nothing to match, so the
    native encode refuses too; loading and decoding such a VAE still work."""
    config = {**WAN21_LIKE, "attn_scales": [1.0]}
    reference = DiffusersAutoencoderKLWan(**config).eval()
    with pytest.raises(TypeError), torch.no_grad():
        reference.encode(torch.zeros(1, 3, 1, 16, 16))
    native = AutoencoderKLWan.from_config(config)
    assert {k: v.shape for k, v in native.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}
    with pytest.raises(ValueError, match=r"attn_scales=\[1.0\]: Diffusers' Wan encoder cannot run"):
        native.encode(torch.zeros(1, 3, 1, 16, 16))


def test_posterior_sample_draws_like_diffusers() -> None:
    """mean + std * noise, the noise a CPU draw in the parameters' dtype (log-variance clamped to -30..20)."""
    parameters = torch.randn(2, 8, 1, 3, 5, generator=torch.Generator().manual_seed(0)) * 30
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from native_models.models.autoencoder_kl_wan import DiagonalGaussian

    ours, theirs = DiagonalGaussian(parameters), DiagonalGaussianDistribution(parameters)
    assert torch.equal(ours.std, theirs.std) and torch.equal(ours.mode(), theirs.mode())
    assert torch.equal(ours.sample(torch.Generator().manual_seed(1)), theirs.sample(torch.Generator().manual_seed(1)))
