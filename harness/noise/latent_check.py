"""The latent check: are the latents a pipeline hands its VAE a picture's latents, for this VAE?

`judge_latents(latents, signature)` reads the statistics of harness/noise/latent_stats.py against the VAE's
signature and fires, like the image detector, with the statistic and its distance from the threshold:

- no_pattern: pattern_alignment below 0.2: the channels do not correlate the way this VAE's pictures do (noise,
  a runaway sampler, channels packed in the wrong order);
- noise_left: pattern_alignment below 0.55 with pattern_residual below 3.0: the VAE's own pattern, weakened and
  nothing else in its place: independent noise mixed into a picture's latent (a run stopped early);
- noise_in_detail: detail_alignment below 0.35 with detail_share 0.4 or more: the latent's fine detail is a
  large part of it and does not carry the VAE's channel pattern: white, channel-independent noise left in it
  (a run stopped at sigma 0.52 keeps pattern_alignment up to 0.64, over noise_left's line, but not in its detail);
- channels_relabelled: pattern_alignment below 0.45 and relabelling_gain of 0.4 or more: a relabelling of the
  channels restores the pattern (channels permuted or reversed).

Thresholds were chosen on the train halves of the noise corpus (seeds 16016, 46016, 56016: 291 clean and 462
garbage latents of the photo VAE, docs/noise-learned-check.md); the figures beside each are in `LatentThresholds`.
A latent under 8x8 positions, or one with almost no variance (a flat picture), is not judged (the check
abstains and says why). Nor are no_pattern, noise_in_detail and channels_relabelled on a few-colour picture's
latent (flat-colour graphics: one correlation component carrying 40% or more of the correlations, lying in the
directions this VAE's pictures vary along): its pattern is too thin to read labels from, and its detail (edges of
flat fields) too thin to read noise from (through the photo VAE, 26 of 200 flat graphics were called relabelled or
patternless before this guard, 0 after); noise_left is still judged.
`combine` adds the verdict to a report's noise section: the output is flagged when the
image detector or the latent check flags it, except that an image flag by the `noise_latents` head alone is
overruled by latents that pass with this VAE's pattern (harness/noise/overrule.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.noise.formatting import json_safe
from harness.noise.latent_stats import (
    MIN_LATENT_SIDE,
    LatentError,
    LatentSignature,
    as_latent_stack,
    latent_statistics,
)
from harness.noise.overrule import describe_overrule, overrule


@dataclass(frozen=True)
class LatentThresholds:
    """Measured on the train halves (photo VAE, 64-512 px): clean = reconstructions, correct sampler outputs,
    encoded drawings, clean videos; the nearest of each side in the comments."""

    no_pattern_alignment: float = 0.2  # clean >= 0.34 (a 64 px brick reconstruction); pack order swapped <= -0.02
    noise_alignment: float = 0.55  # stopped at sigma 0.52 <= 0.48; clean >= 0.62 but for the two below
    noise_residual: float = 3.0  # noise-weakened patterns <= 2.2; the brick (0.34) 5.0, a flat graphic (0.47) 11.3
    detail_alignment: float = 0.35  # stopped at sigma 0.52 <= 0.27 (all stopped runs, pure noise <= 0.27); clean
    #  with detail_share >= 0.4: >= 0.46 (a 64 px brick reconstruction; gravel/grass at 64 px >= 0.74)
    detail_share: float = 0.4  # stopped runs and pure noise >= 0.73; the clean latents under 0.35 detail_alignment
    #  (flat-colour graphics through the VAE, seen halves) <= 0.10
    relabelled_alignment: float = 0.45  # channels permuted/reversed <= 0.42; the flat graphic 0.47 (its gain 0.89)
    relabelling_gain: float = 0.4  # permuted/reversed >= 0.68; pictures <= 0.17 (the flat graphic aside)
    min_scale_ratio: float = 0.05  # a latent this flat (RMS channel std vs the signature's) is a flat picture
    few_colour_share: float = 0.4  # flat graphics no_pattern/channels_relabelled called garbage >= 0.51; garbage
    #  latents (six halves) caught with leading_direction_fit >= 0.45: share <= 0.29 (noise-like)
    few_colour_fit: float = 0.45  # packing faults (channels permuted/reversed, pack order) <= 0.32 train halves,
    #  <= 0.40 seen halves; flat graphics >= 0.68 train halves, >= 0.48 of 200 drawn outside the corpus


GUARDED_CHECKS = ("no_pattern", "noise_in_detail", "channels_relabelled")  # what a few-colour picture's latent
#  is not judged by (noise_in_detail: a flat graphic's thin detail, its edges, need not follow the pattern; noise
#  left in a latent spreads its correlations: leading_share <= 0.29 on every stopped run of the train halves)


DEFAULT_LATENT_THRESHOLDS = LatentThresholds()


@dataclass
class LatentCheck:
    """One check on one latent: its statistic(s), threshold(s), and a margin > 0 when it fires (the smaller of
    the relative distances past each of its conditions)."""

    name: str
    fired: bool
    value: float | list[float]
    threshold: float | list[float]
    margin: float
    stood_down: bool = False  # it would have fired, but the latent is a few-colour picture's (not judged by it)


@dataclass
class LatentVerdict:
    """The verdict on one output's latents (a batch or a video's frames): truthy when flagged."""

    flagged: bool
    reason: str
    fired: list[str]
    statistics: dict[str, float]  # of the decisive latent
    checks: list[LatentCheck]
    latents: int
    latent: int  # the decisive latent's index
    flagged_latents: list[int] = field(default_factory=list)
    abstained: str | None = None  # why the check said nothing (too small, flat)
    vae: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.flagged

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"verdict": "flagged" if self.flagged else ("abstained" if self.abstained else "ok"),
                          **asdict(self)})


def _below(value: float, threshold: float) -> float:
    return (threshold - value) / max(abs(threshold), 1e-6)


def _above(value: float, threshold: float) -> float:
    return (value - threshold) / max(abs(threshold), 1e-6)


def few_colour(stats: dict[str, float], t: LatentThresholds = DEFAULT_LATENT_THRESHOLDS) -> bool:
    """A few-colour picture's latent: one correlation component carries much of it and lies in the directions
    this VAE's pictures vary along (relabelled or mis-packed channels move it out of them)."""
    return stats["leading_share"] >= t.few_colour_share and stats["leading_direction_fit"] >= t.few_colour_fit


