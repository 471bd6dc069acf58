"""Difference metrics of two tensors of any size, computed chunk by chunk in float64.

`harness.compare.metrics.tensor_metrics` upcasts whole tensors, which at real size (a 113 MB bf16 MLP
activation) costs several float64 copies; the drill compares every module output of a component, so it keeps
at most one chunk (2**20 elements) of float64 per side. Same definitions: rel_l2 = ||n - r|| / ||r||, cosine,
max |n - r|; any non-finite element makes rel_l2, max_abs and cos NaN (a NaN never passes a threshold).
"""

from __future__ import annotations

import math

import torch

from harness.compare.metrics import rel_l2_and_cos

CHUNK = 1 << 20


def compare(native: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """{rel_l2, max_abs, cos, ref_rms, nonfinite} of native against reference (same number of elements)."""
    n = native.detach().reshape(-1)
    r = reference.detach().reshape(-1)
    if n.numel() != r.numel():
        raise ValueError(f"cannot compare {n.numel()} native elements with {r.numel()} reference elements")
    if n.device != r.device:
        n = n.to(r.device)
    sums = {"dd": 0.0, "rr": 0.0, "nn": 0.0, "nr": 0.0}
    max_abs = 0.0
    nonfinite = 0
    for start in range(0, r.numel(), CHUNK):
        nc = n[start:start + CHUNK].to(torch.float64)
        rc = r[start:start + CHUNK].to(torch.float64)
        bad = int((~torch.isfinite(nc)).sum()) + int((~torch.isfinite(rc)).sum())
        if bad:
            nonfinite += bad
            continue
        diff = nc - rc
        sums["dd"] += float(diff.square().sum())
        sums["rr"] += float(rc.square().sum())
        sums["nn"] += float(nc.square().sum())
        sums["nr"] += float((nc * rc).sum())
        if diff.numel():
            max_abs = max(max_abs, float(diff.abs().max()))
    if nonfinite:
        return {"rel_l2": math.nan, "max_abs": math.nan, "cos": math.nan, "ref_rms": math.nan,
                "nonfinite": nonfinite}
    ref_norm, nat_norm = math.sqrt(sums["rr"]), math.sqrt(sums["nn"])
    rel_l2, cos = rel_l2_and_cos(ref_norm, nat_norm, math.sqrt(sums["dd"]), lambda: sums["nr"])
    cos = max(-1.0, min(1.0, cos))  # summed chunk by chunk, the ratio can overshoot 1 by a rounding
    return {"rel_l2": rel_l2, "max_abs": max_abs, "cos": cos,
            "ref_rms": ref_norm / math.sqrt(max(r.numel(), 1)), "nonfinite": 0}


def worst(a: dict[str, float] | None, b: dict[str, float]) -> dict[str, float]:
    """The worse of two metric sets by rel_l2 (NaN counts as the worst)."""
    if a is None:
        return b
    ra, rb = a.get("rel_l2", math.nan), b.get("rel_l2", math.nan)
    if math.isnan(rb) or (not math.isnan(ra) and rb > ra):
        return b
    return a
