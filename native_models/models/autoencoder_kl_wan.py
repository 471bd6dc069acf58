"""The Wan 2.1 causal 3D video VAE (Diffusers' AutoencoderKLWan): decoder and encoder.

Latents (B, z_dim, T, h, w) decode to video (B, 3, 1 + 4 * (T - 1), 8h, 8w) in [-1, 1]. The decoder is causal in
time: latent frames are decoded one at a time, and every 3-frame temporal convolution sees the last input frames
of the previous step through a `StreamCache` (zero frames before the start). The first latent frame becomes one
video frame, every later one four (two temporal x2 upsamplers that skip the first frame).

The encoder (image-to-video conditioning) mirrors it: video (B, 3, 1 + 4k, H, W) is encoded in chunks of 1, 4, 4, ...
frames (Diffusers' `_encode` hard-codes the 4), every causal convolution continuing the previous chunk through the
same `StreamCache`; each temporal x2 downsampler passes the first chunk through and afterwards convolves (stride 2)
the previous chunk's last frame with the current chunk. `quant_conv` then gives the posterior's mean and log-variance
(B, 2 z_dim, 1 + k, H/8, W/8); `encode` returns it as a `DiagonalGaussian` (`mode()` is the mean, which
WanImageToVideoPipeline takes: `retrieve_latents(..., sample_mode="argmax")`).

Module and parameter names equal Diffusers' state-dict keys, so a checkpoint loads strictly. Op order, layouts and
dtype casts follow Diffusers, so fp32 agrees to rounding and bf16 stays bit-close.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from native_models.attention import attention
from native_models.config_dict import split_config

# Frames of history a 3-frame causal convolution needs from the previous decode step (Diffusers' CACHE_T).
CACHE_T = 2

# Frames per encoder chunk after the first single frame (Diffusers' `_encode`: `1 + (num_frame - 1) // 4` chunks).
ENCODE_CHUNK = 4

# Config keys that shape only training (dropout: inference runs in eval mode, where dropout is the identity): read
# and ignored.
IGNORED_KEYS = frozenset({"dropout"})


@dataclass(frozen=True)
class AutoencoderKLWanConfig:
    """VAE hyper-parameters, with Diffusers' AutoencoderKLWan defaults (Wan 2.1) for keys left out."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # Diffusers' spelling, kept for the key
    out_channels: int = 3
    in_channels: int = 3
    attn_scales: tuple[float, ...] = ()  # encoder levels (1.0, 0.5, ...) with attention; the decoder never adds any
    is_residual: bool = False  # Wan 2.2's residual up blocks: not supported
    patch_size: int | None = None  # Wan 2.2's patchified output: not supported
    # Read by the pipeline around the decoder (denormalisation, latent sizes), not by the decoder itself.
    latents_mean: tuple[float, ...] = (
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    )  # fmt: skip
    latents_std: tuple[float, ...] = (
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    )  # fmt: skip
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8
    ignored: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> AutoencoderKLWanConfig:
        """Parse a Diffusers config.json dict; unknown keys and unsupported options raise ValueError."""
        values, ignored = split_config(cls, config, IGNORED_KEYS, "AutoencoderKLWan", lists_to_tuples=True)
        parsed = cls(**values, ignored=ignored)
        parsed.validate()
        return parsed

    @property
    def decoder_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    @property
    def temporal_upsample(self) -> tuple[bool, ...]:
        """Per up block (deepest first): whether it doubles the frame count. The encoder's flags, reversed."""
        return tuple(reversed(self.temperal_downsample))

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_upsample[: len(self.dim_mult) - 1])

    def validate(self) -> None:
        """Reject configurations whose numerics this decoder does not reproduce, naming the values."""
        if self.is_residual:
            raise ValueError("is_residual=True (the Wan 2.2 VAE's residual up blocks) is not supported")
        if self.patch_size is not None:
            raise ValueError(f"patch_size={self.patch_size} (the Wan 2.2 VAE's patchified output) is not supported")
        if not self.dim_mult or any(m < 1 for m in self.dim_mult):
            raise ValueError(f"dim_mult must be a non-empty list of positive ints, got {list(self.dim_mult)}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs {len(self.dim_mult) - 1} entries for dim_mult {list(self.dim_mult)}, "
                f"got {list(self.temperal_downsample)}"
            )
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"in_channels={self.in_channels} and out_channels={self.out_channels} must be >= 1")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        for name, values in (("latents_mean", self.latents_mean), ("latents_std", self.latents_std)):
            if len(values) != self.z_dim:
                raise ValueError(f"{name} has {len(values)} entries but z_dim is {self.z_dim}")
        # Pipelines size latents with the configured factors: they must be the ones this architecture produces.
        for name, configured, actual in (
            ("scale_factor_spatial", self.scale_factor_spatial, self.spatial_factor),
            ("scale_factor_temporal", self.scale_factor_temporal, self.temporal_factor),
        ):
            if configured is not None and configured != actual:
                raise ValueError(
                    f"{name}={configured} but dim_mult {list(self.dim_mult)} and temperal_downsample "
                    f"{list(self.temperal_downsample)} give {actual}"
                )


