"""The learned part of the noise detector: logistic regressions over named image statistics, shipped as JSON.

Why learned: what a real VAE draws from broken latents differs from a picture in several statistics at once,
none decisive alone; linear models over them, fitted by scripts/train_noise_model.py on the training half of the
noise corpus (references/flux/noise_corpus.py), weigh them. Why several: the garbage comes in kinds that look
nothing alike (smeared noise from random or half-denoised latents; saturated blobs from a sampler that runs
away; a picture's layout with scrambled colour and texture from mis-packed latents), so each kind has its own
head, fitted against all the clean pictures, and the check fires when any head does.

Why an envelope: a linear head extrapolates, so a picture more extreme than any garbage in one statistic (a
fine texture shrunk to 64 px has less edge coherence than decoded noise; a colour wheel is more saturated than
any runaway sampler) would score as "very garbage". Each head therefore also keeps the range every statistic
spans over its training garbage, and abstains on a frame too far outside it (`Envelope`: how far a statistic
may lie out, in widths of that range, and on how many statistics, chosen by cross-validation in
scripts/tune_noise_model.py); an abstaining head says which statistics are out of range; the rule checks
still apply.

Why this form: every verdict reads back as a sum. A head's logit is bias + sum_i w_i z_i, where z_i is statistic
i standardised over the training images ((x_i - mean_i) / scale_i) and clipped to +-`clip` (no single
outlandish value can carry a verdict alone); each term is that statistic's contribution, so a verdict names the
statistics that pushed it over the threshold and by how much, next to the value a typical clean picture has
(the median over the training pictures). No network, nothing pretrained: the file holds a few hundred numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

MODEL_FILE = Path(__file__).resolve().with_name("learned_model.json")
SMALL_MODEL_FILE = MODEL_FILE.with_name("learned_model_small.json")  # frames of 32-63 px a side
MARGIN_LOGITS = 5.0  # a check margin of 1 is a logit this far past the threshold (odds about 150:1)


class NoiseModelError(ValueError):
    """A model file that cannot be used (unreadable, a feature missing, lengths that disagree)."""


@dataclass(frozen=True)
class Contribution:
    """One statistic's share of a logit: its value, a clean picture's typical value, and the logit it adds."""

    feature: str
    value: float
    typical_picture: float
    logit: float


ENVELOPE_RULES = ("box", "count", "total")


@dataclass(frozen=True)
class Envelope:
    """When a head abstains, from each statistic's excess: how far it lies outside the range of the head's training
    garbage, in widths of that range (0 inside).

    - box: any excess above `slack` (a hard box widened by `slack` each side);
    - count: more than `allowance` statistics with an excess above `slack`;
    - total: the excesses add up to more than `allowance`.
    Why not only a box: 21 statistics fitted on a few dozen garbage images leave unseen garbage just outside the
    box in one or two statistics, while a picture the head must not judge (a colour wheel, a fine texture) lies
    far outside in several."""

    rule: str = "box"
    slack: float = 0.0
    allowance: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in ENVELOPE_RULES or self.slack < 0 or self.allowance < 0:
            raise NoiseModelError(f"noise model: envelope {self.rule!r} slack {self.slack} allowance "
                                  f"{self.allowance}; rules are {ENVELOPE_RULES}, both numbers >= 0")

    def overshoot(self, excess: list[float]) -> float:
        """How far past the envelope a frame with these excesses lies: > 0 means the head abstains."""
        if not excess:
            return -self.slack - self.allowance
        if self.rule == "box":
            return max(excess) - self.slack
        if self.rule == "count":
            ranked = sorted(excess, reverse=True)
            k = int(self.allowance)
            return ranked[k] - self.slack if k < len(ranked) else -self.slack
        return sum(excess) - self.allowance

    def counts_out(self, excess: float) -> bool:
        """Whether a statistic with this excess is reported as out of range."""
        return excess > (0.0 if self.rule == "total" else self.slack)

    def describe(self) -> str:
        if self.rule == "box":
            return f"box: abstain when a statistic lies over {self.slack:g} widths outside"
        if self.rule == "count":
            return (f"count: abstain when more than {self.allowance:g} statistics lie over {self.slack:g} widths "
                    "outside")
        return f"total: abstain when the statistics lie over {self.allowance:g} widths outside in sum"

    def strictness(self) -> float:
        """Orders candidates from the strictest (abstains soonest) up, for ties in the choice."""
        return {"box": self.slack, "count": self.slack + self.allowance, "total": self.allowance}[self.rule]

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "slack": self.slack, "allowance": self.allowance}


@dataclass(frozen=True)
class Head:
    """One kind of garbage: a logistic regression against clean pictures, and its decision threshold."""

    name: str
    describes: str
    weights: tuple[float, ...]
    bias: float
    threshold: float
    low: tuple[float, ...]  # each statistic's range over the head's training garbage (the envelope's core)
    high: tuple[float, ...]


@dataclass(frozen=True)
class OutOfRange:
    """A statistic outside a head's envelope: its value, the range the head's garbage spans, and how far out
    (in widths of that range)."""

    feature: str
    value: float
    low: float
    high: float
    excess: float = 0.0


@dataclass(frozen=True)
class HeadScore:
    head: str
    describes: str
    logit: float
    threshold: float
    contributions: list[Contribution] = field(default_factory=list)  # largest first
    out_of_range: list[OutOfRange] = field(default_factory=list)  # furthest out first
    overshoot: float = -1.0  # > 0: past the envelope (Envelope.overshoot), the head abstains

    @property
    def abstains(self) -> bool:
        return self.overshoot > 0

    @property
    def fired(self) -> bool:
        return self.logit >= self.threshold and not self.abstains

    @property
    def margin(self) -> float:
        """(logit - threshold) / MARGIN_LOGITS; for an abstaining head the smaller of that and minus its overshoot
        past the envelope, in widths of the garbage's range (it cannot fire however high its logit, and one far
        below its threshold is far from firing however near the envelope's edge)."""
        logit_margin = (self.logit - self.threshold) / MARGIN_LOGITS
        return min(logit_margin, -max(self.overshoot, 1e-6)) if self.abstains else logit_margin


@dataclass(frozen=True)
class NoiseModel:
    """Standardisation of the features, the heads, and how they were trained (`trained`)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    clip: float
    typical_picture: tuple[float, ...]
    heads: tuple[Head, ...]
    trained: dict[str, Any] = field(default_factory=dict)
    envelope: Envelope = Envelope()

    def __post_init__(self) -> None:
        n = len(self.features)
        lengths = {len(self.mean), len(self.scale), len(self.typical_picture)} | {
            len(v) for h in self.heads for v in (h.weights, h.low, h.high)}
        if lengths != {n}:
            raise NoiseModelError(f"noise model: {n} features but parameter lengths {sorted(lengths)}")
        if any(s <= 0 for s in self.scale) or self.clip <= 0:
            raise NoiseModelError(f"noise model: non-positive feature scale or clip ({min(self.scale)}, {self.clip})")
        if not self.heads:
            raise NoiseModelError("noise model: no heads")

    def standardised(self, values: dict[str, float]) -> list[float]:
        missing = [f for f in self.features if f not in values]
        if missing:
            raise NoiseModelError(f"noise model: features {missing} not measured")
        return [max(-self.clip, min(self.clip, (float(values[f]) - m) / s))
                for f, m, s in zip(self.features, self.mean, self.scale, strict=True)]

    def score(self, values: dict[str, float]) -> list[HeadScore]:
        """Every head's score of `values` (a dict holding every model feature), in the file's order."""
        z = self.standardised(values)
        scores = []
        for head in self.heads:
            terms = [w * zi for w, zi in zip(head.weights, z, strict=True)]
            contributions = [Contribution(f, float(values[f]), t, term)
                             for f, t, term in zip(self.features, self.typical_picture, terms, strict=True)]
            contributions.sort(key=lambda c: -c.logit)
            excess = [max(lo - float(values[f]), float(values[f]) - hi, 0.0) / max(hi - lo, 1e-12)
                      for f, lo, hi in zip(self.features, head.low, head.high, strict=True)]
            outside = sorted((OutOfRange(f, float(values[f]), lo, hi, e) for f, lo, hi, e
                              in zip(self.features, head.low, head.high, excess, strict=True)
                              if self.envelope.counts_out(e)), key=lambda o: -o.excess)
            scores.append(HeadScore(head.name, head.describes, head.bias + sum(terms), head.threshold,
                                    contributions, outside, self.envelope.overshoot(excess)))
        return scores

    def fires(self, values: dict[str, float] | list[float]) -> bool:
        """Whether any head fires on these statistics (a dict, or a list in `features` order)."""
        if not isinstance(values, dict):
            values = dict(zip(self.features, values, strict=True))
        return any(s.fired for s in self.score(values))

    def decisive(self, values: dict[str, float]) -> HeadScore:
        """The head nearest to firing (or furthest past its threshold): the one a verdict reports."""
        return decisive(self.score(values))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "clip": self.clip, "typical_picture": list(self.typical_picture),
                "heads": [{"name": h.name, "describes": h.describes, "weights": list(h.weights), "bias": h.bias,
                           "threshold": h.threshold, "low": list(h.low), "high": list(h.high)} for h in self.heads],
                "envelope": self.envelope.to_dict(), "trained": self.trained}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseModel:
        try:
            heads = tuple(Head(str(h["name"]), str(h["describes"]), tuple(map(float, h["weights"])),
                               float(h["bias"]), float(h["threshold"]), tuple(map(float, h["low"])),
                               tuple(map(float, h["high"]))) for h in data["heads"])
            envelope = data.get("envelope", {})  # absent: a hard box around the stored (already widened) ranges
            return cls(tuple(data["features"]), tuple(map(float, data["mean"])), tuple(map(float, data["scale"])),
                       float(data["clip"]), tuple(map(float, data["typical_picture"])), heads,
                       dict(data.get("trained", {})),
                       Envelope(str(envelope.get("rule", "box")), float(envelope.get("slack", 0.0)),
                                float(envelope.get("allowance", 0.0))))
        except (KeyError, TypeError, ValueError) as exc:
            raise NoiseModelError(f"noise model: malformed ({type(exc).__name__}: {exc})") from None


@lru_cache(maxsize=4)
def load_model(path: Path = MODEL_FILE) -> NoiseModel:
    """The shipped model (read once per process)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NoiseModelError(f"{path}: cannot read the noise model ({exc}); rebuild it with "
                              "scripts/train_noise_model.py") from None
    return NoiseModel.from_dict(data)


def explain(score: HeadScore, top: int = 3) -> str:
    """'looks like decoded noise latents (head noise_latents): logit +4.2 >= +1.0; flat_share 0 (pictures 0.31)
    +1.9, ...' - the head, its logit against its threshold, and the largest contributions."""
    parts = [f"{c.feature} {c.value:.3g} (pictures {c.typical_picture:.3g}) {c.logit:+.1f}"
             for c in score.contributions[:top]]
    relation = ">=" if score.logit >= score.threshold else "<"
    text = (f"{score.describes} (head {score.head}): logit {score.logit:+.1f} {relation} {score.threshold:+.1f}; "
            + ", ".join(parts))
    if score.abstains:
        first = score.out_of_range[0]
        text += (f"; abstains: {len(score.out_of_range)} statistic(s) outside the range of its training garbage, "
                 f"e.g. {first.feature} {first.value:.3g} not in [{first.low:.3g}, {first.high:.3g}] "
                 f"({first.excess:.2g} widths out)")
    return text


def decisive(scores: list[HeadScore]) -> HeadScore:
    """A fired head (the one furthest past its threshold) or else the head with the largest margin."""
    fired = [s for s in scores if s.fired]
    if fired:
        return max(fired, key=lambda s: s.logit - s.threshold)
    return max(scores, key=lambda s: s.margin)


def probability(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, logit))))
