"""Named image statistics for the learned part of the noise detector (harness/noise/learned.py).

The rule checks in harness/noise.py catch noise that image statistics call noise by definition (white noise, 1/f
fields, checkerboards, flat frames). What a real VAE draws from broken latents is different: colour blotches
at the latent's scale, smeared noise, 8-pixel textures, oversaturated fields; and the pictures it must not be
confused with include binary and few-colour drawings. Each statistic here answers one question about that
difference, on one frame given as (C, H, W) colour planes in [0, 1]:

- stationarity (`local_contrast_spread`, `flat_share`): pictures have flat parts and busy parts; decoded noise
  is equally busy everywhere;
- edges (`gradient_kurtosis_*`, `edge_concentration`, `edge_coherence`): pictures have sparse, oriented edges;
  noise fields have Gaussian, isotropic gradients;
- spectrum (`spectral_slope_256`, `spectral_curvature`): photographs follow a power law; decoded noise has a
  knee at the latent's scale;
- colour (`chroma_ratio`, `saturation`, `channel_detail_correlation`, `partial_clip_share`): a photograph's
  channels share their detail; noise latents decode to colour that varies on its own, often clipped in one
  channel;
- palette (`palette_share`, `clipped_share`, `midtone_share`): drawings use a few exact colours;
- latent grid (`grid_8`, `grid_16`): excess pixel differences on an 8- or 16-pixel grid.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from harness.noise import image_stats

SPECTRUM_SIDE = 256  # the spectral shape is measured on the first pyramid level no larger than this
BLOCK = 8  # pixels per side of the blocks whose contrast is compared
FLAT_LEVEL = 1.5 / 255  # a block whose range is below this in every channel is flat (a uint8 step and a half)
PALETTE_BITS = 6  # colours compared at 6 bits per channel (steps of 4/255)
PALETTE_TOP = 8  # the share of pixels in the 8 most common colours

FEATURE_NAMES = (
    "noise_fraction", "gradient_kurtosis_fine", "gradient_kurtosis_max", "gradient_kurtosis_min",
    "spectral_slope_256", "spectral_curvature", "local_contrast_spread", "flat_share", "edge_concentration",
    "edge_coherence", "chroma_ratio", "saturation", "channel_detail_correlation", "partial_clip_share",
    "palette_share", "clipped_share", "midtone_share", "grid_8", "grid_16", "coarse_noise_fraction",
    "chroma_detail_ratio",
)


def frame_features(planes: np.ndarray, y: np.ndarray, kurtoses: list[float], noise_fraction: float,
                   midtone_share: float, contrast: dict[str, float] | None = None) -> dict[str, float]:
    """All FEATURE_NAMES for one frame: (C, H, W) planes in [0, 1], its (H, W) luma, the gradient kurtosis of each
    pyramid level (finest first, may be empty), the noise fraction / mid-tone share the rule checks measured, and
    `block_contrast(planes)` when the caller has it already."""
    features = {"noise_fraction": float(noise_fraction), "midtone_share": float(midtone_share)}
    logs = [math.log(max(k, 1.0)) for k in kurtoses] or [math.log(3.0)]
    features.update(gradient_kurtosis_fine=logs[0], gradient_kurtosis_max=max(logs), gradient_kurtosis_min=min(logs))
    features.update(spectral_shape(y))
    features.update(contrast if contrast is not None else block_contrast(planes))
    features.update(edge_statistics(y))
    features.update(colour_statistics(planes))
    features.update(palette_statistics(planes))
    features.update(grid_statistics(y))
    features["coarse_noise_fraction"] = coarse_noise_fraction(planes)
    return features


def coarse_noise_fraction(planes: np.ndarray) -> float:
    """The largest noise fraction (harness/image_stats.py) of the colour planes shrunk 2x, 4x and 8x (levels at
    least 16 pixels a side): a latent drawn at random is uncorrelated from one latent cell to the next, so its
    decode, shrunk to about the latent's grid, is noise; a picture stays smooth at every scale."""
    fractions = []
    level = planes
    for _ in range(3):
        if min(level.shape[1:]) // 2 < 16:
            break
        level = np.stack([image_stats.half_size(p) for p in level])
        per_plane = [image_stats.plane_stats(np.ascontiguousarray(p)) for p in level]
        if sum(p.variance for p in per_plane) <= 1e-12:
            break
        rho1, rho2 = image_stats.pooled_correlations(per_plane)
        fractions.append(image_stats.noise_fraction(rho1, rho2))
    return max(fractions, default=0.0)