class StreamCache:
    """State of one chunk-by-chunk decode or encode: for each causal convolution, the last input frames it has seen.

    Diffusers keeps this in a list indexed by call order; keying by the module gives the same state, because every
    step visits the same convolutions in the same order.
    """

    def __init__(self) -> None:
        self.first_chunk = True  # the temporal upsamplers pass the first latent frame through unchanged
        self._history: dict[nn.Module, torch.Tensor] = {}

    def run(self, conv: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        """conv(x) continuing the previous step's frames, then remember the frames the next step needs."""
        previous = self._history.get(conv)
        keep = x[:, :, -CACHE_T:]
        if keep.shape[2] < CACHE_T and previous is not None:
            keep = torch.cat([previous[:, :, -1:], keep], dim=2)
        out = conv(x, previous)
        self._history[conv] = keep.clone()  # a copy, so the step's full activation can be freed
        return out

    def run_downsample(self, conv: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        """A strided temporal downsampler: the first chunk passes through unchanged (and is remembered); later
        chunks are convolved together with the previous chunk's last frame (no zero padding), as Diffusers'
        `downsample3d` does."""
        previous = self._history.get(conv)
        self._history[conv] = x[:, :, -1:].clone()  # Diffusers keeps the whole chunk; only its last frame is read
        if previous is None:
            return x
        return conv(torch.cat([previous, x], dim=2))


class CausalConv3d(nn.Conv3d):
    """3D convolution padded only towards the past in time (zeros, or cached frames of earlier steps)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        padding: int | tuple[int, int, int] = 0,
        stride: int | tuple[int, int, int] = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        pad_t, pad_h, pad_w = self.padding  # type: ignore[misc]
        self.past_frames = 2 * pad_t  # all temporal padding goes before the first frame
        self.spatial_padding = (pad_w, pad_w, pad_h, pad_h)
        self.padding = (0, 0, 0)

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C_out, T, H, W); `history` are the frames just before x, if any."""
        missing = self.past_frames
        if history is not None and missing > 0:
            x = torch.cat([history.to(x.device), x], dim=2)
            missing -= history.shape[2]
        # One F.pad for the zero frames and the spatial border, as Diffusers does (same tensor into the conv).
        return super().forward(F.pad(x, (*self.spatial_padding, missing, 0)))


class RMSNorm(nn.Module):
    """x / ||x|| over channels (dim 1) times sqrt(C) * gamma; bf16/fp16 inputs are normalised in fp32."""

    def __init__(self, dim: int, video: bool) -> None:
        super().__init__()
        self.scale = dim**0.5
        # (C, 1, 1, 1) broadcasts over (T, H, W); (C, 1, 1) over the per-frame (H, W) of attention.
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1, 1) if video else (dim, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upcast = x.dtype in (torch.float16, torch.bfloat16)
        normalized = F.normalize(x.float() if upcast else x, dim=1).to(x.dtype)
        return normalized * self.scale * self.gamma  # Diffusers' `+ bias` is `+ 0.0` here: an exact no-op


class ResidualBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1-projected where widths differ) skip."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_dim, video=True)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim, video=True)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:  # (B, C_in, T, H, W)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = cache.run(self.conv1, F.silu(self.norm1(x)))
        x = cache.run(self.conv2, F.silu(self.norm2(x)))  # Diffusers' dropout sits here: identity in eval
        return x + skip  # (B, C_out, T, H, W)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately, with a residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, video=False)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> same
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        qkv = self.to_qkv(self.norm(frames)).reshape(b * t, 1, 3 * c, h * w)
        qkv = qkv.permute(0, 1, 3, 2).contiguous()  # (B*T, 1, HW, 3C)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B*T, 1, HW, C): one head of size C, same strides as Diffusers
        out = attention(q, k, v).squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        out = self.proj(out).view(b, t, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)
        return out + x


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim) for _ in range(2)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.resnets[0](x, cache)
        x = self.attentions[0](x)
        return self.resnets[1](x, cache)


