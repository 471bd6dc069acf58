"""The decoding half of Qwen-Image's VAE (Diffusers' AutoencoderKLQwenImage): the Wan 2.1 causal 3D VAE, reused.

Diffusers' AutoencoderKLQwenImage is a copy of the Wan 2.1 VAE (fine-tuned weights): same modules, same parameter
names, same causal frame-by-frame decode, same clamp to [-1, 1]. Its only differences are in config.json: the RGB
channel count is `input_channels` (Wan: `out_channels`), and there is no decoder width, residual or patch option;
a cache slice `-min(CACHE_T, T)` instead of `-CACHE_T` selects the same frames. So this module only reads the
Qwen-Image config and builds the native Wan decoder from it (native_models/models/autoencoder_kl_wan.py).

QwenImagePipeline decodes one latent frame: latents (B, 16, 1, h, w), denormalised by the pipeline first
(`z / (1 / latents_std) + latents_mean`, per channel, in the VAE dtype), decoded to (B, 3, 1, 8h, 8w), and frame 0
taken. The statistics and the scale factor (2 ** len(temperal_downsample) = 8) are exposed as attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from native_models.config_dict import split_config
from native_models.models.autoencoder_kl_wan import AutoencoderKLWanConfig, AutoencoderKLWanDecoder

# Encoder-only or training-only keys: attention scales (the decoder never adds attention from them), dropout
# (identity in eval).
IGNORED_KEYS = frozenset({"attn_scales", "dropout"})
_WAN_DEFAULTS = AutoencoderKLWanConfig()


@dataclass(frozen=True)
class AutoencoderKLQwenImageConfig:
    """Diffusers' AutoencoderKLQwenImage config.json keys and defaults."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # Diffusers' spelling, kept for the key
    input_channels: int = 3
    latents_mean: tuple[float, ...] = _WAN_DEFAULTS.latents_mean  # Qwen-Image's defaults equal Wan 2.1's
    latents_std: tuple[float, ...] = _WAN_DEFAULTS.latents_std
    ignored: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> AutoencoderKLQwenImageConfig:
        """Parse a Diffusers config.json dict; unknown keys raise ValueError naming the key."""
        values, ignored = split_config(cls, config, IGNORED_KEYS, "AutoencoderKLQwenImage", lists_to_tuples=True)
        return cls(**values, ignored=ignored)

    def wan_config(self) -> AutoencoderKLWanConfig:
        """The Wan decoder configuration that builds the same modules (validated there)."""
        if self.input_channels < 1:
            raise ValueError(f"input_channels must be positive, got {self.input_channels}")
        config = AutoencoderKLWanConfig(
            base_dim=self.base_dim, z_dim=self.z_dim, dim_mult=self.dim_mult, num_res_blocks=self.num_res_blocks,
            temperal_downsample=self.temperal_downsample, out_channels=self.input_channels,
            latents_mean=self.latents_mean, latents_std=self.latents_std,
            scale_factor_temporal=None, scale_factor_spatial=None,  # derived from the architecture, as Diffusers does
            ignored=self.ignored,
        )  # fmt: skip
        config.validate()
        return config


class AutoencoderKLQwenImage(AutoencoderKLWanDecoder):
    """Decode-only Qwen-Image VAE; `decode` equals Diffusers' `AutoencoderKLQwenImage.decode(z).sample`. The
    encoder is neither built nor loaded (text-to-image only decodes), as for Wan text-to-video."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AutoencoderKLQwenImage:
        return cls(AutoencoderKLQwenImageConfig.from_dict(config).wan_config())


__all__ = ["AutoencoderKLQwenImage", "AutoencoderKLQwenImageConfig"]