def latent_checks(stats: dict[str, float], t: LatentThresholds = DEFAULT_LATENT_THRESHOLDS) -> list[LatentCheck]:
    """The four checks on one latent's statistics (no_pattern, noise_in_detail and channels_relabelled stand
    down on a few-colour picture's latent)."""
    a, r, g = stats["pattern_alignment"], stats["pattern_residual"], stats["relabelling_gain"]
    no_pattern = _below(a, t.no_pattern_alignment)
    noise = min(_below(a, t.noise_alignment), _below(r, t.noise_residual))
    relabelled = min(_below(a, t.relabelled_alignment), _above(g, t.relabelling_gain))
    d, share = stats["detail_alignment"], stats["detail_share"]
    detail = min(_below(d, t.detail_alignment), _above(share, t.detail_share))
    checks = [
        LatentCheck("no_pattern", no_pattern > 0, a, t.no_pattern_alignment, no_pattern),
        LatentCheck("noise_left", noise > 0, [a, r], [t.noise_alignment, t.noise_residual], noise),
        LatentCheck("noise_in_detail", detail > 0, [d, share], [t.detail_alignment, t.detail_share], detail),
        LatentCheck("channels_relabelled", relabelled > 0, [a, g], [t.relabelled_alignment, t.relabelling_gain],
                    relabelled),
    ]
    if few_colour(stats, t):
        for check in checks:
            if check.name in GUARDED_CHECKS and check.fired:
                check.fired, check.stood_down = False, True
    return checks


def describe(check: LatentCheck, stats: dict[str, float]) -> str:
    """One line: which statistic fired, by how much."""
    a = stats["pattern_alignment"]
    if check.name == "no_pattern":
        return (f"latents without this VAE's channel pattern: pattern_alignment {a:+.2f} < "
                f"{check.threshold:+.2f} (its pictures about 1)")
    if check.name == "noise_left":
        return (f"noise left in the latents: pattern_alignment {a:+.2f} < {check.threshold[0]:.2f} with "
                f"pattern_residual {stats['pattern_residual']:.2f} < {check.threshold[1]:.1f} (the VAE's pattern, "
                f"weakened: a picture's latent mixed with independent noise)")
    if check.name == "noise_in_detail":
        return (f"noise left in the latents' fine detail: detail_alignment {stats['detail_alignment']:+.2f} < "
                f"{check.threshold[0]:.2f} with detail_share {stats['detail_share']:.2f} >= {check.threshold[1]:.2f} "
                f"(the detail a 3x3 smoothing leaves is white, channel-independent noise; pattern_alignment {a:+.2f})")
    return (f"latent channels relabelled: pattern_alignment {a:+.2f} < {check.threshold[0]:.2f} and relabelling "
            f"the channels raises it by {stats['relabelling_gain']:.2f} >= {check.threshold[1]:.2f} "
            f"(channels permuted, reversed or packed out of order)")