class NearestUpsample2x(nn.Module):
    """Spatial x2 nearest-exact. Diffusers upcasts to fp32 around it; copying values is exact in any dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest-exact")


class Resample(nn.Module):
    """Spatial x2 upsampling with a 3x3 conv that halves the channels; with `temporal`, first a causal time conv
    that doubles the frames (except for the first latent frame, which stays one frame)."""

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(NearestUpsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))  # key "resample.1"
        # Its 2*C outputs are the two new frames per input frame, interleaved below.
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0)) if temporal else None

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:  # (B, C, T, H, W)
        b, c, t, h, w = x.shape
        if self.time_conv is not None and not cache.first_chunk:
            # The first frame never enters the time conv's history: Diffusers' "Rep" marker, i.e. zero frames.
            x = cache.run(self.time_conv, x).reshape(b, 2, c, t, h, w)
            x = torch.stack((x[:, 0], x[:, 1]), dim=3).reshape(b, c, 2 * t, h, w)  # frames 2i, 2i+1 from frame i
            t = 2 * t
        frames = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))  # (B*T, C/2, 2H, 2W)
        return frames.view(b, t, *frames.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C/2, T, 2H, 2W)


class UpBlock(nn.Module):
    """`num_res_blocks + 1` residual blocks, then an optional Resample."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample: str | None) -> None:
        super().__init__()
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList([ResidualBlock(i, o) for i, o in zip(dims[:-1], dims[1:], strict=True)])
        self.upsamplers = (
            nn.ModuleList([Resample(out_dim, temporal=upsample == "3d")]) if upsample is not None else None
        )

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache)
        return x


class Decoder3d(nn.Module):
    """One decode step: latent frames (B, z_dim, T, h, w) -> video frames (B, C_out, T', h*f, w*f)."""

    def __init__(self, cfg: AutoencoderKLWanConfig) -> None:
        super().__init__()
        mults = list(cfg.dim_mult)
        dims = [cfg.decoder_dim * m for m in [mults[-1], *reversed(mults)]]  # deepest first
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                in_dim //= 2  # the previous block's upsampler halved its channels (floor, as in Resample)
            upsample = None
            if i != len(mults) - 1:
                upsample = "3d" if cfg.temporal_upsample[i] else "2d"
            blocks.append(UpBlock(in_dim, out_dim, cfg.num_res_blocks, upsample))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1], video=True)
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = cache.run(self.conv_in, x)
        x = self.mid_block(x, cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return cache.run(self.conv_out, F.silu(self.norm_out(x)))


class DownResample(nn.Module):
    """Spatial /2 (pad right and bottom by one, 3x3 conv of stride 2); with `temporal`, then a causal time conv of
    stride 2 that halves the frames of every chunk after the first (the first frame stays one frame)."""

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))  # key resample.1
        self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:  # (B, C, T, H, W)
        b, c, t, h, w = x.shape
        frames = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))  # (B*T, C, H', W')
        x = frames.view(b, t, *frames.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C, T, H', W')
        if self.time_conv is not None:
            x = cache.run_downsample(self.time_conv, x)  # (B, C, T', H', W')
        return x


