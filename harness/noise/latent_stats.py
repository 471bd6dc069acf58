"""Named statistics of the latents a pipeline hands its VAE, and the per-VAE signature they are judged against.

Image statistics cannot tell a channel-permuted latent from a correct one (the decode keeps the picture's layout)
nor a run stopped with half its noise left; the latents can. A VAE's latent channels are not interchangeable: the
channels of a picture's latent correlate with each other in a fixed pattern (the off-diagonal part of the C x C
inter-channel correlation matrix). The signature holds that pattern for one VAE, measured on latents of shipped
photographs (references/common/latent_signature.py encodes them), and a latent is read against it:

- pattern_alignment: how much of the signature's pattern the latent's correlations carry, projected on it
  (1: as strong as the signature's photos on average; about 0 for noise, whose channels are independent, and for
  permuted or mis-packed channels, whose pattern lands on the wrong pairs; noise left in a latent scales it down);
- pattern_residual: Frobenius norm of what the projection leaves (large when the correlations follow another
  pattern, small when the signature's pattern is only weakened);
- relabelling_gain: the alignment the best relabelling of the channels reaches, minus the alignment as labelled
  (a permutation or reversal is undone by one: gains of 0.7 and more; a picture's labels are already the best);
- correlation_distance: Frobenius distance of the correlation matrix from the signature's (the first idea,
  reported);
- leading_share, leading_direction_fit: the share of the latent's correlations its leading component carries
  (largest eigenvalue of the correlation matrix over C), and how much of that component lies in the two
  directions this VAE's pictures vary along most (the signature's two leading components; 1: inside them).
  A few-colour picture (flat-colour graphics) varies along one colour direction: its correlations are one
  component (share 0.5 and more), a direction pictures vary along, and with so little structure its alignment
  can be low and a relabelling can fit it; relabelled or mis-packed channels move that component out of the
  picture directions (fit <= 0.40 on the noise corpus's packing faults);
- detail_share, detail_alignment: the latent's fine detail (what a 3x3 box smoothing of each channel leaves):
  its share of the variance (median over channels; white noise about 8/9, a picture's latent mostly less) and its
  inter-channel correlations projected on the signature's pattern, like pattern_alignment. Independent noise is
  white and unrelated across channels, so noise left in a latent fills the fine detail without the VAE's pattern
  (detail_alignment <= 0.27 for runs stopped at sigma 0.52 on the train halves), while a picture's fine detail,
  even gravel or grass at 64 px, still carries it (>= 0.46 where detail is 40% of the variance or more);
- neighbour_correlation, scale_ratio, channel_offset: median lag-1 spatial correlation of the channels, RMS
  channel std over the signature's, RMS shift of the channel means in signature spreads (reported: they describe
  the latent, the verdict does not rest on them).

Latents here are in the normalised space (what the DiT produces, before `/ scaling_factor + shift_factor`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

SIGNATURE_VERSION = 1
PICTURE_DIRECTIONS = 2  # leading components of the signature's correlation (50% and 14% of it, photo VAE)
MIN_LATENT_SIDE = 8  # under 8x8 positions a 16x16 correlation matrix is mostly sampling noise (pure noise's
#  alignment spreads by about +-0.5 at 4x4)


class LatentError(ValueError):
    """Latents that cannot be judged (wrong rank, too small, channel count unlike the signature's)."""


def as_latent_stack(latents: Any) -> np.ndarray:
    """(C, h, w) or (B, C, h, w) (numpy or torch) -> (B, C, h, w) float64; one-line errors name the shape."""
    if hasattr(latents, "detach"):
        latents = latents.detach().cpu().float().numpy()
    array = np.asarray(latents, dtype=np.float64)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise LatentError(f"latents of shape {tuple(np.shape(latents))}: expected (C, h, w) or (B, C, h, w)")
    if array.size == 0:
        raise LatentError(f"latents of shape {tuple(array.shape)} are empty")
    if array.shape[1] < 2:
        raise LatentError(f"latents of shape {tuple(array.shape)} have fewer than 2 channels")
    return array


def correlation_matrix(latent: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (C, C) Pearson correlation of the channels over positions; a flat channel correlates 0."""
    flat = latent.reshape(latent.shape[0], -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=1))
    safe = np.where(norms > 1e-12, norms, np.inf)
    return (centred @ centred.T) / np.outer(safe, safe) + np.diag((norms <= 1e-12).astype(np.float64))


def box_detail(latent: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (C, h, w): each channel minus its 3x3 box mean (edges reflected): the fine detail."""
    padded = np.pad(latent, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    h, w = latent.shape[1:]
    smooth = sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
    return latent - smooth


def detail_statistics(latent: np.ndarray, pattern: np.ndarray) -> tuple[float, float]:
    """(C, h, w) latent, (C, C) off-diagonal signature pattern -> (detail_share, detail_alignment): the median
    share of each channel's variance in its fine detail, and that detail's correlations projected on the pattern."""
    detail = box_detail(latent)
    variance = latent.reshape(latent.shape[0], -1).var(axis=1)
    detail_variance = detail.reshape(detail.shape[0], -1).var(axis=1)
    share = float(np.median(detail_variance / np.maximum(variance, 1e-12)))
    return share, projected(correlation_matrix(detail) - np.eye(latent.shape[0]), pattern)


def projected(seen: np.ndarray, pattern: np.ndarray) -> float:
    """How much of `pattern` (C, C) the off-diagonal correlations `seen` carry: their projection on it (1: as
    strong as the pattern itself)."""
    return float((pattern * seen).sum() / max(float((pattern**2).sum()), 1e-12))


def neighbour_correlations(latent: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (C,) each channel's correlation with its right and lower neighbours (pooled); 0 when flat."""
    out = np.zeros(latent.shape[0])
    for c, plane in enumerate(latent):
        centred = plane - plane.mean()
        variance = float((centred**2).mean())
        if variance <= 1e-12:
            continue
        across = float((centred[:, 1:] * centred[:, :-1]).mean())
        down = float((centred[1:] * centred[:-1]).mean())
        out[c] = (across + down) / (2 * variance)
    return out


@dataclass(frozen=True)
class LatentSignature:
    """What one VAE's latents of pictures look like: the reference the latent check compares against.

    `reference` holds each statistic's values over the signature's own photo latents (the spread a picture
    has), so a verdict can say how far outside them a latent lies."""

    vae: dict[str, Any]  # identity: weights' sha256, shift/scaling factors, channels
    photos: list[str]  # what was encoded, e.g. "coffee@128"
    correlation: list[list[float]]  # (C, C) mean correlation matrix
    channel_mean: list[float]  # (C,) mean over the photo latents of each channel's mean
    channel_spread: list[float]  # (C,) each channel's std over all positions of all photo latents
    reference: dict[str, list[float]] = field(default_factory=dict)  # statistic -> its values on the photo latents
    version: int = SIGNATURE_VERSION

    @property
    def channels(self) -> int:
        return len(self.channel_mean)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentSignature:
        if data.get("version") != SIGNATURE_VERSION:
            raise LatentError(f"latent signature version {data.get('version')}, expected {SIGNATURE_VERSION}")
        return cls(**{k: data[k] for k in ("vae", "photos", "correlation", "channel_mean", "channel_spread",
                                           "reference", "version")})


def build_signature(latents: list[np.ndarray], photos: list[str], vae: dict[str, Any]) -> LatentSignature:
    """The signature of a VAE from the normalised latents (C, h, w) of pictures it encoded (each MIN_LATENT_SIDE
    positions a side or more)."""
    stack = [as_latent_stack(z)[0] for z in latents]
    if not stack or min(min(z.shape[1:]) for z in stack) < MIN_LATENT_SIDE:
        raise LatentError(f"a signature needs latents of {MIN_LATENT_SIDE}x{MIN_LATENT_SIDE} positions or more")
    correlation = np.mean([correlation_matrix(z) for z in stack], axis=0)
    means = np.array([z.reshape(z.shape[0], -1).mean(axis=1) for z in stack])  # (N, C)
    pooled = np.concatenate([z.reshape(z.shape[0], -1) for z in stack], axis=1)  # (C, all positions)
    spread = np.maximum(pooled.std(axis=1), 1e-6)
    signature = LatentSignature(vae, list(photos), correlation.tolist(), means.mean(axis=0).tolist(), spread.tolist())
    values: dict[str, list[float]] = {}
    for z in stack:
        for name, value in latent_statistics(z, signature).items():
            values.setdefault(name, []).append(round(float(value), 6))
    return replace(signature, reference=values)


def relabelled_alignment(observed: np.ndarray, pattern: np.ndarray, rounds: int = 20) -> float:
    """The largest alignment of `observed`'s off-diagonal correlations with `pattern` (both (C, C), zero diagonal)
    over relabellings of the observed channels, found by repeated linear assignment (a local search for the
    quadratic assignment) from the identity and from a match of sorted rows; the identity's alignment included."""
    from scipy.optimize import linear_sum_assignment

    norm = max(float((pattern**2).sum()), 1e-12)
    identity = np.arange(pattern.shape[0])

    def alignment(order: np.ndarray) -> float:
        return float((observed * pattern[np.ix_(order, order)]).sum() / norm)

    rows = np.abs(np.sort(observed, 1)[:, None, :] - np.sort(pattern, 1)[None, :, :]).sum(-1)  # (C, C) row costs
    best = alignment(identity)
    for order in (identity, linear_sum_assignment(rows)[1]):
        for _ in range(rounds):
            gain = observed @ pattern[:, order].T  # [i, j]: sum_k observed[i, k] pattern[j, order[k]]
            following = linear_sum_assignment(-gain)[1]
            if np.array_equal(following, order):
                break
            order = following
        best = max(best, alignment(order))
    return best


def leading_component(observed: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(C, C) correlation matrices of a latent and of the signature -> (the latent's leading eigenvalue over C,
    the squared length of its leading eigenvector's projection on the reference's PICTURE_DIRECTIONS leading
    eigenvectors)."""
    values, vectors = np.linalg.eigh(observed)  # ascending
    basis = np.linalg.eigh(reference)[1][:, ::-1][:, :PICTURE_DIRECTIONS]  # (C, PICTURE_DIRECTIONS)
    share = float(values[-1] / max(float(values.sum()), 1e-12))
    return share, float(((basis.T @ vectors[:, -1]) ** 2).sum())


def latent_statistics(latent: np.ndarray, signature: LatentSignature) -> dict[str, float]:
    """The named statistics of one (C, h, w) normalised latent against a signature."""
    if latent.shape[0] != signature.channels:
        raise LatentError(f"latent of shape {tuple(latent.shape)}: the signature's VAE has {signature.channels} "
                          "channels")
    flat = latent.reshape(latent.shape[0], -1)
    reference = np.asarray(signature.correlation)
    spread = np.asarray(signature.channel_spread)
    offsets = (flat.mean(axis=1) - np.asarray(signature.channel_mean)) / spread
    observed = correlation_matrix(latent)
    eye = np.eye(latent.shape[0])
    pattern, seen = reference - eye, observed - eye  # off-diagonal parts
    alignment = projected(seen, pattern)
    share, fit = leading_component(observed, reference)
    detail_share, detail_alignment = detail_statistics(latent, pattern)
    return {
        "pattern_alignment": alignment,
        "pattern_residual": float(np.linalg.norm(seen - alignment * pattern)),
        "relabelling_gain": relabelled_alignment(seen, pattern) - alignment,
        "leading_share": share,
        "leading_direction_fit": fit,
        "detail_share": detail_share,
        "detail_alignment": detail_alignment,
        "correlation_distance": float(np.linalg.norm(observed - reference)),
        "neighbour_correlation": float(np.median(neighbour_correlations(latent))),
        "scale_ratio": math.sqrt(float(np.mean(flat.var(axis=1))) / float(np.mean(spread**2))),
        "channel_offset": float(np.sqrt(np.mean(offsets**2))),
    }
