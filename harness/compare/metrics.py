"""Pure difference metrics between a native tensor and its reference (float64, no state)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tensor_metrics(native: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """max_abs, mean_abs, rel_l2 (||n - r|| / ||r||), cos, and the reference's own scale, for equal shapes.

    Two all-zero tensors count as identical (rel_l2 0, cos 1). Non-finite values make every metric NaN except
    the count of non-finite native elements, so a NaN can never pass a threshold comparison.
    """
    n = native.detach().to(torch.float64).flatten()
    r = reference.detach().to(torch.float64).flatten()
    nonfinite = int((~torch.isfinite(n)).sum()) + int((~torch.isfinite(r)).sum())
    if nonfinite:
        nan = math.nan
        return {"max_abs": nan, "mean_abs": nan, "rel_l2": nan, "cos": nan, "ref_rms": nan, "nonfinite": nonfinite}
    diff = n - r
    ref_norm = float(r.norm())
    nat_norm = float(n.norm())
    rel_l2, cos = rel_l2_and_cos(ref_norm, nat_norm, float(diff.norm()), lambda: float(torch.dot(n, r)))
    count = max(r.numel(), 1)
    return {
        "max_abs": float(diff.abs().max()) if diff.numel() else 0.0,
        "mean_abs": float(diff.abs().sum()) / count,
        "rel_l2": rel_l2,
        "cos": cos,
        "ref_rms": ref_norm / math.sqrt(count),
        "nonfinite": 0,
    }


def rel_l2_and_cos(ref_norm: float, nat_norm: float, diff_norm: float, dot: Callable[[], float]) -> tuple[float, float]:
    """rel_l2 = ||n - r|| / ||r|| and cos from the norms and the dot product n . r (computed only when both norms
    are non-zero); two all-zero tensors are identical (0, 1), a zero against a non-zero has rel_l2 inf or cos 0.
    Shared by `tensor_metrics` and the drill's chunked metrics (harness/drill/metrics.py)."""
    if ref_norm == 0.0:
        rel_l2 = 0.0 if diff_norm == 0.0 else math.inf
    else:
        rel_l2 = diff_norm / ref_norm
    if ref_norm == 0.0 and nat_norm == 0.0:
        return rel_l2, 1.0
    if ref_norm == 0.0 or nat_norm == 0.0:
        return rel_l2, 0.0
    return rel_l2, dot() / (nat_norm * ref_norm)