class Encoder3d(nn.Module):
    """One encode step: video frames (B, C_in, T, H, W) -> posterior parameters (B, 2 z_dim, T', H/f, W/f).

    `down_blocks` is one flat list, as in Diffusers: per level `num_res_blocks` residual blocks (each followed by an
    attention block where the level's scale 1, 1/2, ... is in `attn_scales`), then a downsampler except at the last.
    """

    def __init__(self, cfg: AutoencoderKLWanConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        scale = 1.0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                blocks.append(DownResample(out_dim, temporal=cfg.temperal_downsample[i]))
                scale /= 2.0
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1], video=True)
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = cache.run(self.conv_in, x)
        for block in self.down_blocks:
            x = block(x) if isinstance(block, AttentionBlock) else block(x, cache)
        x = self.mid_block(x, cache)
        return cache.run(self.conv_out, F.silu(self.norm_out(x)))


@dataclass(frozen=True)
class DiagonalGaussian:
    """The encoder's posterior: `parameters` (B, 2C, T, h, w) hold the mean, then the log-variance (clamped to
    -30..20 as Diffusers' DiagonalGaussianDistribution does)."""

    parameters: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.parameters.chunk(2, dim=1)[0]

    @property
    def std(self) -> torch.Tensor:
        logvar = self.parameters.chunk(2, dim=1)[1].clamp(-30.0, 20.0)
        return torch.exp(0.5 * logvar)

    def mode(self) -> torch.Tensor:
        """The mean (Diffusers' `latent_dist.mode()`, `retrieve_latents(..., sample_mode="argmax")`)."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * noise, the noise drawn as Diffusers' `randn_tensor` draws it: on the generator's device in
        the parameters' dtype, then moved to the parameters' device."""
        device = generator.device if generator is not None else self.parameters.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.parameters.dtype)
        return self.mean + self.std * noise.to(self.parameters.device)


