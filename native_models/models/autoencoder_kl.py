"""The decoding half of a Diffusers-format AutoencoderKL (the SD / SDXL / SD3 / FLUX.1 VAE).

Only what turns latents into pixels is built: `post_quant_conv` (when the config has one) and `decoder`. Module
and parameter names equal Diffusers' state-dict keys, so the checkpoint loads strictly once the encoder's keys
are dropped by `convert_checkpoint_keys`. The arithmetic follows Diffusers op for op (same op order, same
layouts fed to GroupNorm and attention) so fp32 results agree to rounding and bf16 results stay close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from native_models.attention import attention
from native_models.config_dict import split_config

# Every normalisation in the VAE decoder uses this epsilon (Diffusers hard-codes it in Decoder).
NORM_EPS = 1e-6

# Diffusers' get_activation table, restricted to parameter-free torch modules.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "mish": nn.Mish,
}

SUPPORTED_UP_BLOCKS = ("UpDecoderBlock2D",)

# Config keys that only shape the encoder (or tiling, which the native decoder does not do): read and ignored.
ENCODER_ONLY_KEYS = frozenset({"in_channels", "down_block_types", "use_quant_conv", "sample_size"})


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """Decoder hyper-parameters, with Diffusers' AutoencoderKL defaults for any key a config.json leaves out."""

    out_channels: int = 3
    latent_channels: int = 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    norm_num_groups: int = 32
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    # Read by pipelines around the decoder, not by the decoder itself.
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    ignored: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> AutoencoderKLConfig:
        """Parse a Diffusers config.json dict; unknown keys and unsupported options raise ValueError."""
        values, ignored = split_config(cls, config, ENCODER_ONLY_KEYS, "AutoencoderKL", lists_to_tuples=True)
        parsed = cls(**values, ignored=ignored)
        parsed.validate()
        return parsed

    def validate(self) -> None:
        """Reject configurations whose numerics this decoder does not reproduce."""
        if not self.block_out_channels:
            raise ValueError("block_out_channels is empty")
        if len(self.up_block_types) != len(self.block_out_channels):
            raise ValueError(
                f"up_block_types has {len(self.up_block_types)} entries but block_out_channels has "
                f"{len(self.block_out_channels)}: {list(self.up_block_types)} vs {list(self.block_out_channels)}"
            )
        for block_type in self.up_block_types:
            # Diffusers' get_up_block strips a "UNetRes" prefix before dispatching.
            name = block_type.removeprefix("UNetRes")
            if name not in SUPPORTED_UP_BLOCKS:
                raise ValueError(f"unsupported up_block_type '{block_type}' (only {', '.join(SUPPORTED_UP_BLOCKS)})")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"unsupported act_fn '{self.act_fn}' (one of {', '.join(ACTIVATIONS)})")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups != 0:
                raise ValueError(
                    f"block_out_channels entry {channels} is not divisible by norm_num_groups {self.norm_num_groups}"
                )
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        for name in ("scaling_factor", "shift_factor"):  # the pipeline divides and shifts latents by them
            value = getattr(self, name)
            if value is None and name == "shift_factor":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or (
                    name == "scaling_factor" and value == 0):
                raise ValueError(f"{name} must be a finite number{' other than 0' * (name == 'scaling_factor')}, "
                                 f"got {value!r}")


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """Pre-norm residual block without time embedding (Diffusers' ResnetBlock2D as the VAE configures it)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, act_fn: str) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = ACTIVATIONS[act_fn]()
        # A 1x1 projection of the skip path only where the channel count changes.
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.nonlinearity(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        # Diffusers divides by output_scale_factor, which is 1 for the VAE: an exact no-op, left out.
        return skip + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all pixels with a residual; Diffusers' mid-block Attention.

    The VAE sets the head dim to the channel count, so there is exactly one head of size C.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # key "to_out.0", as in Diffusers

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        b, c, height, width = x.shape
        # Normalise the (B, C, L) view, as Diffusers does, then go to token layout.
        tokens = self.group_norm(x.view(b, c, height * width)).transpose(1, 2)  # (B, L, C)
        # One head: (B, L, C) -> (B, 1, L, C), through the same view/transpose Diffusers uses (same strides).
        q = self.to_q(tokens).view(b, -1, 1, c).transpose(1, 2)
        k = self.to_k(tokens).view(b, -1, 1, c).transpose(1, 2)
        v = self.to_v(tokens).view(b, -1, 1, c).transpose(1, 2)
        out = attention(q, k, v).transpose(1, 2).reshape(b, height * width, c)  # (B, L, C)
        out = self.to_out[0](out)
        out = out.transpose(1, 2).reshape(b, c, height, width)  # (B, C, H, W)
        return out + x


class MidBlock(nn.Module):
    """resnet -> [attention] -> resnet at the lowest resolution (Diffusers' UNetMidBlock2D, one layer)."""

    def __init__(self, channels: int, groups: int, act_fn: str, add_attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, act_fn) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups)]) if add_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w)
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv.

    Diffusers casts bf16 to fp32 around the interpolation only on torch < 2.1; nearest-neighbour copies values,
    so interpolating in the input dtype is bit-identical either way.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpBlock(nn.Module):
    """`num_layers` resnets, then an optional x2 upsampler (Diffusers' UpDecoderBlock2D)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, groups: int, act_fn: str, add_upsample: bool
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, act_fn)
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    """Latents (B, C_lat, h, w) -> image (B, C_out, h*f, w*f), f = 2**(len(block_out_channels) - 1)."""

    def __init__(self, cfg: AutoencoderKLConfig) -> None:
        super().__init__()
        channels = list(reversed(cfg.block_out_channels))  # deepest first
        groups = cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, channels[0], kernel_size=3, padding=1)
        self.mid_block = MidBlock(channels[0], groups, cfg.act_fn, cfg.mid_block_add_attention)
        blocks = []
        for i, out_ch in enumerate(channels):
            in_ch = channels[max(i - 1, 0)]
            is_last = i == len(channels) - 1
            # Decoder up blocks have one resnet more than the encoder's down blocks.
            blocks.append(UpBlock(in_ch, out_ch, cfg.layers_per_block + 1, groups, cfg.act_fn, not is_last))
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = group_norm(channels[-1], groups)
        self.conv_act = nn.SiLU()  # SiLU regardless of act_fn, as in Diffusers' Decoder
        self.conv_out = nn.Conv2d(channels[-1], cfg.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))  # (B, C_deep, h, w)
        for block in self.up_blocks:
            x = block(x)  # spatial x2 per block except the last
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))  # (B, C_out, H, W)


# Old checkpoints name the mid-block attention projections differently; Diffusers renames them on load.
_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class AutoencoderKL(nn.Module):
    """Decode-only AutoencoderKL; `decode` equals Diffusers' `AutoencoderKL.decode(z).sample` (no tiling/slicing).

    Pipelines scale latents before decoding; this class only exposes the factors:
    FLUX / SD3 use `z / scaling_factor + shift_factor`, SD / SDXL `z / scaling_factor`. `shift_factor` stays None
    when the config has none (Diffusers passes None through too; only pipelines that ignore it work then).
    """

    def __init__(self, config: AutoencoderKLConfig) -> None:
        super().__init__()
        self.config = config
        self.scaling_factor: float = config.scaling_factor
        self.shift_factor: float | None = config.shift_factor
        self.vae_scale_factor: int = 2 ** (len(config.block_out_channels) - 1)
        self.latent_channels: int = config.latent_channels
        self.force_upcast: bool = config.force_upcast
        self.latents_mean = config.latents_mean
        self.latents_std = config.latents_std
        if config.use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, kernel_size=1)
        else:
            self.post_quant_conv = None
        self.decoder = Decoder(config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AutoencoderKL:
        return cls(AutoencoderKLConfig.from_dict(config))

    def convert_checkpoint_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop encoder-side weights (`encoder.*`, `quant_conv.*`) and rename legacy attention keys."""
        converted: dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            if key.startswith(("encoder.", "quant_conv.")):
                continue
            if key.startswith("decoder.mid_block.attentions."):
                prefix, name, suffix = key.rsplit(".", 2)
                if name in _LEGACY_ATTENTION_NAMES:
                    key = f"{prefix}.{_LEGACY_ATTENTION_NAMES[name]}.{suffix}"
            converted[key] = tensor
        return converted

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C_lat, h, w) latents, already unscaled by the pipeline -> (B, C_out, h*f, w*f) image in ~[-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"decode expects (B, {self.latent_channels}, h, w) latents, got {tuple(z.shape)}")
        weight_dtype = self.decoder.conv_in.weight.dtype
        if z.dtype != weight_dtype:
            raise ValueError(f"latents are {z.dtype} but the VAE weights are {weight_dtype}; cast one of them")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)


__all__ = ["AutoencoderKL", "AutoencoderKLConfig"]
