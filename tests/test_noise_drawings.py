"""pixel_noise and line art (issue 16): a tracing of a fine texture is connected one-pixel curves on a plain
ground, a drawing; the same ink scattered (salt-and-pepper, a pixel-scrambled tracing) is noise."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from harness.noise.detector import DEFAULT_THRESHOLDS, detect_noise
from harness.noise.image_stats import ink_connectivity
from references.common import line_art, shipped_images

OLD_RULE = replace(DEFAULT_THRESHOLDS, drawing_ink_connectivity=math.inf)  # pixel_noise before the ink exemption


def brick_tracing() -> np.ndarray:
    """Canny edges of brick (a train-half photograph of the noise corpus) at 128 px: few flat 8x8 blocks, so the
    flat-block exemption does not apply (scripts/tune_noise_model.py gather draws the same one)."""
    return line_art.edge_drawing(shipped_images.photo("brick"), 128, 128, np.random.default_rng([7301, 1]))


def test_a_tracing_of_a_fine_texture_is_a_drawing() -> None:
    image = brick_tracing()
    assert "pixel_noise" in detect_noise(image, thresholds=OLD_RULE).fired  # what the old rule said
    verdict = detect_noise(image)
    assert not verdict, verdict.reason
    assert verdict.statistics["flat_share"] < DEFAULT_THRESHOLDS.drawing_flat_share
    assert verdict.statistics["ink_connectivity"] >= 0.95
    assert "(a drawing: ink connectivity" in verdict.reason  # past the noise fraction, and says why it passes


def test_the_same_ink_scattered_is_noise() -> None:
    image = brick_tracing()
    pixels = image.reshape(-1, 3)
    scrambled = pixels[np.random.default_rng(0).permutation(len(pixels))].reshape(image.shape)
    verdict = detect_noise(scrambled)
    assert "pixel_noise" in verdict.fired, verdict.reason
    assert abs(verdict.statistics["ink_connectivity"]) < 0.2


@pytest.mark.parametrize("amount", [0.05, 0.2, 0.45, 1.0])
@pytest.mark.parametrize("colour", [False, True])
def test_isolated_salt_and_pepper_is_still_flagged(amount: float, colour: bool) -> None:
    rng = np.random.default_rng(int(amount * 100))
    frame = np.full((128, 128, 3) if colour else (128, 128), 0.5, np.float32)
    hit = rng.random((128, 128)) < amount
    frame[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float32)[:, None] if colour else (
        rng.random(int(hit.sum())) < 0.5)
    verdict = detect_noise(frame)
    assert "pixel_noise" in verdict.fired, verdict.reason


def test_ink_connectivity() -> None:
    ground = np.ones((1, 64, 64), np.float32)
    curve = ground.copy()
    curve[0, 32, 5:60] = 0.0  # a line: every ink pixel touches another
    curve[0, 10:50, 20] = 0.0
    assert ink_connectivity(curve) == pytest.approx(1.0, abs=0.02)
    specks = ground.copy()
    specks[0, ::4, ::4] = 0.0  # isolated pixels on a grid: none touches another, below chance
    assert ink_connectivity(specks) < 0.0
    assert ink_connectivity(ground) is None  # no ink
    thirds = ground.copy()
    thirds[0, :, :22], thirds[0, :, 22:43] = 0.0, 0.5  # no colour covers half the frame: no plain ground
    assert ink_connectivity(thirds) is None