def judge_latents(latents: Any, signature: LatentSignature,
                  thresholds: LatentThresholds = DEFAULT_LATENT_THRESHOLDS) -> LatentVerdict:
    """Judge normalised latents, (C, h, w) or (B, C, h, w) (a batch, or a video's frames), against a signature.
    Raises LatentError for latents of the wrong rank or channel count."""
    stack = as_latent_stack(latents)  # (B, C, h, w)
    if stack.shape[1] != signature.channels:
        raise LatentError(f"latents of shape {tuple(stack.shape)}: the signature's VAE has {signature.channels} "
                          "channels")
    if min(stack.shape[2:]) < MIN_LATENT_SIDE:
        return _abstain(f"latents of {stack.shape[2]}x{stack.shape[3]} positions: the check needs "
                        f"{MIN_LATENT_SIDE}x{MIN_LATENT_SIDE} or more", len(stack), signature)
    judged = []
    for index, latent in enumerate(stack):
        stats = latent_statistics(latent, signature)
        if stats["scale_ratio"] < thresholds.min_scale_ratio:
            judged.append((index, stats, []))
            continue
        judged.append((index, stats, latent_checks(stats, thresholds)))
    live = [j for j in judged if j[2]]
    if not live:
        ratio = judged[0][1]["scale_ratio"]
        return _abstain(f"flat latents (RMS channel std {ratio:.3f} of the signature's < "
                        f"{thresholds.min_scale_ratio}): a flat picture, left to the image detector", len(stack),
                        signature)
    flagged = [i for i, _, checks in live if any(c.fired for c in checks)]
    if not flagged:
        guarded = [j for j in live if any(c.stood_down for c in j[2])]
        if guarded:
            return _few_colour_abstain(guarded[0], len(stack), signature, thresholds)
    index, stats, checks = (next(j for j in live if j[0] == flagged[0]) if flagged
                            else max(live, key=lambda j: max(c.margin for c in j[2])))
    fired = [c.name for c in checks if c.fired]
    if fired:
        reason = describe(next(c for c in checks if c.fired), stats)
    else:
        closest = max(checks, key=lambda c: c.margin)
        reason = (f"latents carry this VAE's channel pattern: pattern_alignment {stats['pattern_alignment']:+.2f}, "
                  f"relabelling_gain {stats['relabelling_gain']:.2f}; closest: {closest.name} (margin "
                  f"{closest.margin:+.2f})")
    if len(stack) > 1:
        reason += (f" (latent {index}: {len(flagged)} of {len(stack)} flagged)" if flagged
                   else f" (closest latent {index} of {len(stack)})")
    return LatentVerdict(bool(flagged), reason, fired, stats, checks, len(stack), index, flagged,
                         vae=dict(signature.vae))


def _few_colour_abstain(judged: tuple[int, dict[str, float], list[LatentCheck]], count: int,
                        signature: LatentSignature, t: LatentThresholds) -> LatentVerdict:
    """Nothing fired but a check stood down on a few-colour picture's latent: the check abstains, naming both."""
    index, stats, checks = judged
    names = ", ".join(c.name for c in checks if c.stood_down)
    why = (f"a few-colour picture's latents (leading component {stats['leading_share']:.2f} >= "
           f"{t.few_colour_share} of the correlations, {stats['leading_direction_fit']:.2f} >= {t.few_colour_fit} "
           f"of it in this VAE's picture directions; pattern_alignment {stats['pattern_alignment']:+.2f}, "
           f"relabelling_gain {stats['relabelling_gain']:.2f}): {names} not judged, left to the image detector")
    if count > 1:
        why += f" (latent {index} of {count})"
    return LatentVerdict(False, f"latent check abstains: {why}", [], stats, checks, int(count), index, [], why,
                         dict(signature.vae))


def _abstain(why: str, count: int, signature: LatentSignature) -> LatentVerdict:
    return LatentVerdict(False, f"latent check abstains: {why}", [], {}, [], int(count), 0, [], why,
                         dict(signature.vae))


def normalise(raw: Any, signature: LatentSignature) -> np.ndarray:
    """Latents in the VAE's own space (what `decode` receives, a trace's decode/latents) -> the normalised space
    the signature is measured in: (raw - shift_factor) * scaling_factor."""
    if hasattr(raw, "detach"):
        raw = raw.detach().cpu().float().numpy()
    shift = float(signature.vae.get("shift_factor", 0.0))
    scale = float(signature.vae.get("scaling_factor", 1.0))
    return (np.asarray(raw, dtype=np.float64) - shift) * scale


def combine(section: dict[str, Any], verdict: LatentVerdict, expects_picture: bool) -> dict[str, Any]:
    """A report's noise section (harness/noise/detector.py `noise_section`) with the native latents' verdict
    added as native["latent"]: the native output counts as flagged when either check flags it, which fails the
    run when the case expects a picture; an image flag by the `noise_latents` head alone is overruled when the
    latents pass with this VAE's pattern (harness/noise/overrule.py), recorded as native["overruled"]."""
    native = dict(section["native"])
    native["latent"] = verdict.to_dict()
    combined = dict(section, native=native)
    if verdict.flagged:
        native["image_verdict"] = native["verdict"]
        native["verdict"] = "flagged"
        if native.get("image_verdict") != "flagged":
            native["reason"] = verdict.reason
            native["flagged_by"] = "latent check"
        else:
            native["flagged_by"] = "image detector and latent check"
        if expects_picture and not section["fails_run"]:
            combined["fails_run"] = True
            combined["note"] = f"native latents flagged ({verdict.reason}); the decoded image: {section['note']}"
        return combined
    overruled = overrule(section["native"], native["latent"])
    if overruled is not None:
        line = describe_overrule(overruled)
        native.update(image_verdict="flagged", image_reason=native["reason"], verdict="ok", overruled=overruled,
                      reason=f"{line} (image detector: {native['reason']})")
        reference = (section.get("reference") or {}).get("verdict")
        combined["fails_run"] = False
        combined["note"] = f"native output not noise: {line}; reference {reference}"
    return combined
