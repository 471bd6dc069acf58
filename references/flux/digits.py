"""The flux-digits model's data and its semantic check: scikit-learn's handwritten digits, upsampled.

One module holds both because they must agree: the training images (`digit_images`) and the classifier's
features (`classifier_features`) are two ends of one round trip (8x8 digits -> bicubic 32x32 -> area-averaged
back to 8x8), so a generated 32x32 image is scored in exactly the feature space the classifier was fit in.
The classifier is fit at run time (about a second, deterministic, nothing unpickled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "flux-digits"
IMAGE_SIZE = 32  # pixels; the model was trained at this size only
MAX_SEQUENCE_LENGTH = 16  # T5 length used in training: FluxPipeline gives T5 no mask, so padding changes embeddings
PROMPT_TEMPLATE = "a handwritten digit {digit}"
NEGATIVE_PROMPT = ""  # the empty prompt is what training dropped the condition to
DIGITS_PIXEL_MAX = 16.0  # load_digits stores intensities 0..16
SVC_GAMMA = 0.001  # scikit-learn's digits example; on 0..16 features
SVC_C = 10.0


class DigitsCheckpointMissing(FileNotFoundError):
    """The shipped checkpoint folder is absent or incomplete."""


def digit_prompt(digit: int) -> str:
    """The training prompt for `digit` (0-9)."""
    if not isinstance(digit, int) or not 0 <= digit <= 9:
        raise ValueError(f"digit must be an int 0-9, got {digit!r}")
    return PROMPT_TEMPLATE.format(digit=digit)


def flux_digits_checkpoint() -> Path:
    """The shipped Diffusers folder of the flux-digits model."""
    if not (DIGITS_CHECKPOINT / "model_index.json").is_file():
        raise DigitsCheckpointMissing(
            f"{DIGITS_CHECKPOINT} holds no checkpoint; rebuild it with .venv/bin/python scripts/train_digits.py"
        )
    return DIGITS_CHECKPOINT


def digit_images(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, size, size) float32 in [0, 1] (bicubic from 8x8, clamped), and labels (N,)."""
    from sklearn.datasets import load_digits

    if size < 8 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8, got {size}")
    data = load_digits()
    small = torch.from_numpy(data.images.astype(np.float32) / DIGITS_PIXEL_MAX)[:, None]  # (N, 1, 8, 8)
    images = F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    return images.contiguous(), torch.from_numpy(data.target.astype(np.int64))


def classifier_features(frames: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) frames in [0, 1] -> (B, 64) float64 on load_digits' 0..16 scale.

    Grey is the channel mean; 8x8 is an area average, so any H, W divisible by 8 is accepted.
    """
    if frames.ndim != 4 or frames.shape[-1] % 8 or frames.shape[-2] % 8:
        raise ValueError(f"expected frames (B, C, H, W) with H, W divisible by 8, got {tuple(frames.shape)}")
    grey = frames.detach().to("cpu", torch.float64).mean(dim=1, keepdim=True)
    small = F.adaptive_avg_pool2d(grey, (8, 8)).clamp(0.0, 1.0) * DIGITS_PIXEL_MAX
    return small.reshape(len(frames), 64).numpy()


class DigitClassifier:
    """An RBF SVC on the round-tripped real digits; `predict` takes generated frames (B, C, H, W) in [0, 1]."""

    def __init__(self) -> None:
        from sklearn.svm import SVC

        images, labels = digit_images()
        self.svc = SVC(gamma=SVC_GAMMA, C=SVC_C)
        self.svc.fit(classifier_features(images), labels.numpy())

    def predict(self, frames: torch.Tensor) -> np.ndarray:
        """Predicted digit per frame, (B,) int64."""
        return self.svc.predict(classifier_features(frames)).astype(np.int64)


def cross_validated_accuracy(folds: int = 5) -> float:
    """Accuracy of the classifier recipe on held-out real digits (stratified k-fold): its own error rate."""
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    images, labels = digit_images()
    scores = cross_val_score(SVC(gamma=SVC_GAMMA, C=SVC_C), classifier_features(images), labels.numpy(), cv=folds)
    return float(scores.mean())
