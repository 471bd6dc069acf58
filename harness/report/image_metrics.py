"""Image metrics of decoded frames, native against reference: PSNR, SSIM and mean absolute difference.

Pure functions over (B, C, H, W) or video (B, C, F, H, W) frames in [0, 1]; one plain dict per frame, so a
report can say which frame of a batch or clip went wrong. Computed in float64 on the frames as decoded (not on
8-bit PNGs), so differences below one grey level still show.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity

SSIM_WINDOW = 7  # scikit-image's default uniform 7x7 window; shrunk (kept odd) for frames smaller than that


class ImageMetricsError(ValueError):
    """Frames that cannot be compared: other shapes, wrong rank, or too small for SSIM."""


def as_frame_stack(frames: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) or (B, C, F, H, W) -> float64 (N, H, W, C), N frames in batch-major order."""
    if frames.ndim == 5:  # video: (B, C, F, H, W) -> (B, F, C, H, W) -> (B*F, C, H, W)
        frames = frames.permute(0, 2, 1, 3, 4).flatten(0, 1)
    if frames.ndim != 4:
        raise ImageMetricsError(f"frames must be (B, C, H, W) or (B, C, F, H, W); got shape {list(frames.shape)}")
    return frames.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()


def frame_metrics(native: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """PSNR (dB, data range 1), SSIM and mean |difference| in 0-255 units for one (H, W, C) frame pair.

    Identical frames give PSNR inf; a non-finite pixel on either side makes every metric NaN, so it can never
    look like agreement.
    """
    if not (np.isfinite(native).all() and np.isfinite(reference).all()):
        return {"psnr": math.nan, "ssim": math.nan, "mad_255": math.nan}
    nat = np.clip(native, 0.0, 1.0)
    ref = np.clip(reference, 0.0, 1.0)
    mse = float(np.mean((nat - ref) ** 2))
    psnr = math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)
    side = min(nat.shape[0], nat.shape[1])
    window = min(SSIM_WINDOW, side if side % 2 else side - 1)
    if window < 3:
        raise ImageMetricsError(f"frame {nat.shape[0]}x{nat.shape[1]} is too small for SSIM (needs >= 3x3)")
    ssim = float(structural_similarity(nat, ref, data_range=1.0, channel_axis=-1, win_size=window))
    mad = float(np.mean(np.abs(nat - ref))) * 255.0
    return {"psnr": psnr, "ssim": ssim, "mad_255": mad}


def image_metrics(native: torch.Tensor, reference: torch.Tensor) -> list[dict[str, Any]]:
    """Per frame: {frame, psnr, ssim, mad_255}, native against reference. Raises on unequal shapes."""
    if tuple(native.shape) != tuple(reference.shape):
        raise ImageMetricsError(
            f"native frames {list(native.shape)} and reference frames {list(reference.shape)} differ in shape"
        )
    nat = as_frame_stack(native)
    ref = as_frame_stack(reference)
    return [{"frame": index, **frame_metrics(n, r)} for index, (n, r) in enumerate(zip(nat, ref, strict=True))]


def json_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON has no inf/NaN: write them as the strings "inf"/"nan", as report.json does for tensor metrics."""
    return [
        {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()} for row in rows
    ]
