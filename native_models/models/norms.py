"""Diffusers' RMSNorm, op for op, for the native DiTs whose reference uses `diffusers...normalization.RMSNorm`.

Its precision path differs from torch's `nn.RMSNorm` and from transformers' LLM RMSNorm: the variance is taken in
fp32, `x * rsqrt(variance + eps)` promotes to fp32, the result is cast to the weight's dtype only when that is
half precision, and the weight multiplies last (so bf16 rounds twice, where torch's fused kernel rounds once).
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim with an elementwise weight, computed as Diffusers does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


__all__ = ["RMSNorm"]
