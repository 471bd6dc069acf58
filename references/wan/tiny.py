"""Tiny random-weight Wan checkpoints in the standard Diffusers folder format, built offline.

Wan 2.1 text-to-video (WanPipeline) by default; the same builder makes the other layouts the family's cases need:
- `boundary_ratio` set: Wan 2.2 A14B, two DiTs of the same shape (different weights) switched at
  boundary_ratio * num_train_timesteps, `transformer_2` the low-noise expert;
- `image_to_video`: WanImageToVideoPipeline, the DiT taking 16 + 4 + 16 input channels (latents, mask channels,
  conditioning latents); with `image_encoder` (Wan 2.1 I2V) also a CLIP vision tower and its image processor, and
  the DiT's image path (image_dim, the added key/value projections); without it (Wan 2.2 A14B I2V) neither.

Parity needs a checkpoint both sides can load with every stage of the real architecture (UMT5 encoder with
per-layer relative bias and its own tokenizer, the Wan DiT with 3D RoPE and cross-attention, the causal 3D VAE
with Wan's latent normalisation, the flow-matching UniPC scheduler with Wan 2.1's config) but small enough to
build and run on a CPU in about a second. Weights are random and a pure function of the seed.

`TinyWanConfig.wide()` keeps the tiny VAE but gives the DiT the real Wan 2.1 1.3B width (1536 = 12 heads x 128,
ffn 8960, freq_dim 256, text_dim 4096) over 8 layers and the encoder UMT5-XXL's width (d_model 4096, 64 heads x
64, d_ff 10240) over 2 layers, for bf16 runs on a GPU (about 3 GB of fp32 weights: build it on that machine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from references.common.tiny_build import (
    build_once,
    config_checkpoint_dir,
    config_digest,
    finish_random_component,
    save_checkpoint,
    seed_component,
)

# Diffusers and transformers are imported where a checkpoint is built, not here: finding the cached checkpoint
# must not cost their import (~5 s; `diffparity gate` and `golden verify` run no Diffusers code).

# Bump when the build recipe changes, so caches built by an older recipe are not reused.
# 2: no constant parameter (norm weights and biases randomised).
# 3: randomised norm values computed in float64 (the same bytes on every x86-64 machine).
BUILD_VERSION = 3

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (flow_shift 3.0 for 480p, 5.0 for 720p).
WAN_2_1_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "solver_order": 2,
    "prediction_type": "flow_prediction",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "predict_x0": True,
    "solver_type": "bh2",
    "lower_order_final": True,
    "disable_corrector": [],
    "solver_p": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "final_sigmas_type": "zero",
    "rescale_betas_zero_snr": False,
}

# The Wan 2.1 VAE's per-channel latent statistics (AutoencoderKLWan's defaults, the real checkpoint's values):
# the pipeline decodes latents * std + mean, so the tiny VAE keeps them to exercise the denormalisation.
WAN_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class TinyWanConfig:
    """Sizes of every component. The DiT's text_dim follows the UMT5 width; its channels follow the VAE's z_dim."""

    umt5_d_model: int = 32
    umt5_d_kv: int = 8
    umt5_d_ff: int = 64
    umt5_layers: int = 2
    umt5_heads: int = 4
    umt5_relative_buckets: int = 8
    umt5_relative_max_distance: int = 20

    dit_layers: int = 2
    dit_heads: int = 2
    dit_head_dim: int = 16
    dit_ffn_dim: int = 64
    dit_freq_dim: int = 32
    dit_patch_size: tuple[int, int, int] = (1, 2, 2)

    vae_base_dim: int = 8
    vae_z_dim: int = 16
    vae_dim_mult: tuple[int, ...] = (1, 2, 2, 2)
    vae_num_res_blocks: int = 1
    vae_temperal_downsample: tuple[bool, ...] = (False, True, True)

    scheduler: dict = field(default_factory=lambda: dict(WAN_2_1_SCHEDULER), hash=False)

    # Wan 2.2 A14B: a second expert below boundary_ratio * num_train_timesteps (None: one DiT)
    boundary_ratio: float | None = None
    # image-to-video: conditioning channels in the DiT input; with image_encoder (Wan 2.1 I2V) a CLIP image path
    image_to_video: bool = False
    image_encoder: bool = True
    clip_hidden: int = 32
    clip_intermediate: int = 48
    clip_layers: int = 3  # the DiT gets the penultimate layer's state: the last one must differ from it
    clip_heads: int = 4
    clip_image_size: int = 28  # 4 x 4 patches of 7 pixels + the class token: 17 image tokens
    clip_patch: int = 7

    def __post_init__(self) -> None:
        if len(self.vae_temperal_downsample) != len(self.vae_dim_mult) - 1:
            raise ValueError(
                f"vae_temperal_downsample {self.vae_temperal_downsample} needs one entry per downsampling level "
                f"(len(vae_dim_mult) - 1 = {len(self.vae_dim_mult) - 1})"
            )
        if len(self.vae_latents_mean) != self.vae_z_dim:
            raise ValueError(f"vae_z_dim {self.vae_z_dim} must be 16: Wan's latent statistics are per channel of 16")

    @property
    def has_image_path(self) -> bool:
        """The DiT attends to CLIP image tokens (Wan 2.1 I2V)."""
        return self.image_to_video and self.image_encoder

    @property
    def dit_in_channels(self) -> int:
        """Latents, plus the mask channels (one per frame of a temporal group) and conditioning latents for I2V."""
        return 2 * self.vae_z_dim + self.vae_scale_factor_temporal if self.image_to_video else self.vae_z_dim

    @classmethod
    def wide(cls) -> TinyWanConfig:
        """The real Wan 2.1 1.3B DiT width over 8 layers, UMT5-XXL's width over 2 layers; the tiny VAE."""
        return cls(
            umt5_d_model=4096, umt5_d_kv=64, umt5_d_ff=10240, umt5_layers=2, umt5_heads=64,
            umt5_relative_buckets=32, umt5_relative_max_distance=128,
            dit_layers=8, dit_heads=12, dit_head_dim=128, dit_ffn_dim=8960, dit_freq_dim=256,
        )  # fmt: skip

    @property
    def vae_latents_mean(self) -> tuple[float, ...]:
        return WAN_LATENTS_MEAN

    @property
    def vae_latents_std(self) -> tuple[float, ...]:
        return WAN_LATENTS_STD

    @property
    def vae_scale_factor_spatial(self) -> int:
        return 2 ** (len(self.vae_dim_mult) - 1)

    @property
    def vae_scale_factor_temporal(self) -> int:
        return 2 ** sum(self.vae_temperal_downsample)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """(1, C, T, h, w) of the initial noise for a request, as WanPipeline.prepare_latents computes it."""
        temporal, spatial = self.vae_scale_factor_temporal, self.vae_scale_factor_spatial
        return (1, self.vae_z_dim, (frames - 1) // temporal + 1, height // spatial, width // spatial)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short stable hash of the config, for cache folder names."""
        return config_digest(self.to_dict())


def _build_components(seed: int, config: TinyWanConfig) -> dict:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from references.common.tokenizers import build_umt5_tokenizer

    tokenizer = build_umt5_tokenizer()

    seed_component(seed, 0)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=config.umt5_d_model,
            d_kv=config.umt5_d_kv,
            d_ff=config.umt5_d_ff,
            num_layers=config.umt5_layers,
            num_heads=config.umt5_heads,
            relative_attention_num_buckets=config.umt5_relative_buckets,
            relative_attention_max_distance=config.umt5_relative_max_distance,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )

    seed_component(seed, 1)
    transformer = _build_dit(config)

    seed_component(seed, 2)
    vae = AutoencoderKLWan(
        base_dim=config.vae_base_dim,
        z_dim=config.vae_z_dim,
        dim_mult=list(config.vae_dim_mult),
        num_res_blocks=config.vae_num_res_blocks,
        attn_scales=[],
        temperal_downsample=list(config.vae_temperal_downsample),
        dropout=0.0,
        latents_mean=list(config.vae_latents_mean),
        latents_std=list(config.vae_latents_std),
        scale_factor_temporal=config.vae_scale_factor_temporal,
        scale_factor_spatial=config.vae_scale_factor_spatial,
    )

    models: dict[str, torch.nn.Module] = {"text_encoder": text_encoder, "transformer": transformer, "vae": vae}
    if config.boundary_ratio is not None:
        seed_component(seed, 3)  # the low-noise expert: the same architecture, its own weights
        models["transformer_2"] = _build_dit(config)
    if config.has_image_path:
        seed_component(seed, 4)
        models["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=config.clip_hidden, intermediate_size=config.clip_intermediate,
            num_hidden_layers=config.clip_layers, num_attention_heads=config.clip_heads,
            image_size=config.clip_image_size, patch_size=config.clip_patch, projection_dim=config.clip_hidden,
            hidden_act="gelu",
        ))
    # a component's index is its seed slot, as before the optional ones existed (the T2V weights are unchanged)
    slots = {"text_encoder": 0, "transformer": 1, "vae": 2, "transformer_2": 3, "image_encoder": 4}
    for name, model in models.items():
        finish_random_component(model, seed, slots[name])

    components: dict = {"tokenizer": tokenizer, **models, "scheduler": UniPCMultistepScheduler(**config.scheduler)}
    if config.has_image_path:
        side = config.clip_image_size
        components["image_processor"] = CLIPImageProcessorPil(size={"shortest_edge": side},
                                                           crop_size={"height": side, "width": side})
    return components


