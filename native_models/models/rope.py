"""Rotary position tables, rotary application and sinusoidal timestep embeddings.

Shared by the native DiTs. Each function reproduces the reference's arithmetic step for step (same dtypes, same
operation order), because a parity harness cannot tell a real bug from a rounding choice made differently here.

Rotary tables hold one angle per rotated channel pair, shape (N, D/2); `apply_rotary` lays them out for the
pairing style. FLUX pairs adjacent channels (2i, 2i+1) ("interleaved"); the split-half ("NeoX") style pairs
channel i with i + D/2 and is kept so that a deliberately swapped style can be shown to be detected.
"""

from __future__ import annotations

import math

import torch

# Devices without float64 kernels; there the reference computes rotary angles in float32 instead.
_NO_FLOAT64_DEVICES = frozenset({"mps", "npu", "neuron"})


def rotary_freqs_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (as the reference chooses), else float32."""
    return torch.float32 if device.type in _NO_FLOAT64_DEVICES else torch.float64


def axis_frequencies(dim: int, theta: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/dim) for one axis of `dim` channels; shape (dim/2,)."""
    if dim % 2 != 0:
        raise ValueError(f"rotary axis dim must be even, got {dim}")
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=dtype, device=device) / dim))


def rotary_cos_sin(
    ids: torch.Tensor, axes_dims: tuple[int, ...] | list[int], theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles for position ids (N, n_axes); each (N, sum(axes_dims)/2) float32.

    Positions are first rounded to float32 (as the reference does), angles and their cos/sin are computed in
    float64 where available, and the result is returned in float32.
    """
    if ids.ndim != 2 or ids.shape[1] != len(axes_dims):
        raise ValueError(f"position ids must be (N, {len(axes_dims)}), got {tuple(ids.shape)}")
    freqs_dtype = rotary_freqs_dtype(ids.device)
    pos = ids.float()  # (N, n_axes)
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(axes_dims):
        freqs = axis_frequencies(dim, theta, freqs_dtype, ids.device)  # (dim/2,)
        angles = torch.outer(pos[:, axis], freqs)  # (N, dim/2), promoted to freqs_dtype
        cos_parts.append(angles.cos().float())
        sin_parts.append(angles.sin().float())
    return torch.cat(cos_parts, dim=-1), torch.cat(sin_parts, dim=-1)


def channel_tables(cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair cos/sin (..., D/2) -> per-channel (..., D): cos repeated, sin repeated with the pair's first channel
    negated ((-s, s) per pair). Built once per forward, they turn every rotation into one swap and two products
    (`rotate_channels`) instead of a negation, a stack and two table expansions per call."""
    if sin.shape != cos.shape:
        raise ValueError(f"rotary tables {tuple(cos.shape)}/{tuple(sin.shape)} differ in shape")
    if interleaved:
        return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def _swap_pairs(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Each channel pair (a, b) -> (b, a), in a new tensor."""
    if interleaved:
        a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack((b, a), dim=-1).flatten(-2)  # one copy kernel; ~2x faster than flip(-1) here
    return x.roll(x.shape[-1] // 2, dims=-1)


def rotate_channels(
    x: torch.Tensor, cos_channels: torch.Tensor, sin_channels: torch.Tensor, interleaved: bool = True
) -> torch.Tensor:
    """Rotate the channel pairs of x (..., D) by per-channel tables from `channel_tables` (broadcast to x).

    The reference computes x*cos + (-b, a)*sin in float32 and casts back; here (b, a)*(-s, s) gives the same
    products exactly (negation is exact), added in the same order, so the result is bit-identical.
    """
    if cos_channels.shape[-1] != x.shape[-1] or sin_channels.shape != cos_channels.shape:
        raise ValueError(
            f"rotary tables {tuple(cos_channels.shape)}/{tuple(sin_channels.shape)} do not fit a head dim of "
            f"{x.shape[-1]}"
        )
    xf = x.float()
    out = xf * cos_channels  # a new tensor: the in-place ops below never touch x
    swapped = _swap_pairs(xf, interleaved)
    swapped.mul_(sin_channels)
    return out.add_(swapped).to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = True) -> torch.Tensor:
    """Rotate the channel pairs of x (..., D) by the angles whose cos/sin are (..., D/2), broadcast to x.

    Computed in float32 and cast back to x's dtype, as the reference does for half-precision activations.
    """
    if cos.shape[-1] * 2 != x.shape[-1] or sin.shape != cos.shape:
        raise ValueError(f"rotary tables {tuple(cos.shape)}/{tuple(sin.shape)} do not fit a head dim of {x.shape[-1]}")
    return rotate_channels(x, *channel_tables(cos.to(x.device), sin.to(x.device), interleaved), interleaved)


def timestep_embedding(
    t: torch.Tensor,
    dim: int = 256,
    max_period: float = 10000.0,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps (possibly fractional) -> (B, dim) float32.

    Defaults are FLUX's: cos first, frequencies exp(-ln(max_period) * i / (dim/2)) for i < dim/2.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must be 1-D (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device)
    exponent = exponent / (half - downscale_freq_shift)
    args = t[:, None].float() * torch.exp(exponent)[None, :]  # (B, half)
    args = scale * args
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat((cos, sin) if flip_sin_to_cos else (sin, cos), dim=-1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb
