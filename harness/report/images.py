"""Images of a run: frames and a |difference| heat-map as base64 PNG for report.html, the side_by_side.png grid,
and the heat-map's colour scale.

The heat-map is computed from the float frames, not from 8-bit PNGs, so a difference below one grey level
still has a shape; its scale runs from 0 to the largest difference of the run (one scale for every frame),
and every picture of it prints that maximum beside its colour bar, so a passing run shows where its tiny
differences are and a bright map is never mistaken for a large error.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# An inferno-like ramp, dark (no difference) to pale yellow (the run's largest difference).
HEAT_STOPS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164),
)
MAX_EMBED_SIDE = 512  # larger frames are reduced before embedding, so a 1024x1024 run stays a small page
MIN_DISPLAY_SIDE = 192  # small frames are shown scaled up by a whole factor (pixelated) to at least this many pixels
MAX_DISPLAY_SCALE = 8


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


def display_scale(height: int, width: int) -> int:
    """The whole factor a frame is shown enlarged by: at least MIN_DISPLAY_SIDE pixels, at most 8x."""
    return max(1, min(MAX_DISPLAY_SCALE, math.ceil(MIN_DISPLAY_SIDE / max(height, width, 1))))


def scale_text(vmax: float) -> str:
    """The top of the heat scale in words: '0.000198 / 255', or 'identical frames'."""
    return "identical frames" if vmax == 0.0 else f"{vmax:.3g} / 255"


def _differences(native: torch.Tensor, reference: torch.Tensor
                 ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], float]:
    """(N, H, W, C) frame stacks, per frame the |difference| in 0-255 units, and its largest finite value."""
    from harness.report.image_metrics import as_frame_stack

    if tuple(native.shape) != tuple(reference.shape):
        raise ValueError(f"native frames {list(native.shape)} and reference frames {list(reference.shape)} differ")
    nat = as_frame_stack(native)
    ref = as_frame_stack(reference)
    diffs = [difference_255(n, r) for n, r in zip(nat, ref, strict=True)]
    finite = [d[np.isfinite(d)] for d in diffs]
    vmax = max((float(f.max()) for f in finite if f.size), default=0.0)
    return nat, ref, diffs, vmax


def heat_map(diff: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) |difference| -> (H, W, 3) uint8 on the run's scale (0 dark, `vmax` and non-finite pale yellow)."""
    scaled = diff / vmax if vmax > 0.0 else np.where(np.isinf(diff), 1.0, 0.0)  # identical frames: all dark
    return heat_colours(np.minimum(scaled, 1.0))


def frame_images(native: torch.Tensor, reference: torch.Tensor) -> tuple[list[FrameImages], float]:
    """Per frame the native, reference and heat-map PNGs, and the heat-map's scale maximum (0-255 units).

    `native` and `reference` are (B, C, H, W) or (B, C, F, H, W) in [0, 1] with equal shapes. A non-finite
    difference is drawn at the top of the scale; the maximum reported is over finite differences.
    """
    nat, ref, diffs, vmax = _differences(native, reference)
    height, width = nat.shape[1], nat.shape[2]
    factor = max(1, math.ceil(max(height, width) / MAX_EMBED_SIDE))
    images = []
    for n, r, d in zip(nat, ref, diffs, strict=True):
        scaled = d / vmax if vmax > 0.0 else np.where(np.isinf(d), 1.0, 0.0)
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


FOOTER_HEIGHT = 30


def side_by_side(native: torch.Tensor, reference: torch.Tensor) -> tuple[Image.Image, float]:
    """side_by_side.png: per frame a row native | reference | |difference| heat-map, enlarged as the HTML report
    shows them, and a footer with the heat scale (0 to the run's largest difference, printed); and that maximum.

    Raises ValueError when the frames differ in shape (no difference to draw)."""
    nat, ref, diffs, vmax = _differences(native, reference)
    height, width = nat.shape[1], nat.shape[2]
    scale = display_scale(height, width)
    rows = [np.concatenate([_to_uint8(n), _to_uint8(r), heat_map(d, vmax)], axis=1)
            for n, r, d in zip(nat, ref, diffs, strict=True)]
    grid = np.concatenate(rows, axis=0).repeat(scale, axis=0).repeat(scale, axis=1)
    panel = width * scale
    footer = np.full((FOOTER_HEIGHT, grid.shape[1], 3), 255, dtype=np.uint8)
    footer[4:12, 2 * panel:3 * panel] = heat_colours(np.linspace(0.0, 1.0, panel))[None, :, :]
    image = Image.fromarray(np.concatenate([grid, footer], axis=0))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    text_y = grid.shape[0] + 14
    draw.text((2, text_y), "native | reference | |difference|", fill=(60, 60, 60), font=font)
    draw.text((2 * panel, text_y), f"0 .. {scale_text(vmax)}", fill=(60, 60, 60), font=font)
    return image, vmax
