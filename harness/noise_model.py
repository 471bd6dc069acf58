"""The learned part of the noise detector: a logistic regression over named image statistics, shipped as JSON.

Why learned: what a real VAE draws from broken latents (blotches, smeared noise, 8-pixel textures) differs from
a picture in several statistics at once, none decisive alone; a linear model over them, fitted by
scripts/train_noise_model.py on the training half of the noise corpus (references/noise_corpus.py), weighs
them. Why this form: every verdict can be read back as a sum. The logit is bias + sum_i w_i (x_i - mean_i) /
scale_i over the statistics of harness/noise_features.py; each term is that statistic's contribution, so a
verdict names the statistics that pushed it over the threshold and by how much, next to the value a typical
clean picture has (the median over the training pictures). No network, nothing pretrained: the file holds a
few dozen numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

MODEL_FILE = Path(__file__).resolve().with_name("noise_model.json")
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


@dataclass(frozen=True)
class ModelScore:
    logit: float
    threshold: float
    contributions: list[Contribution] = field(default_factory=list)  # largest first

    @property
    def fired(self) -> bool:
        return self.logit >= self.threshold

    @property
    def probability(self) -> float:
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, self.logit))))

    @property
    def margin(self) -> float:
        return (self.logit - self.threshold) / MARGIN_LOGITS


@dataclass(frozen=True)
class NoiseModel:
    """A fitted logistic regression on standardised features; `trained` records how (corpus, counts, versions)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    typical_picture: tuple[float, ...]
    trained: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        lengths = {len(self.mean), len(self.scale), len(self.weights), len(self.typical_picture)}
        if lengths != {n}:
            raise NoiseModelError(f"noise model: {n} features but parameter lengths {sorted(lengths)}")
        if any(s <= 0 for s in self.scale):
            raise NoiseModelError(f"noise model: non-positive feature scale in {self.scale}")

    def score(self, values: dict[str, float]) -> ModelScore:
        """The logit of `values` (a dict holding every model feature) and each feature's contribution to it."""
        missing = [f for f in self.features if f not in values]
        if missing:
            raise NoiseModelError(f"noise model: features {missing} not measured")
        contributions = []
        logit = self.bias
        for name, mean, scale, weight, typical in zip(self.features, self.mean, self.scale, self.weights,
                                                      self.typical_picture, strict=True):
            term = weight * (float(values[name]) - mean) / scale
            logit += term
            contributions.append(Contribution(name, float(values[name]), typical, term))
        contributions.sort(key=lambda c: -c.logit)
        return ModelScore(logit, self.threshold, contributions)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "bias": self.bias, "threshold": self.threshold,
                "typical_picture": list(self.typical_picture), "trained": self.trained}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseModel:
        try:
            return cls(tuple(data["features"]), tuple(map(float, data["mean"])), tuple(map(float, data["scale"])),
                       tuple(map(float, data["weights"])), float(data["bias"]), float(data["threshold"]),
                       tuple(map(float, data["typical_picture"])), dict(data.get("trained", {})))
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


def explain(score: ModelScore, top: int = 3) -> str:
    """'logit +4.2 >= +1.0: flat_share 0 (pictures 0.31) +1.9, edge_coherence 0.42 (0.71) +1.2, ...'."""
    parts = [f"{c.feature} {c.value:.3g} (pictures {c.typical_picture:.3g}) {c.logit:+.1f}"
             for c in score.contributions[:top]]
    relation = ">=" if score.fired else "<"
    return f"logit {score.logit:+.1f} {relation} {score.threshold:+.1f}: " + ", ".join(parts)
