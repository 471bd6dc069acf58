"""Is a decoded output a picture, or noise? A verdict from image statistics, with the numbers behind it.

`detect_noise(frames)` judges decoded frames (one image, a batch of images, or a video) and returns a
`NoiseVerdict`, plain data that is truthy when the output is flagged. A frame is flagged when any of these
checks fires, the first one giving the reason (the statistics are in `harness/noise/image_stats.py`, the thresholds'
measured margins in `Thresholds`, `scripts/calibrate_noise_detector.py` and docs/noise-detector.md):

- non_finite: any NaN or infinity;
- near_constant: every channel's standard deviation below 0.01 (2.5 grey levels of 255);
- checkerboard: autocorrelation +1 along the diagonals and -1 along the axes at one lag;
- pixel_noise: 35% or more of the variance (colour channels pooled) is uncorrelated from pixel to pixel
  (white, uniform or salt-and-pepper noise, scrambled pixels, a picture drowned in noise), unless a fifth or
  more of the frame's 8x8 blocks are exactly flat (noise leaves no flat block, while thin lines and small text
  on a plain ground are uncorrelated across the stroke) or the ink on a plain ground forms connected curves,
  not scattered pixels (a tracing of a fine texture): drawings;
- smooth_noise: a Gaussian random field with a 1/f-family spectrum: pixel differences with kurtosis 2.6-3.5 at
  every pyramid level (sparse edges make pictures' heavier-tailed, mostly 5 and up) and a spectral slope
  between -3.5 and -1.25 (interpolated content is steeper, white-ish noise is left to pixel_noise);
- decoded_noise: what a VAE draws from broken latents (smeared noise, saturated blobs, scrambled colour and
  texture): one of the logistic regressions ("heads") over the named statistics of `harness/noise/features.py`
  (`harness/noise/learned.py`, fitted by scripts/train_noise_model.py on the noise corpus) passes its threshold;
  the reason names the head and the statistics that contributed most. Frames of 32-63 pixels a side have their
  own heads, fitted on a corpus of small frames; frames under 32 px are left to the rules above.
Binary and few-colour pictures (silhouettes, line art, text, QR codes) are pictures: no check fires on having
few values alone.
Video (`video=True`) adds flicker: consecutive frames that no longer correlate under a small shift, or a mean
brightness that jumps back and forth.

`noise_section(native, reference, expects_picture)` is the part of a parity report that says whether the
native output is noise and whether that fails the run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.noise import features, image_stats
from harness.noise.formatting import fmt as _fmt
from harness.noise.formatting import json_safe as _json_safe
from harness.noise.formatting import round6 as _round
from harness.noise.learned import MODEL_FILE, SMALL_MODEL_FILE, NoiseModel, decisive, explain, load_model, probability

VALUE_RANGES = ("auto", "0,1", "-1,1", "0,255")
CHANNEL_COUNTS = (1, 2, 3, 4)


class FramesError(ValueError):
    """Frames that cannot be judged (wrong rank, empty, unknown layout); the message names the shape."""


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds. Measured by scripts/calibrate_noise_detector.py (1,935 labelled samples): the
    picture nearest to each threshold and the degenerate case past it by the least, in the comments."""

    near_constant_std: float = 0.01  # pictures >= 0.039 (microaneurysms@64px); near-constant frame 0.003
    checkerboard_score: float = 0.5  # pictures <= 0.29 (a digit at 32 px); checkerboards >= 0.9997
    pixel_noise_fraction: float = 0.35  # pictures <= 0.254 (brick@64px); drowned (noise std = picture std) >= 0.455
    drawing_flat_share: float = 0.2  # pixel_noise needs fewer flat 8x8 blocks: drawings with thin lines >= 0.27,
    #  salt-and-pepper over 5% of a flat frame 0.04, every other calibrated noise 0
    drawing_ink_connectivity: float = 0.75  # ... and, on a plain ground, less connected ink (image_stats): Canny
    #  tracings of the corpus's train-half photos >= 0.990; calibrated noise <= 0.526 (a 1-px checkerboard: 1.0,
    #  the checkerboard check's); chosen in the gap by scripts/tune_noise_model.py
    gaussian_kurtosis: tuple[float, float] = (2.6, 3.5)  # Gaussian fields 2.9-3.1; pictures >= 5 (at their sharpest
    #  level) except fine textures at 64 px (gravel 3.0, grass 3.44) and smooth graphics (colorwheel@64px 2.78)
    noise_slope: tuple[float, float] = (-3.5, -1.25)  # 1/f noise -1.44 to -2.53; those textures -0.99 and above,
    #  upsampled digits -5.6 and below
    pyramid_min_side: int = 64  # levels below this many pixels are not judged: too few to tell texture from noise
    spectrum_max_side: int = 1024  # the FFT statistics use the first pyramid level no larger than this
    flicker_correlation: float = 0.5  # consecutive frames below this (best small shift) are a discontinuity;
    #  pans and zooms over photos >= 0.865, fresh noise or unrelated frames <= 0.17 (median)
    flicker_share: float = 0.25  # more than this share of discontinuous consecutive pairs is flicker
    flicker_brightness: float = 0.05  # median |second difference| of the frames' mean brightness: pictures <= 0.001
    flicker_max_side: int = 128  # the temporal correlation is taken on a pyramid level no larger than this
    flicker_max_shift: float = 1 / 16  # largest shift searched, as a share of that level's smaller side
    learned_model: bool = True  # run the decoded_noise check (harness/noise/learned_model.json); False: the rules alone
    learned_min_side: int = 64  # smaller frames are judged by the small-frame model (learned_model_small.json),
    small_learned_min_side: int = 32  # fitted on a corpus of 32-48 px frames; under 32 px: the rules alone


DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class CheckResult:
    """One check on one frame: the statistic, its threshold and a margin that is positive when it fires.

    The margin is the distance from the threshold relative to the threshold's size (for a window, to its
    nearer edge; for two conditions that must both hold, the smaller of the two): +0.3 means 30% past it.
    """

    name: str
    fired: bool
    value: float | list[float] | None
    threshold: float | list[float]
    margin: float


@dataclass
class FrameVerdict:
    index: int
    flagged: bool
    reason: str
    checks: list[CheckResult]
    statistics: dict[str, Any]

    @property
    def margin(self) -> float:
        """The largest check margin: above 0 flagged, below 0 by how much it escaped the nearest check."""
        return max(check.margin for check in self.checks)


@dataclass
class NoiseVerdict:
    """The verdict on one output: truthy when flagged. `statistics` are those of the decisive frame."""

    flagged: bool
    reason: str
    fired: list[str]
    statistics: dict[str, Any]
    checks: list[CheckResult]
    frames: int
    frame: int
    flagged_frames: list[int] = field(default_factory=list)
    temporal: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return self.flagged

    @property
    def verdict(self) -> str:
        return "flagged" if self.flagged else "ok"

    @property
    def margin(self) -> float:
        return max(check.margin for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data = {"verdict": self.verdict, **data, "margin": _round(self.margin)}
        return _json_safe(data)


def detect_noise(
    frames: Any,
    *,
    video: bool = False,
    value_range: str = "auto",
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> NoiseVerdict:
    """Judge decoded frames: (H, W), (H, W, C), (C, H, W), or a stack (N, H, W, C) / (N, C, H, W) / (N, H, W).

    Values: uint8 (0-255), bool, or float in [0, 1] or [-1, 1] (`value_range="auto"` picks [-1, 1] when the
    finite values go below -0.05, 0-255 when they exceed 1.5 and stay within 255.5). A stack is a batch of
    independent images unless `video` is True; then consecutive frames are also checked for flicker.
    Accepts numpy arrays and anything with `.detach()` (a torch tensor).
    """
    stack, is_stack = as_frame_stack(frames)
    resolved = resolve_range(stack, value_range)
    verdicts, small = [], []
    for index, raw in enumerate(stack):
        nonfinite = float(np.mean(~np.isfinite(raw))) if raw.dtype.kind == "f" else 0.0
        planes = unit_planes(raw, resolved)
        verdicts.append(judge_frame(index, planes, nonfinite, thresholds))
        if video:
            small.append(_flicker_plane(planes, thresholds))
    flagged_frames = [v.index for v in verdicts if v.flagged]
    decisive = verdicts[flagged_frames[0]] if flagged_frames else max(verdicts, key=lambda v: v.margin)

    temporal = None
    checks = list(decisive.checks)
    fired = [c.name for c in decisive.checks if c.fired]
    reason = decisive.reason
    count = len(verdicts)
    if video and is_stack and count > 1:
        temporal, flicker = judge_flicker(small, thresholds)
        checks.append(flicker)
        if flicker.fired:
            fired.append("flicker")
    if count > 1 and flagged_frames:
        reason = f"frame {decisive.index}: {reason} ({len(flagged_frames)} of {count} frames flagged)"
    elif count > 1:
        reason = f"{reason} (closest frame {decisive.index} of {count})"
    if "flicker" in fired:
        reason = f"{reason}; {temporal['reason']}" if flagged_frames else temporal["reason"]
    return NoiseVerdict(
        flagged=bool(flagged_frames) or "flicker" in fired, reason=reason, fired=fired,
        statistics=decisive.statistics, checks=checks, frames=count, frame=decisive.index,
        flagged_frames=flagged_frames, temporal=temporal,
    )


def as_frame_stack(frames: Any) -> tuple[np.ndarray, bool]:
    """Any accepted layout -> ((N, H, W, C) array in its own dtype, whether the input was a stack of frames).

    A 3-D array is one image when its last axis (HWC) or first axis (CHW) has 1-4 entries, else a stack of
    grey frames (N, H, W); a 4-D array is (N, H, W, C) when its last axis has 1-4 entries, else (N, C, H, W).
    """
    if hasattr(frames, "detach"):  # a torch tensor; bfloat16 has no numpy dtype
        tensor = frames.detach().cpu()
        frames = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    array = np.asarray(frames)
    if array.dtype.kind not in "biuf":
        raise FramesError(f"frames of dtype {array.dtype} are not numbers")
    if array.size == 0:
        raise FramesError(f"frames of shape {tuple(array.shape)} are empty")
    shape = tuple(array.shape)
    if array.ndim == 2:
        stack, is_stack = array[None, :, :, None], False
    elif array.ndim == 3 and shape[-1] in CHANNEL_COUNTS:
        stack, is_stack = array[None], False
    elif array.ndim == 3 and shape[0] in CHANNEL_COUNTS:
        stack, is_stack = np.moveaxis(array, 0, -1)[None], False
    elif array.ndim == 3:
        stack, is_stack = array[..., None], True
    elif array.ndim == 4 and shape[-1] in CHANNEL_COUNTS:
        stack, is_stack = array, True
    elif array.ndim == 4 and shape[1] in CHANNEL_COUNTS:
        stack, is_stack = np.moveaxis(array, 1, -1), True
    else:
        raise FramesError(
            f"frames of shape {shape}: expected (H, W), (H, W, C), (C, H, W), (N, H, W), (N, H, W, C) or "
            f"(N, C, H, W) with C in {CHANNEL_COUNTS}"
        )
    if min(stack.shape[1:3]) < 4:
        raise FramesError(f"frames of shape {shape} are smaller than 4x4 pixels")
    return stack, is_stack


def resolve_range(stack: np.ndarray, value_range: str = "auto") -> str:
    """The value convention of the frames: the one asked for, or (auto) the one their values imply."""
    if value_range not in VALUE_RANGES:
        raise FramesError(f"value range '{value_range}' is not one of {', '.join(VALUE_RANGES)}")
    if stack.dtype == bool:
        return "0,1"
    return _infer_range(stack) if value_range == "auto" else value_range


def unit_planes(frame: np.ndarray, value_range: str) -> np.ndarray:
    """One (H, W, C) frame in its own dtype -> (C', H, W) float32 planes in [0, 1], alpha dropped, clipped as
    a PNG encoder would; non-finite values become 0 (they are flagged on their own)."""
    colour = frame[..., :3] if frame.shape[-1] >= 3 else frame[..., :1]
    planes = np.array(np.moveaxis(colour, -1, 0), dtype=np.float32, order="C")
    if frame.dtype.kind == "f":
        np.nan_to_num(planes, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    scale, offset = _RANGE_MAPS[value_range]
    if scale != 1.0:
        planes *= np.float32(scale)
    if offset:
        planes += np.float32(offset)
    if frame.dtype.kind == "f" or value_range != "0,255":  # uint8 / 255 lies in [0, 1] already
        np.clip(planes, 0.0, 1.0, out=planes)
    return planes


_RANGE_MAPS = {"0,1": (1.0, 0.0), "-1,1": (0.5, 0.5), "0,255": (1 / 255, 0.0), "0,65535": (1 / 65535, 0.0)}


def _infer_range(stack: np.ndarray) -> str:
    if stack.dtype.kind in "iu":
        low, high = int(stack.min()), int(stack.max())
        if low >= 0 and high <= 255:
            return "0,255"
        if low >= 0 and high <= 65535:
            return "0,65535"
        raise FramesError(f"integer frames with values {low}..{high}: expected 0..255 (or 0..65535)")
    finite = stack[np.isfinite(stack)]
    if finite.size == 0:
        return "0,1"
    low, high = float(finite.min()), float(finite.max())
    if low < -0.05:
        return "-1,1"
    if 1.5 < high <= 255.5:
        return "0,255"
    return "0,1"


def judge_frame(index: int, planes: np.ndarray, nonfinite: float, thresholds: Thresholds) -> FrameVerdict:
    """All checks on one frame given as (C, H, W) colour planes in [0, 1]; the first that fires is the reason."""
    t = thresholds
    stats: dict[str, Any] = {"height": int(planes.shape[1]), "width": int(planes.shape[2]),
                             "nonfinite_fraction": nonfinite}
    checks = [CheckResult("non_finite", nonfinite > 0, nonfinite, 0.0, 1.0 if nonfinite > 0 else -math.inf)]
    if nonfinite > 0:
        reason = f"non-finite values: {nonfinite:.1%} of the values are NaN or infinite"
        return FrameVerdict(index, True, reason, checks, stats)

    per_plane = [image_stats.plane_stats(plane) for plane in planes]
    std = max(p.std for p in per_plane)
    midtones = 1.0 - sum(p.extreme_share for p in per_plane) / len(per_plane)
    stats.update(std=std, midtone_share=midtones)
    checks.append(_below("near_constant", std, t.near_constant_std))
    if checks[-1].fired:  # a flat frame: the ratios below say nothing more
        return _verdict(index, checks, stats)

    rho1, rho2 = image_stats.pooled_correlations(per_plane)
    fraction = image_stats.noise_fraction(rho1, rho2)
    y = image_stats.luminance(planes)
    if float(y.std()) <= 1e-6:  # colour that cancels out in luma: judge the liveliest channel instead
        y = planes[int(np.argmax([p.variance for p in per_plane]))]
    levels = image_stats.pyramid(y, t.pyramid_min_side)
    kurtoses = [k for k in (image_stats.gradient_kurtosis(level) for level in levels) if k is not None]
    level = next((i for i, lv in enumerate(levels) if max(lv.shape) <= t.spectrum_max_side), len(levels) - 1)
    slope, checker, cell = image_stats.spectrum_stats(levels[level])
    stats.update(
        lag1_correlation=rho1, lag2_correlation=rho2, noise_fraction=fraction,
        gradient_kurtosis=kurtoses[0] if kurtoses else None, gradient_kurtosis_max=max(kurtoses, default=None),
        pyramid_levels=len(levels), spectral_slope=slope, checkerboard_score=checker,
        checkerboard_cell=cell * 2**level, spectrum_level=level,
    )
    checks.append(_above("checkerboard", checker, t.checkerboard_score))
    contrast = features.block_contrast(planes) if min(planes.shape[1:]) >= 8 else None
    flat = contrast["flat_share"] if contrast is not None else 0.0
    stats["flat_share"] = flat
    pixel_noise = _above("pixel_noise", fraction, t.pixel_noise_fraction)
    if flat >= t.drawing_flat_share:  # a drawing: strokes, not noise, make its pixel-scale variance
        pixel_noise.fired = False
        pixel_noise.margin = min(pixel_noise.margin, (t.drawing_flat_share - flat) / t.drawing_flat_share)
    elif pixel_noise.fired:  # few flat blocks: a drawing still, if its ink on a plain ground forms curves
        ink = stats["ink_connectivity"] = image_stats.ink_connectivity(planes)
        if ink is not None and ink >= t.drawing_ink_connectivity:
            pixel_noise.fired = False
            pixel_noise.margin = (t.drawing_ink_connectivity - ink) / t.drawing_ink_connectivity
    checks.append(pixel_noise)
    checks.append(_smooth_noise(stats["gradient_kurtosis_max"], slope, t))
    side = min(planes.shape[1:])
    if side >= t.small_learned_min_side:
        stats["features"] = features.frame_features(planes, y, kurtoses, fraction, midtones, contrast)
        if t.learned_model:
            checks.append(_decoded_noise(load_model(MODEL_FILE if side >= t.learned_min_side else SMALL_MODEL_FILE),
                                         stats))
    return _verdict(index, checks, stats)


def _decoded_noise(model: NoiseModel, stats: dict[str, Any]) -> CheckResult:
    """The learned check: every head's logit over the frame's named statistics; the decisive head (the one
    furthest past, or nearest to, its threshold) is reported with its largest contributions."""
    scores = model.score(stats["features"])
    score = decisive(scores)
    stats["model"] = {"head": score.head, "logit": score.logit, "threshold": score.threshold,
                      "probability": probability(score.logit), "explanation": explain(score),
                      "contributions": [asdict(c) for c in score.contributions[:5]],
                      "heads": {s.head: {"logit": s.logit, "threshold": s.threshold, "fired": s.fired,
                                         "out_of_range": [o.feature for o in s.out_of_range]} for s in scores}}
    if score.abstains:  # a high logit that cannot fire: say so, or "closest: 3.6 vs 1.5" reads as a bug
        o = score.out_of_range[0]
        stats["model"]["abstains"] = (f"head {score.head} abstains: {o.feature} {o.value:.3g} outside "
                                      f"[{o.low:.3g}, {o.high:.3g}] ({o.excess:.2g} widths), the range of its "
                                      f"training garbage, {len(score.out_of_range)} statistic(s) out")
    return CheckResult("decoded_noise", score.fired, score.logit, score.threshold, score.margin)


def _verdict(index: int, checks: list[CheckResult], stats: dict[str, Any]) -> FrameVerdict:
    fired = [c for c in checks if c.fired]
    if fired:
        return FrameVerdict(index, True, _describe(fired[0], stats), checks, stats)
    closest = max(checks, key=lambda c: c.margin)
    reason = f"no check fired; closest: {closest.name} {_fmt(closest.value)} vs {_fmt(closest.threshold)}"
    if closest.name == "decoded_noise" and "abstains" in stats.get("model", {}):
        reason += f" ({stats['model']['abstains']})"
    elif closest.name == "pixel_noise" and closest.value >= closest.threshold:  # past it, but exempt as a drawing
        ink = stats.get("ink_connectivity")
        reason += (f" (a drawing: ink connectivity {ink:.3g}, connected strokes on a plain ground)" if ink is not None
                   else f" (a drawing: {stats['flat_share']:.0%} of its 8x8 blocks are flat)")
    return FrameVerdict(index, False, reason, checks, stats)


def _describe(check: CheckResult, stats: dict[str, Any]) -> str:
    v, t = _fmt(check.value), _fmt(check.threshold)
    if check.name == "near_constant":
        return f"near-constant frame: largest channel std {v} < {t}"
    if check.name == "checkerboard":
        return f"checkerboard: score {v} >= {t} at {stats['checkerboard_cell']}-pixel cells"
    if check.name == "pixel_noise":
        return f"pixel-scale noise: {check.value:.0%} of the variance is uncorrelated between neighbours (>= {t})"
    if check.name == "smooth_noise":
        kurtosis, slope = check.value
        return (f"smooth Gaussian noise: gradient kurtosis {_fmt(kurtosis)} in {_fmt(check.threshold[:2])} at every "
                f"scale (no edges) and spectral slope {_fmt(slope)} in {_fmt(check.threshold[2:])}")
    if check.name == "decoded_noise":
        return f"decoded noise: {stats['model']['explanation']}"
    return f"{check.name}: {v} vs {t}"


def _above(name: str, value: float, threshold: float) -> CheckResult:
    return CheckResult(name, value >= threshold, value, threshold, (value - threshold) / abs(threshold))


def _below(name: str, value: float, threshold: float) -> CheckResult:
    return CheckResult(name, value < threshold, value, threshold, (threshold - value) / abs(threshold))


def _smooth_noise(kurtosis: float | None, slope: float | None, t: Thresholds) -> CheckResult:
    (k_low, k_high), (s_low, s_high) = t.gaussian_kurtosis, t.noise_slope
    threshold = [k_low, k_high, s_low, s_high]
    if kurtosis is None or slope is None:
        return CheckResult("smooth_noise", False, [kurtosis, slope], threshold, -math.inf)
    margin = min((kurtosis - k_low) / abs(k_low), (k_high - kurtosis) / abs(k_high),
                 (slope - s_low) / abs(s_low), (s_high - slope) / abs(s_high))
    return CheckResult("smooth_noise", margin >= 0, [kurtosis, slope], threshold, margin)


def _flicker_plane(planes: np.ndarray, t: Thresholds) -> np.ndarray:
    """The frame's luma, halved until no side exceeds flicker_max_side: the temporal checks need no detail."""
    y = image_stats.luminance(planes)
    while max(y.shape) > t.flicker_max_side and min(y.shape) >= 16:
        y = image_stats.half_size(y)
    return y


def judge_flicker(small: list[np.ndarray], thresholds: Thresholds) -> tuple[dict[str, Any], CheckResult]:
    """Temporal statistics of a video (its frames' reduced luma, in order) and the flicker check on them."""
    t = thresholds
    shift = max(1, round(min(small[0].shape) * t.flicker_max_shift))
    correlations = [image_stats.shifted_correlation(a, b, shift) for a, b in zip(small[:-1], small[1:], strict=True)]
    breaks = [i for i, c in enumerate(correlations) if c is None or c < t.flicker_correlation]
    share = len(breaks) / len(correlations)
    means = np.array([float(y.mean()) for y in small])
    jitter = float(np.median(np.abs(np.diff(means, n=2)))) if len(means) >= 3 else None
    share_margin = (share - t.flicker_share) / t.flicker_share
    jitter_margin = -math.inf if jitter is None else (jitter - t.flicker_brightness) / t.flicker_brightness
    fired = share > t.flicker_share or (jitter is not None and jitter > t.flicker_brightness)
    if share > t.flicker_share:
        reason = (f"flicker: {len(breaks)} of {len(correlations)} consecutive frame pairs correlate below "
                  f"{t.flicker_correlation} (first after frame {breaks[0]})")
    elif fired:
        reason = f"flicker: mean brightness jumps back and forth by {jitter:.3f} (> {t.flicker_brightness})"
    else:
        reason = "no flicker"
    valid = [c for c in correlations if c is not None]
    temporal = {
        "pair_correlation_min": min(valid, default=None),
        "pair_correlation_median": float(np.median(valid)) if valid else None,
        "discontinuous_pairs": breaks,
        "discontinuous_share": share,
        "brightness_jitter": jitter,
        "searched_shift": f"{shift} px at {small[0].shape[1]}x{small[0].shape[0]}",
        "reason": reason,
    }
    check = CheckResult("flicker", fired, [share, jitter], [t.flicker_share, t.flicker_brightness],
                        max(share_margin, jitter_margin))
    return temporal, check


def noise_section(native_frames: Any, reference_frames: Any, expects_picture: bool, *, video: bool = False) -> dict:
    """The noise part of a parity report: both sides' verdicts and whether the native verdict fails the run.

    Frames as the run decodes them: (B, C, H, W) images or (B, C, F, H, W) videos, in [0, 1] (tensors or
    arrays; any layout `detect_noise` takes). A flagged native output fails the run when the case expects a
    real picture, even when the reference is flagged too: then the checkpoint itself gives noise. A
    random-weight checkpoint (expects_picture False) draws noise-like pictures on both sides by design, so
    there the section informs and never fails.
    """
    native = _judge_output(native_frames, video)
    reference = _judge_output(reference_frames, video)
    native_flagged, reference_flagged = native["verdict"] == "flagged", reference["verdict"] == "flagged"
    if not expects_picture:
        fails = False
        note = ("informative only: this checkpoint is not expected to draw a picture (random weights); "
                f"native {native['verdict']}, reference {reference['verdict']}")
    elif native_flagged and reference_flagged:
        fails = True
        note = (f"native output flagged ({native['reason']}); the reference is flagged too "
                f"({reference['reason']}): the checkpoint itself gives noise")
    elif native_flagged:
        fails = True
        note = f"native output flagged ({native['reason']}) while the reference draws a picture"
    elif reference_flagged:
        fails = False
        note = f"reference output flagged ({reference['reason']}) but the native output is not"
    else:
        fails = False
        note = "both outputs look like pictures"
    return {"native": native, "reference": reference, "fails_run": fails, "note": note}


def _judge_output(frames: Any, video: bool) -> dict[str, Any]:
    """The verdict dict of one side's output; a (B, C, F, H, W) batch of videos is judged video by video and
    the first flagged one (else the closest call) stands for the batch, with its index as `batch_item`."""
    if hasattr(frames, "detach"):
        tensor = frames.detach().cpu()
        frames = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    array = np.asarray(frames)
    if array.ndim != 5:
        return detect_noise(array, video=video).to_dict()
    verdicts = [detect_noise(np.moveaxis(item, 0, -1), video=True) for item in array]  # (C, F, H, W) -> (F, H, W, C)
    flagged = [i for i, v in enumerate(verdicts) if v]
    index = flagged[0] if flagged else max(range(len(verdicts)), key=lambda i: verdicts[i].margin)
    return {**verdicts[index].to_dict(), "batch_item": index, "batch_flagged": flagged}