def _build_dit(config: TinyWanConfig) -> Any:
    """The Wan DiT of `config` (the caller seeds it): with the CLIP image path for Wan 2.1 I2V."""
    from diffusers import WanTransformer3DModel

    image = {"image_dim": config.clip_hidden, "added_kv_proj_dim": config.dit_heads * config.dit_head_dim}
    return WanTransformer3DModel(
        patch_size=tuple(config.dit_patch_size),
        num_attention_heads=config.dit_heads,
        attention_head_dim=config.dit_head_dim,
        in_channels=config.dit_in_channels,
        out_channels=config.vae_z_dim,
        text_dim=config.umt5_d_model,
        freq_dim=config.dit_freq_dim,
        ffn_dim=config.dit_ffn_dim,
        num_layers=config.dit_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        **(image if config.has_image_path else {}),
    )


def build_tiny_wan(out_dir: Path, seed: int = 0, config: TinyWanConfig | None = None) -> Path:
    """Write a complete WanPipeline (or WanImageToVideoPipeline) folder (fp32 safetensors) with random weights
    determined by `seed`.

    The global torch RNG is left as it was: seeding happens inside a forked RNG state.
    """
    from diffusers import WanImageToVideoPipeline, WanPipeline

    config = config or TinyWanConfig()
    pipeline_cls = WanImageToVideoPipeline if config.image_to_video else WanPipeline
    extra = {} if config.boundary_ratio is None else {"boundary_ratio": config.boundary_ratio}
    with torch.random.fork_rng(devices=[]):
        pipe = pipeline_cls(**_build_components(seed, config), **extra)
    return save_checkpoint(pipe, out_dir, BUILD_VERSION, seed, config.to_dict())


def checkpoint_dir(seed: int = 0, config: TinyWanConfig | None = None) -> Path:
    """The cache folder for `seed` and `config` (the default config's name carries no config hash)."""
    return config_checkpoint_dir("wan", BUILD_VERSION, seed, config, TinyWanConfig())


def tiny_wan_checkpoint(seed: int = 0, config: TinyWanConfig | None = None) -> Path:
    """Path of the cached tiny checkpoint for `seed` (and `config`), built once on first use (atomically)."""
    return build_once(checkpoint_dir(seed, config), lambda folder: build_tiny_wan(folder, seed=seed, config=config))