def spectral_shape(y: np.ndarray) -> dict[str, float]:
    """Slope and curvature of the radially averaged log power against log frequency (quadratic fit) on the first
    pyramid level no larger than SPECTRUM_SIDE. A photograph is close to a straight line (curvature near 0); a
    decoded noise latent is flat below the latent's frequency and falls steeply above it (curvature < 0)."""
    while max(y.shape) > SPECTRUM_SIDE and min(y.shape) >= 32:
        y = image_stats.half_size(y)
    h, w = y.shape
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    spectrum = scipy.fft.rfft2((y - np.float32(y.mean())) * window, workers=1)
    power = (spectrum.real**2 + spectrum.imag**2).ravel()
    radius = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2).ravel()
    edges = np.geomspace(2.0 / min(h, w), 0.5, 13)
    bins = np.digitize(radius, edges)
    counts = np.bincount(bins, minlength=14)[1:13]
    sums = np.bincount(bins, weights=power, minlength=14)[1:13]
    freqs = np.bincount(bins, weights=radius, minlength=14)[1:13]
    usable = (counts >= 2) & (sums > 0)
    if usable.sum() < 4:
        return {"spectral_slope_256": -2.0, "spectral_curvature": 0.0}
    x = np.log(freqs[usable] / counts[usable])
    p = np.log(sums[usable] / counts[usable])
    x0 = x - x.mean()
    curvature, slope, _ = np.polyfit(x0, p, 2)
    return {"spectral_slope_256": float(slope), "spectral_curvature": float(curvature)}


