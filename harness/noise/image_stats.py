"""Image statistics that tell a picture from noise without any learned weights.

The functions take planes: 2-D float32 arrays (H, W) in [0, 1], one colour channel or the luma. The statistics
are chosen for what separates decoded pictures from degenerate outputs (see `harness/noise/detector.py` for the
decisions and `scripts/calibrate_noise_detector.py` for the measured separation):

- lag correlations and the *nugget*: a picture's autocorrelation falls off smoothly from lag 0, so the lag-1
  and lag-2 correlations extrapolate back to about 1; uncorrelated noise added to it makes a jump at lag 0.
  `1 - (2 rho1 - rho2)` estimates the fraction of the variance that is pixel-scale noise.
- gradient kurtosis: pictures have sparse edges, so their pixel differences are heavy-tailed (kurtosis 5-130
  measured, fine textures shrunk to 64 px 3.0-3.5); any Gaussian random field, white or 1/f, has 3.
- spectral slope: the power spectrum's log-log slope; 1/f-amplitude noise and photos sit near -2, white noise
  near 0, interpolated (upsampled) content below -5.
- checkerboard score: autocorrelation positive along the diagonals and negative along the axes at one lag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
SPECTRUM_BINS = 12
SPECTRUM_MAX_FREQ = 0.35  # cycles per pixel; above it the corners of the spectrum and anti-aliasing dominate


def luminance(planes: np.ndarray) -> np.ndarray:
    """(C, H, W) colour planes -> (H, W) float32: BT.601 luma of RGB, the plane itself for grey."""
    if planes.shape[0] == 3:
        return LUMA_WEIGHTS[0] * planes[0] + LUMA_WEIGHTS[1] * planes[1] + LUMA_WEIGHTS[2] * planes[2]
    return planes[0]


@dataclass(frozen=True)
class PlaneStats:
    """Moments of one plane; covariances at lags 1 and 2 averaged over the two axes."""

    variance: float
    cov1: float
    cov2: float
    extreme_share: float  # share of values within half a uint8 step of the plane's minimum or maximum

    @property
    def std(self) -> float:
        return math.sqrt(max(self.variance, 0.0))


def plane_stats(plane: np.ndarray) -> PlaneStats:
    """Variance, lag covariances and the share of extreme values of a contiguous (H, W) float32 plane.

    Dot products over the flattened plane (BLAS, no temporaries): a vertical lag of k rows is a flat shift of
    k * W; a horizontal lag of k is a flat shift of k, less the k products per row that wrap into the next row.
    """
    h, w = plane.shape
    centred = plane - np.float32(plane.mean())
    flat = centred.ravel()
    n = flat.size
    variance = float(np.dot(flat, flat)) / n
    covariances = []
    for lag in (1, 2):
        vertical = float(np.dot(flat[lag * w :], flat[: -lag * w])) / (n - lag * w)
        wrapped = float(np.sum(centred[:-1, w - lag :] * centred[1:, :lag], dtype=np.float64))
        horizontal = (float(np.dot(flat[lag:], flat[:-lag])) - wrapped) / (h * (w - lag))
        covariances.append(0.5 * (vertical + horizontal))
    low = float(plane.min()) + 0.5 / 255
    high = float(plane.max()) - 0.5 / 255
    extremes = np.count_nonzero(plane <= low) + np.count_nonzero(plane >= high) if low < high else n
    return PlaneStats(variance, covariances[0], covariances[1], min(1.0, extremes / n))


def pooled_correlations(per_plane: list[PlaneStats]) -> tuple[float, float]:
    """Lag-1 and lag-2 autocorrelation of several colour planes pooled: covariances summed before dividing.

    Noise drawn independently per channel would be averaged down in luma (to 45% of its variance); pooled,
    each channel keeps its own noise, and a faint channel (little variance) weighs little. Needs variance.
    """
    variance = sum(p.variance for p in per_plane)
    return sum(p.cov1 for p in per_plane) / variance, sum(p.cov2 for p in per_plane) / variance


def noise_fraction(rho1: float, rho2: float) -> float:
    """Share of the variance that is uncorrelated from pixel to pixel: 1 minus the lag-0 extrapolation 2 rho1 - rho2.

    About 0 for pictures (their correlation falls off linearly near lag 0), 1 for white noise, r^2 / (1 + r^2)
    for a picture drowned in white noise of r times its standard deviation; above 1 for alternating patterns.
    """
    return 1.0 - (2.0 * rho1 - rho2)


def gradient_kurtosis(y: np.ndarray) -> float | None:
    """Kurtosis of horizontal and vertical pixel differences (mean of the two); None for a flat frame."""
    values = []
    for d in (y[1:] - y[:-1], y[:, 1:] - y[:, :-1]):
        d = (d - np.float32(d.mean())).ravel()
        d2 = d * d
        second = float(d2.sum(dtype=np.float64)) / d.size
        if second <= 1e-14:
            return None
        values.append(float(np.dot(d2, d2)) / d.size / second**2)
    return 0.5 * (values[0] + values[1])


def half_size(y: np.ndarray) -> np.ndarray:
    """2x2 box average (odd edges dropped): the next level of the pyramid."""
    h, w = (y.shape[0] // 2) * 2, (y.shape[1] // 2) * 2
    y = y[:h, :w]
    return 0.25 * (y[0::2, 0::2] + y[1::2, 0::2] + y[0::2, 1::2] + y[1::2, 1::2])


def pyramid(y: np.ndarray, min_side: int) -> list[np.ndarray]:
    """The frame, then its 2x box-averaged halvings while the smaller side stays >= min_side."""
    levels = [y]
    while min(levels[-1].shape) // 2 >= min_side:
        levels.append(half_size(levels[-1]))
    return levels


def _fft_shape(h: int, w: int) -> tuple[int, int]:
    """Zero-padded FFT size: fast lengths (small prime factors), and room for linear correlation up to max lags."""
    return scipy.fft.next_fast_len(h + h // 4, real=True), scipy.fft.next_fast_len(w + w // 4, real=True)


@lru_cache(maxsize=16)
def _spectral_layout(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per frame shape: the 2-D Hann window, its autocorrelation, and the log-spaced radial frequency bins."""
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    padded = _fft_shape(h, w)
    window_acf = scipy.fft.irfft2(np.abs(scipy.fft.rfft2(window, s=padded)) ** 2, s=padded)
    fy = np.fft.fftfreq(padded[0])[:, None]
    fx = np.fft.rfftfreq(padded[1])[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    edges = np.geomspace(4.0 / min(h, w), SPECTRUM_MAX_FREQ, SPECTRUM_BINS + 1)
    bins = np.digitize(radius, edges).ravel()  # 0 and SPECTRUM_BINS + 1 are outside the fitted band
    counts = np.bincount(bins, minlength=SPECTRUM_BINS + 2)
    mean_radius = np.bincount(bins, weights=radius.ravel(), minlength=SPECTRUM_BINS + 2)
    return window, window_acf, bins, counts, mean_radius


def spectrum_stats(y: np.ndarray, max_lag: int = 64) -> tuple[float | None, float, int]:
    """(spectral slope, checkerboard score, its cell size in pixels) from one windowed FFT of the frame.

    The slope is the least-squares log-log slope of the radially averaged power between 4/min(H, W) and 0.35
    cycles/pixel (None when the frame is too small for three bins). The autocorrelation is the inverse FFT of
    the windowed power divided by the window's own autocorrelation. The checkerboard score at lag k is
    (mean diagonal correlation at (k, +-k) minus mean axis correlation at (k, 0), (0, k)) / 2: 1 for a
    checkerboard of k-pixel cells, about 0 or below for pictures (at most 0.1 measured).
    """
    h, w = y.shape
    window, window_acf, bins, counts, mean_radius = _spectral_layout(h, w)
    centred = (y - np.float32(y.mean())) * window
    padded = _fft_shape(h, w)
    spectrum = scipy.fft.rfft2(centred, s=padded, workers=1)
    power = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag

    slope = None
    band = slice(1, SPECTRUM_BINS + 1)
    summed = np.bincount(bins, weights=power.ravel(), minlength=SPECTRUM_BINS + 2)[band]
    count = counts[band]
    usable = count >= 3
    if usable.sum() >= 3 and np.all(summed[usable] > 0):
        log_f = np.log(mean_radius[band][usable] / count[usable])
        log_p = np.log(summed[usable] / count[usable])
        slope = float(np.polyfit(log_f, log_p, 1)[0])

    acf = scipy.fft.irfft2(power, s=padded, workers=1)
    if acf[0, 0] <= 0:
        return slope, 0.0, 1

    def rho(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Correlation at (row, column) lags: windowed autocovariance over the window's own, over lag 0's."""
        return (acf[rows, cols] / window_acf[rows, cols]) / (acf[0, 0] / window_acf[0, 0])

    lags = np.arange(1, max(2, min(max_lag, min(h, w) // 4) + 1))
    zeros = np.zeros_like(lags)
    diagonal = 0.5 * (rho(lags, lags) + rho(lags, -lags))
    axes = 0.5 * (rho(lags, zeros) + rho(zeros, lags))
    scores = 0.5 * (diagonal - axes)
    best = int(np.argmax(scores))
    return slope, float(scores[best]), int(lags[best])


def shifted_correlation(a: np.ndarray, b: np.ndarray, max_shift: int) -> float | None:
    """Largest normalised correlation of b with a over circular shifts of up to max_shift pixels per axis.

    A camera pan or slow motion keeps it near 1; an unrelated or re-drawn frame brings it near 0. None when
    either frame is flat.
    """
    a0 = a - np.float32(a.mean())
    b0 = b - np.float32(b.mean())
    norm = float(np.sqrt(np.sum(a0 * a0, dtype=np.float64) * np.sum(b0 * b0, dtype=np.float64)))
    if norm <= 1e-12:
        return None
    cross = scipy.fft.irfft2(scipy.fft.rfft2(a0) * np.conj(scipy.fft.rfft2(b0)), s=a.shape, workers=1)
    rows = np.r_[0 : max_shift + 1, -max_shift:0]
    return float(cross[np.ix_(rows, rows)].max() / norm)


_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def ink_connectivity(planes: np.ndarray, max_ink: float = 0.5) -> float | None:
    """How much more often a non-ground ("ink") pixel touches another ink pixel (8-neighbourhood) than the same
    number of ink pixels scattered at random would: (touching - chance) / (1 - chance), chance = 1 - (1 - d)^8 for
    ink density d. The ground is the most common colour (6 bits per channel). Strokes of a drawing, however thin
    and fine (a Canny tracing of grass), are connected curves: near 1. Salt-and-pepper and pixel-scrambled
    silhouettes are scattered: near 0. None without a plain ground (ink over `max_ink` of the frame, or none).
    planes: (C, H, W) in [0, 1]."""
    levels = np.minimum((planes * 64).astype(np.int32), 63)
    codes = levels[0]
    for plane in levels[1:]:
        codes = codes * 64 + plane
    ink = codes != int(np.argmax(np.bincount(codes.ravel())))  # (H, W)
    density = float(ink.mean())
    if density <= 0.0 or density > max_ink:
        return None
    h, w = ink.shape
    padded = np.pad(ink, 1)
    touching = np.zeros_like(ink)
    for dy, dx in _NEIGHBOURS:
        touching |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    chance = 1.0 - (1.0 - density) ** 8
    if chance >= 1.0 - 1e-9:
        return 0.0
    return (float(touching[ink].mean()) - chance) / (1.0 - chance)
