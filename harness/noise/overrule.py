"""Overruling the image detector's `noise_latents` head with the latents themselves.

The learned head `noise_latents` claims "this image is a decode of noise latents (random or half-denoised)". At
64-128 px a fine texture (gravel, brick: 8x8 latent cells) looks like that to image statistics, and no refit
separates them (docs/noise-learned-check.md, "Fine textures at 64 px"). Where the latents are at hand (a run's
decode stage) the claim can be checked on them: if the latent check passes them (not flagged, not abstaining)
and they carry this VAE's channel pattern with margin (pattern_alignment well above what noise or a run stopped
with noise left gives), an image flag whose *only* firing check is that head is overruled.

Never overruled: the rules (non_finite, near_constant, checkerboard, pixel_noise, smooth_noise), flicker, the
other heads (runaway_sampler, scrambled_latents), a flag on more than one frame or on a batch or video (the
decisive frame's statistics are all a report holds), and anything when the latent check flags or abstains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OVERRULABLE_HEAD = "noise_latents"


@dataclass(frozen=True)
class OverruleThresholds:
    """Chosen on the train halves of seeds 16016, 46016, 56016 and the texture set drawn from their train
    photographs (scripts/study_latent_overrule.py); the nearest values of each side in the comments."""

    min_pattern_alignment: float = 0.55  # between the two sides: noise-like garbage latents (pure noise,
    #  half-denoised) <= 0.48 (a run stopped at 12 of 20 steps; the 7 garbage items the head alone caught: <= 0.43,
    #  all flagged by the latent check); the clean flags by the head alone (brick textures at 64 px through the VAE)
    #  0.62, 0.68, 0.79. The same line as the latent check's noise_left: above it, no noise-weakened pattern


DEFAULT_OVERRULE_THRESHOLDS = OverruleThresholds()


def learned_head_only(image: dict[str, Any]) -> dict[str, Any] | None:
    """The `noise_latents` head's score when it is the only thing that flags this image verdict (a
    NoiseVerdict.to_dict(): one frame, decoded_noise alone fired, and of the heads only noise_latents), else None."""
    if image.get("verdict") != "flagged" or image.get("fired") != ["decoded_noise"]:
        return None
    if image.get("frames") != 1 or image.get("flagged_frames") != [0] or image.get("batch_flagged", [0]) != [0]:
        return None
    heads = ((image.get("statistics") or {}).get("model") or {}).get("heads") or {}
    fired = [name for name, head in heads.items() if head.get("fired")]
    if fired != [OVERRULABLE_HEAD]:
        return None
    head = heads[OVERRULABLE_HEAD]
    return {"head": OVERRULABLE_HEAD, "logit": float(head["logit"]), "threshold": float(head["threshold"])}


def overrule(image: dict[str, Any], latent: dict[str, Any],
             thresholds: OverruleThresholds = DEFAULT_OVERRULE_THRESHOLDS) -> dict[str, Any] | None:
    """What overrules the image flag (head, logit, threshold, the latents' pattern_alignment and the line it
    passed), or None when the flag stands. `image`: a NoiseVerdict.to_dict(); `latent`: a LatentVerdict.to_dict()
    (plain report data, so a stored report can be re-read the same way)."""
    head = learned_head_only(image)
    if head is None or latent.get("verdict") != "ok" or latent.get("latents") != 1:
        return None
    statistics = latent.get("statistics") or {}
    alignment = statistics.get("pattern_alignment")
    if alignment is None or not float(alignment) >= thresholds.min_pattern_alignment:
        return None
    return {**head, "pattern_alignment": float(alignment),
            "min_pattern_alignment": thresholds.min_pattern_alignment,
            "detail_alignment": float(statistics.get("detail_alignment", float("nan")))}


def describe_overrule(overruled: dict[str, Any]) -> str:
    """One line: which head fired, by how much, and what the latents showed."""
    return (f"image flag overruled by the latents: head {overruled['head']} fired alone (logit "
            f"{overruled['logit']:+.1f} >= {overruled['threshold']:+.1f}), but the latents it claims are noise carry "
            f"this VAE's channel pattern (pattern_alignment {overruled['pattern_alignment']:+.2f} >= "
            f"{overruled['min_pattern_alignment']:.2f}, detail_alignment {overruled['detail_alignment']:+.2f}) "
            "and pass the latent check")
