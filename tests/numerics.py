"""Float64 difference metrics that the native-vs-reference parity tests share, and the text encoders' closeness bars.

One definition, so that "rel L2" and "cosine" mean the same in every test file. Each metric upcasts both sides to
float64 first, so the metric itself adds no rounding worth speaking of next to the fp32/bf16 error it measures.
"""

from __future__ import annotations

import torch

FP32_REL_L2 = 1e-6
FP32_MAX_ABS = 1e-5  # relative to the reference's largest magnitude
HALF_COSINE = 0.999  # bf16 and fp16 alike

ZERO_FLOOR = 1e-30  # a reference norm or magnitude below this divides as this (an all-zero pair gives 0, not NaN)


def rel_l2(candidate: torch.Tensor, reference: torch.Tensor, floor: float = 0.0) -> float:
    """||candidate - reference|| / ||reference||, the denominator clamped to at least `floor` (0: no clamp)."""
    candidate, reference = candidate.double(), reference.double()
    return ((candidate - reference).norm() / reference.norm().clamp_min(floor)).item()


def max_abs_rel(candidate: torch.Tensor, reference: torch.Tensor, floor: float = 0.0) -> float:
    """max |candidate - reference| / max |reference|, the denominator clamped to at least `floor` (0: no clamp)."""
    candidate, reference = candidate.double(), reference.double()
    return ((candidate - reference).abs().max() / reference.abs().max().clamp_min(floor)).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of the two tensors flattened (symmetric in a and b)."""
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def assert_fp32_close(name: str, native: torch.Tensor, ref: torch.Tensor) -> None:
    """Same shape and dtype, and equal to float rounding: rel L2 <= FP32_REL_L2 and max abs <= FP32_MAX_ABS."""
    assert native.shape == ref.shape, f"{name}: shape {tuple(native.shape)} != {tuple(ref.shape)}"
    assert native.dtype == ref.dtype, f"{name}: dtype {native.dtype} != {ref.dtype}"
    err_l2, err_max = rel_l2(native, ref, ZERO_FLOOR), max_abs_rel(native, ref, ZERO_FLOOR)
    assert err_l2 <= FP32_REL_L2 and err_max <= FP32_MAX_ABS, f"{name}: rel L2 {err_l2:.2e}, max abs {err_max:.2e}"


def assert_half_close(name: str, native: torch.Tensor, ref: torch.Tensor) -> None:
    """Same shape and dtype, finite, and cosine >= HALF_COSINE (bf16/fp16 rounding differs too much for rel L2)."""
    assert native.shape == ref.shape, f"{name}: shape {tuple(native.shape)} != {tuple(ref.shape)}"
    assert native.dtype == ref.dtype, f"{name}: dtype {native.dtype} != {ref.dtype}"
    assert torch.isfinite(native).all(), f"{name}: non-finite values"
    cos = cosine(native, ref)
    assert cos >= HALF_COSINE, f"{name}: cosine {cos:.6f} (rel L2 {rel_l2(native, ref, ZERO_FLOOR):.2e})"