class AutoencoderKLWan(nn.Module):
    """The Wan 2.1 VAE: `decode` equals Diffusers' `AutoencoderKLWan.decode(z).sample`, `encode(x).mode()` its
    `encode(x).latent_dist.mode()` (no tiling, no slicing).

    Pipelines normalise and denormalise latents around it (`(z - mean) / std` after encoding, `z * std + mean`
    before decoding, per channel); this class only exposes the statistics and the scale factors.
    """

    # False (AutoencoderKLWanDecoder): the encoder and quant_conv are neither built nor kept (text-to-video)
    builds_encoder: ClassVar[bool] = True

    def __init__(self, config: AutoencoderKLWanConfig) -> None:
        super().__init__()
        self.config = config
        self.z_dim: int = config.z_dim
        self.latent_channels: int = config.z_dim
        self.latents_mean: list[float] = [float(v) for v in config.latents_mean]
        self.latents_std: list[float] = [float(v) for v in config.latents_std]
        self.vae_scale_factor_spatial: int = config.spatial_factor
        self.vae_scale_factor_temporal: int = config.temporal_factor
        self.encoder = Encoder3d(config) if self.builds_encoder else None
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1) if self.builds_encoder else None
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AutoencoderKLWan:
        return cls(AutoencoderKLWanConfig.from_dict(config))

    def decoded_num_frames(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames: the first gives one, each later one f_t."""
        return 1 + self.vae_scale_factor_temporal * (latent_frames - 1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_dim, T, h, w) denormalised latents -> (B, C_out, 1 + 4 (T-1), 8h, 8w) video, clamped to [-1, 1].

        Runs in the weights' dtype (latents must match it); only RMS norms compute in fp32 under bf16/fp16.
        """
        if z.ndim != 5 or z.shape[1] != self.z_dim or z.shape[2] < 1:
            raise ValueError(f"decode expects (B, {self.z_dim}, T>=1, h, w) latents, got {tuple(z.shape)}")
        weight_dtype = self.post_quant_conv.weight.dtype
        if z.dtype != weight_dtype:
            raise ValueError(f"latents are {z.dtype} but the VAE weights are {weight_dtype}; cast one of them")
        x = self.post_quant_conv(z)
        cache = StreamCache()
        frames = []
        for i in range(x.shape[2]):
            frames.append(self.decoder(x[:, :, i : i + 1], cache))  # 1 video frame for i = 0, then f_t each
            cache.first_chunk = False
        return torch.clamp(torch.cat(frames, dim=2), min=-1.0, max=1.0)

    def encoded_num_frames(self, video_frames: int) -> int:
        """Latent frames encoded from `video_frames` = 1 + 4k frames: the first chunk gives one, each later chunk
        of 4 gives 4 / f_t (one for Wan 2.1's f_t = 4)."""
        return 1 + (video_frames - 1) // ENCODE_CHUNK * (ENCODE_CHUNK // self.vae_scale_factor_temporal)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """(B, C_in, 1 + 4k, H, W) video in [-1, 1] -> the posterior over (B, z_dim, 1 + k', H/8, W/8) latents.

        Runs in the weights' dtype (the video must match it). Diffusers encodes frames in chunks of 1, 4, 4, ...
        and silently drops frames past the last whole chunk; other frame counts are refused here.
        """
        if self.encoder is None or self.quant_conv is None:
            raise ValueError(f"{type(self).__name__} was built without its encoder (a decode-only pipeline)")
        if x.ndim != 5 or x.shape[1] != self.config.in_channels or (x.shape[2] - 1) % ENCODE_CHUNK:
            raise ValueError(
                f"encode expects (B, {self.config.in_channels}, 1 + {ENCODE_CHUNK}k, H, W) video, got {tuple(x.shape)}"
            )
        if self.config.attn_scales:
            raise ValueError(f"attn_scales={list(self.config.attn_scales)}: Diffusers' Wan encoder cannot run its "
                             "attention blocks (WanAttentionBlock takes no feature cache): nothing to match")
        if self.vae_scale_factor_temporal > ENCODE_CHUNK:
            raise ValueError(f"a temporal factor of {self.vae_scale_factor_temporal} cannot encode chunks of "
                             f"{ENCODE_CHUNK} frames (Diffusers' encoder fails on it too)")
        weight_dtype = self.quant_conv.weight.dtype
        if x.dtype != weight_dtype:
            raise ValueError(f"video is {x.dtype} but the VAE weights are {weight_dtype}; cast one of them")
        cache = StreamCache()
        chunks = [self.encoder(x[:, :, :1], cache)]
        for start in range(1, x.shape[2], ENCODE_CHUNK):
            chunks.append(self.encoder(x[:, :, start : start + ENCODE_CHUNK], cache))
        return DiagonalGaussian(self.quant_conv(torch.cat(chunks, dim=2)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)


class AutoencoderKLWanDecoder(AutoencoderKLWan):
    """The same VAE without its encoder, for pipelines that only decode (text-to-video): the encoder's parameters
    (53.6 M at Wan 2.1 size) are never built, and its checkpoint keys are dropped before the strict load."""

    builds_encoder: ClassVar[bool] = False
    ENCODER_PREFIXES: ClassVar[tuple[str, ...]] = ("encoder.", "quant_conv.")

    def convert_checkpoint_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value for key, value in state.items() if not key.startswith(self.ENCODER_PREFIXES)}


__all__ = ["AutoencoderKLWan", "AutoencoderKLWanConfig", "AutoencoderKLWanDecoder", "DiagonalGaussian",
           "StreamCache"]
