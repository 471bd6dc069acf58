"""The one attention entry point of the native runtime, and the selector that picks its backend.

Every native model calls `attention(q, k, v, ...)`; nothing else calls a kernel directly, so a parity run can
switch backends (and the harness can record which one ran) in one place.

Backends:
- ``flash``: the flash-attn package, when it is installed and the tensors are fp16/bf16 on CUDA without a mask.
- ``sdpa``: torch's scaled_dot_product_attention with torch's own per-device kernel choice: the kernel Diffusers
  itself calls (its default attention dispatch), so on one machine the native side is bit-identical to it.
- ``math``: torch's reference math kernel (materialises the (Lq, Lk) score matrix).

What ``auto`` picks, and why (the fastest kernel within the calibrated floor; docs/speed.md):
- CPU, fp32 and bf16: ``sdpa`` (torch's fused CPU flash kernel). Measured on this project's 2-core AVX-512 CPU, one
  thread: 3-4x faster than ``math`` at tiny widths (0.03 vs 0.12 ms, 2 heads x 80 tokens) and 1.9x (fp32) to 3.0x
  (bf16) at FLUX-dev width (24 heads x 768 tokens x 128: 231 vs 443 ms, 234 vs 703 ms). Its error against the
  reference is zero: it is the reference's own kernel. ``math`` is one of calibration's perturbations, so it too
  stays within the floor, but it is never faster.
- CUDA, fp16/bf16 without a mask: ``flash`` when flash-attn is installed (within the bf16 floor: flash vs torch's
  efficient kernel 2.0e-3 rel L2, field notes section 1), else ``sdpa``; ``sdpa`` everywhere else on CUDA.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from native_models.errors import NativeError

BACKENDS = ("auto", "flash", "sdpa", "math")
_selected = os.environ.get("DIFFPARITY_ATTENTION", "auto")


def flash_attn_available() -> bool:
    """True when the optional flash-attn package can be imported (it never builds on CPU-only machines)."""
    return importlib.util.find_spec("flash_attn") is not None


def set_attention_backend(name: str) -> None:
    """Select the backend for all later `attention` calls ('auto' picks per device and dtype)."""
    global _selected
    if name not in BACKENDS:
        raise NativeError(f"unknown attention backend '{name}'; choose one of {', '.join(BACKENDS)}")
    if name == "flash" and not flash_attn_available():
        raise NativeError("attention backend 'flash' requested but the flash-attn package is not installed")
    _selected = name


def check_attention_selection() -> str:
    """The selected backend, after checking that it can run here: DIFFPARITY_ATTENTION is read at import and
    never checked there, so a typo or a 'flash' without flash-attn is refused (one line) before a run starts
    instead of running SDPA while the report names the requested backend."""
    if _selected not in BACKENDS:
        raise NativeError(f"DIFFPARITY_ATTENTION={_selected[:40]!r} is not an attention backend; choose one of "
                          f"{', '.join(BACKENDS)}")
    if _selected == "flash" and not flash_attn_available():
        raise NativeError("DIFFPARITY_ATTENTION=flash but the flash-attn package is not installed; choose auto, "
                          "sdpa or math")
    return _selected


def get_attention_backend() -> str:
    return _selected


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Temporarily select a backend (used by calibration to perturb a run legitimately)."""
    previous = get_attention_backend()
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


FLASH_MAX_HEAD_DIM = 256  # flash-attn 2 kernels stop at head size 256 (the FLUX VAE's single head is 512)


def flash_fits(q: torch.Tensor, has_mask: bool) -> bool:
    """Whether flash-attn can take these inputs: CUDA, fp16/bf16, no mask, head size within its kernels."""
    return (
        q.device.type == "cuda"
        and q.dtype in (torch.float16, torch.bfloat16)
        and not has_mask
        and q.shape[-1] <= FLASH_MAX_HEAD_DIM
    )


def resolve_backend(q: torch.Tensor, has_mask: bool) -> str:
    """The backend `attention` will use for these inputs under the current selection.

    A 'flash' selection falls back to 'sdpa' for inputs flash-attn cannot take.
    """
    if _selected == "flash":
        return "flash" if flash_fits(q, has_mask) else "sdpa"
    if _selected != "auto":
        return _selected
    if q.device.type == "cuda" and flash_attn_available() and flash_fits(q, has_mask):
        return "flash"
    return "sdpa"  # the reference's own kernel choice: bit-identical to it, and the fastest measured on the CPU


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention on (B, H, L, D) tensors; returns (B, H, L, D).

    `attn_mask` is boolean (True = attend) or additive float, broadcastable to (B, H, Lq, Lk).
    `scale` defaults to 1/sqrt(D) (T5 passes 1.0).
    """
    backend = resolve_backend(q, attn_mask is not None or is_causal)
    if backend == "flash":
        from flash_attn import flash_attn_func  # optional dependency, imported only when selected

        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
        return out.transpose(1, 2)  # (B, L, H, D) -> (B, H, L, D)
    if backend == "math":
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
