"""Images for the HTML report: frames and a |difference| heat-map as base64 PNG, and the heat-map's colour scale.

The heat-map is computed from the float frames, not from 8-bit PNGs, so a difference below one grey level
still has a shape; its scale runs from 0 to the largest difference of the run (one scale for every frame),
and the report prints that maximum next to the colour bar so a bright map is never mistaken for a large error.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# An inferno-like ramp, dark (no difference) to pale yellow (the run's largest difference).
HEAT_STOPS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164),
)
MAX_EMBED_SIDE = 512  # larger frames are reduced before embedding, so a 1024x1024 run stays a small page


@dataclass
class FrameImages:
    """One frame's three PNGs (base64) and the reduction applied before embedding."""

    native: str
    reference: str
    difference: str
    height: int
    width: int
    reduced_by: int


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB along HEAT_STOPS (piecewise linear)."""
    stops = np.asarray(HEAT_STOPS, dtype=np.float64)
    pos = np.clip(values, 0.0, 1.0) * (len(stops) - 1)
    low = np.minimum(np.floor(pos).astype(np.int64), len(stops) - 2)
    frac = (pos - low)[..., None]
    rgb = stops[low] * (1.0 - frac) + stops[low + 1] * frac
    return np.round(rgb).astype(np.uint8)


def heat_gradient_css() -> str:
    """The colour bar as a CSS gradient with the same stops."""
    parts = [f"rgb({r},{g},{b}) {100 * i / (len(HEAT_STOPS) - 1):.0f}%" for i, (r, g, b) in enumerate(HEAT_STOPS)]
    return "linear-gradient(to right, " + ", ".join(parts) + ")"


def png_base64(array: np.ndarray) -> str:
    """(H, W, 3) uint8 -> base64 text of a PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    clean = np.nan_to_num(frame, nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(clean, 0.0, 1.0) * 255.0).astype(np.uint8)


def _block_reduce(array: np.ndarray, factor: int, how: str) -> np.ndarray:
    """(H, W, ...) -> (H // factor, W // factor, ...) by block mean or block max (max keeps small hot spots)."""
    if factor == 1:
        return array
    h, w = array.shape[0] // factor * factor, array.shape[1] // factor * factor
    blocks = array[:h, :w].reshape(h // factor, factor, w // factor, factor, *array.shape[2:])
    return blocks.max(axis=(1, 3)) if how == "max" else blocks.mean(axis=(1, 3))


def difference_255(native: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(H, W, C) frames in [0, 1] -> (H, W) largest |difference| over channels, in 0-255 units; NaN -> inf."""
    diff = np.abs(native.astype(np.float64) - reference.astype(np.float64)).max(axis=-1) * 255.0
    return np.where(np.isfinite(diff), diff, np.inf)


def frame_images(native: torch.Tensor, reference: torch.Tensor) -> tuple[list[FrameImages], float]:
    """Per frame the native, reference and heat-map PNGs, and the heat-map's scale maximum (0-255 units).

    `native` and `reference` are (B, C, H, W) or (B, C, F, H, W) in [0, 1] with equal shapes. A non-finite
    difference is drawn at the top of the scale; the maximum reported is over finite differences.
    """
    from harness.report.image_metrics import as_frame_stack

    if tuple(native.shape) != tuple(reference.shape):
        raise ValueError(f"native frames {list(native.shape)} and reference frames {list(reference.shape)} differ")
    nat = as_frame_stack(native)
    ref = as_frame_stack(reference)
    diffs = [difference_255(n, r) for n, r in zip(nat, ref, strict=True)]
    finite = [d[np.isfinite(d)] for d in diffs]
    vmax = max((float(f.max()) for f in finite if f.size), default=0.0)
    height, width = nat.shape[1], nat.shape[2]
    factor = max(1, math.ceil(max(height, width) / MAX_EMBED_SIDE))
    images = []
    for n, r, d in zip(nat, ref, diffs, strict=True):
        scaled = d / vmax if vmax > 0.0 else np.where(np.isinf(d), 1.0, 0.0)  # identical frames: all dark
        heat = heat_colours(_block_reduce(np.minimum(scaled, 1.0), factor, "max"))
        images.append(FrameImages(
            native=png_base64(_to_uint8(_block_reduce(n, factor, "mean"))),
            reference=png_base64(_to_uint8(_block_reduce(r, factor, "mean"))),
            difference=png_base64(heat),
            height=height // factor,
            width=width // factor,
            reduced_by=factor,
        ))
    return images, vmax