def _blocks(plane: np.ndarray, size: int) -> np.ndarray:
    """(H, W) -> (H // size, W // size, size * size) non-overlapping blocks (edges dropped)."""
    h, w = (plane.shape[0] // size) * size, (plane.shape[1] // size) * size
    return plane[:h, :w].reshape(h // size, size, w // size, size).transpose(0, 2, 1, 3).reshape(
        h // size, w // size, size * size)


def block_contrast(planes: np.ndarray) -> dict[str, float]:
    """Spread of log block contrast (std of log(block std + 1/255), the liveliest channel per block) and the share
    of flat blocks (range below FLAT_LEVEL in every channel)."""
    variance = None
    value_range = None
    for plane in planes:
        blocks = _blocks(plane, BLOCK)
        mean = blocks.mean(axis=-1)
        var = np.maximum((blocks * blocks).mean(axis=-1) - mean * mean, 0.0)
        spread = blocks.max(axis=-1) - blocks.min(axis=-1)
        variance = var if variance is None else np.maximum(variance, var)
        value_range = spread if value_range is None else np.maximum(value_range, spread)
    log_std = np.log(np.sqrt(variance) + 1.0 / 255)
    return {"local_contrast_spread": float(log_std.std()), "flat_share": float(np.mean(value_range < FLAT_LEVEL))}


def edge_statistics(y: np.ndarray) -> dict[str, float]:
    """Edge concentration: share of the gradient energy in the strongest 5% of pixels (Gaussian fields about 0.2,
    pictures with sparse edges far more); edge coherence: energy-weighted mean of the structure tensor's coherence
    over 4x4 blocks (1 for straight edges and lines, about 0.3 for isotropic noise)."""
    gx = y[:-1, 1:] - y[:-1, :-1]  # (H-1, W-1) forward differences
    gy = y[1:, :-1] - y[:-1, :-1]
    energy = gx * gx + gy * gy
    total = float(energy.sum(dtype=np.float64))
    if total <= 1e-12:
        return {"edge_concentration": 1.0, "edge_coherence": 1.0}
    flat = energy.ravel()
    top = max(1, flat.size // 20)
    concentration = float(np.partition(flat, flat.size - top)[-top:].sum(dtype=np.float64)) / total
    jxx = _blocks(gx * gx, 4).sum(axis=-1)
    jyy = _blocks(gy * gy, 4).sum(axis=-1)
    jxy = _blocks(gx * gy, 4).sum(axis=-1)
    anisotropy = np.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy)
    coherence = float(anisotropy.sum(dtype=np.float64)) / max(float((jxx + jyy).sum(dtype=np.float64)), 1e-12)
    return {"edge_concentration": concentration, "edge_coherence": coherence}


def colour_statistics(planes: np.ndarray) -> dict[str, float]:
    """Chroma std over luma std, mean saturation (max - min channel), the mean correlation of the channels'
    fine detail (horizontal pixel differences), and the share of pixels clipped in some channel but not in all.
    A grey frame: 0, 0, 1, 0."""
    if planes.shape[0] < 3:
        return {"chroma_ratio": 0.0, "saturation": 0.0, "channel_detail_correlation": 1.0, "partial_clip_share": 0.0,
                "chroma_detail_ratio": 0.0}
    r, b = planes[0], planes[2]
    y = image_stats.luminance(planes)
    chroma = float(np.sqrt(0.5 * ((b - y).var() + (r - y).var())))
    ratio = chroma / (float(y.std()) + 1.0 / 255)
    saturation = float((planes.max(axis=0) - planes.min(axis=0)).mean())
    details = [(p[:, 1:] - p[:, :-1]).ravel() for p in planes]
    correlations = []
    for i, j in ((0, 1), (1, 2), (0, 2)):
        a, c = details[i], details[j]
        norm = math.sqrt(float(np.dot(a, a)) * float(np.dot(c, c)))
        correlations.append(float(np.dot(a, c)) / norm if norm > 1e-12 else 1.0)
    clipped = (planes <= 0.5 / 255) | (planes >= 254.5 / 255)
    some = clipped.any(axis=0)
    every = clipped.all(axis=0)
    cb, cr = b - y, r - y
    chroma_detail = float(np.mean(np.diff(cb, axis=1) ** 2) + np.mean(np.diff(cr, axis=1) ** 2))
    luma_detail = float(np.mean(np.diff(y, axis=1) ** 2))
    return {"chroma_ratio": ratio, "saturation": saturation,
            "chroma_detail_ratio": math.sqrt(chroma_detail / (luma_detail + 1e-8)),
            "channel_detail_correlation": float(np.mean(correlations)),
            "partial_clip_share": float(np.mean(some & ~every))}


def palette_statistics(planes: np.ndarray) -> dict[str, float]:
    """Share of pixels in the PALETTE_TOP most common colours (6 bits per channel; every other pixel of frames over
    256 x 256, which changes the share by little and the time by 4x) and share of clipped values."""
    sampled = planes[:, ::2, ::2] if planes.shape[1] * planes.shape[2] > 256 * 256 else planes
    levels = np.minimum((sampled * (2**PALETTE_BITS)).astype(np.int32), 2**PALETTE_BITS - 1)
    codes = levels[0]
    for plane in levels[1:]:
        codes = codes * (2**PALETTE_BITS) + plane
    counts = np.bincount(codes.ravel())
    counts = counts[counts > 0]
    top = np.partition(counts, max(0, counts.size - PALETTE_TOP))[-PALETTE_TOP:]
    clipped = float(np.count_nonzero((planes <= 0.5 / 255) | (planes >= 254.5 / 255))) / planes.size
    return {"palette_share": float(top.sum()) / codes.size, "clipped_share": clipped}


def grid_statistics(y: np.ndarray) -> dict[str, float]:
    """Excess of the mean absolute pixel difference across 8- and 16-pixel grid lines (at the best phase) over the
    mean elsewhere, both axes, as log(1 + excess): a decoder that draws each latent cell on its own leaves a grid
    (0 for none; a few-edged drawing can score high by chance, hence the log)."""
    out = {}
    dx = np.abs(y[:, 1:] - y[:, :-1]).mean(axis=0)  # per column boundary
    dy = np.abs(y[1:] - y[:-1]).mean(axis=1)  # per row boundary
    for period in (8, 16):
        scores = []
        for d in (dx, dy):
            n = (len(d) // period) * period
            if n < 2 * period or float(d[:n].mean()) <= 1e-9:
                scores.append(0.0)
                continue
            phases = d[:n].reshape(-1, period).mean(axis=0)
            scores.append(float(phases.max() / phases.mean()) - 1.0)
        out[f"grid_{period}"] = math.log1p(float(np.mean(scores)))
    return out
