"""A tiny random-weight FLUX.1 checkpoint in the standard Diffusers folder format, built offline.

Parity needs a checkpoint both sides can load, with every stage of the real architecture (CLIP + T5 text
encoders, the MMDiT with guidance embedding, a 16-channel FLUX VAE, FLUX.1-dev's dynamic-shift scheduler) but
small enough to build and run on a CPU in about a second. Weights are random and a pure function of the seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from references.common.tiny_build import (
    build_once,
    config_checkpoint_dir,
    config_digest,
    finish_random_component,
    save_checkpoint,
)
from references.flux.components import FLUX_DEV_SCHEDULER, build_flux_components

# Diffusers and transformers are imported where a checkpoint is built, not here: finding the cached checkpoint
# (`tiny_flux_checkpoint` once built) must not cost their import, nor load Diffusers into a process that only
# runs the native side (`diffparity golden verify`).

# Bump when the build recipe changes, so caches built by an older recipe are not reused.
# 2: no constant parameter (norm weights and biases randomised), CLIP tokenizer with BPE merges.
# 3: randomised norm values computed in float64 (the same bytes on every x86-64 machine).
BUILD_VERSION = 3


@dataclass(frozen=True)
class TinyFluxConfig:
    """Sizes of every component. The transformer's text widths follow the encoders (T5 d_model, CLIP hidden)."""

    clip_hidden: int = 32
    clip_layers: int = 2
    clip_heads: int = 4
    clip_intermediate: int = 37
    clip_projection_dim: int = 32

    t5_d_model: int = 32
    t5_d_kv: int = 8
    t5_d_ff: int = 64
    t5_layers: int = 2
    t5_heads: int = 4
    t5_relative_buckets: int = 8
    t5_relative_max_distance: int = 20

    dit_layers: int = 2
    dit_single_layers: int = 2
    dit_heads: int = 2
    dit_head_dim: int = 16
    dit_axes_dims_rope: tuple[int, int, int] = (4, 6, 6)
    dit_guidance_embeds: bool = True

    vae_block_out_channels: tuple[int, ...] = (8, 16, 16, 16)
    vae_layers_per_block: int = 1
    vae_latent_channels: int = 16
    vae_norm_groups: int = 4
    vae_scaling_factor: float = 0.3611
    vae_shift_factor: float = 0.1159

    scheduler: dict = field(default_factory=lambda: dict(FLUX_DEV_SCHEDULER), hash=False)

    def __post_init__(self) -> None:
        if sum(self.dit_axes_dims_rope) != self.dit_head_dim:
            raise ValueError(
                f"dit_axes_dims_rope {self.dit_axes_dims_rope} must sum to dit_head_dim {self.dit_head_dim}"
            )
        if any(c % self.vae_norm_groups for c in self.vae_block_out_channels):
            raise ValueError(f"vae_block_out_channels {self.vae_block_out_channels} must divide by vae_norm_groups")

    @classmethod
    def wide(cls) -> TinyFluxConfig:
        """A wider DiT for GPU runs: hidden 1024 as 8 heads x 128 with FLUX.1's RoPE axes (16, 56, 56)."""
        return cls(dit_heads=8, dit_head_dim=128, dit_axes_dims_rope=(16, 56, 56))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short stable hash of the config, for cache folder names."""
        return config_digest(self.to_dict())


def _build_components(seed: int, config: TinyFluxConfig) -> dict:
    from references.common.tokenizers import CLIP_MERGES

    components = build_flux_components(
        config, seed, guidance_embeds=config.dit_guidance_embeds, vae_sample_size=32 * config.vae_scale_factor,
        scheduler=config.scheduler, scaling_factor=config.vae_scaling_factor, shift_factor=config.vae_shift_factor,
        clip_merges=CLIP_MERGES,
    )
    for index, name in enumerate(("text_encoder", "text_encoder_2", "transformer", "vae")):
        finish_random_component(components[name], seed, index)  # FLUX in Diffusers 0.42 has no all-zero matrix
    return components


def build_tiny_flux(out_dir: Path, seed: int = 0, config: TinyFluxConfig | None = None) -> Path:
    """Write a complete FluxPipeline folder (fp32 safetensors) with random weights determined by `seed`.

    The global torch RNG is left as it was: seeding happens inside a forked RNG state.
    """
    from diffusers import FluxPipeline

    config = config or TinyFluxConfig()
    with torch.random.fork_rng(devices=[]):
        pipe = FluxPipeline(**_build_components(seed, config))
    return save_checkpoint(pipe, out_dir, BUILD_VERSION, seed, config.to_dict())


def checkpoint_dir(seed: int = 0, config: TinyFluxConfig | None = None) -> Path:
    """The cache folder for `seed` and `config` (the default config's name carries no config hash)."""
    return config_checkpoint_dir("flux", BUILD_VERSION, seed, config, TinyFluxConfig())


def tiny_flux_checkpoint(seed: int = 0, config: TinyFluxConfig | None = None) -> Path:
    """Path of the cached tiny checkpoint for `seed` (and `config`), built once on first use (atomically)."""
    return build_once(checkpoint_dir(seed, config), lambda folder: build_tiny_flux(folder, seed=seed, config=config))
