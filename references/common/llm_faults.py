"""Fault helpers shared by the families whose text encoder is a decoder-only LLM (Qwen-Image, Z-Image) and whose
DiTs rotate adjacent channel pairs: each breaks a built pipeline through instance attributes and instance-level
method wrappers only (harness/verdicts/faults.py), using the seams the native modules offer (`QwenAttention.
expand_kv`, `QwenRMSNorm.compute_dtype`). Module-level functions, so a fault built on them can be pickled."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from harness.run.forcing import find_stage
from harness.verdicts.faults import modules_named, wrap_after
from native_models.pipeline import ComposedPipeline
from native_models.stages.text_encoding import TextEncodingStage


def text_spec_changed(pipeline: ComposedPipeline, **changes: Any) -> None:
    """Replace fields of the text encoder's `TextEncoderSpec` where this pipeline's text stage reads it: the
    standard stage's encoder list, or a model-specific stage's `spec` attribute."""
    stages = [stage for _, stage in pipeline.stages if isinstance(stage, TextEncodingStage)]
    if stages:
        stage = find_stage(pipeline, TextEncodingStage)
        stage.encoders = [(replace(spec, **changes), tokenizer, model) for spec, tokenizer, model in stage.encoders]
        return
    holders = [stage for _, stage in pipeline.stages if hasattr(stage, "spec")]
    if len(holders) != 1:
        raise ValueError(f"{type(pipeline).__name__} has no single stage holding a text encoder spec")
    holders[0].spec = replace(holders[0].spec, **changes)


def encoder_mask_ignored(pipeline: ComposedPipeline) -> None:
    """The text encoder runs without the tokenizer's padding mask (causal attention only)."""
    text_spec_changed(pipeline, attention_mask=False)


def tiled_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, L, D) -> (B, H_kv * groups, L, D) with the k/v heads tiled (0, 1, 0, 1) instead of each serving
    `groups` consecutive query heads (0, 0, 1, 1): `repeat` where `repeat_interleave` is meant."""
    return x.repeat(1, groups, 1, 1)


def gqa_groups_wrong(pipeline: ComposedPipeline) -> None:
    """Every attention of the text encoder shares its k/v heads the wrong way (`tiled_kv`)."""
    from native_models.models.qwen_text import QwenAttention

    found = [m for m in pipeline.get_module("text_encoder").modules() if isinstance(m, QwenAttention)]
    if not found or found[0].config.kv_groups < 2:
        raise ValueError("gqa fault: the text encoder has no grouped-query attention to break")
    for module in found:
        module.expand_kv = tiled_kv  # the instance attribute QwenAttention offers as its seam


def rmsnorm_in_half_precision(pipeline: ComposedPipeline) -> None:
    """Every RMSNorm of the text encoder normalises in bfloat16 instead of upcasting to float32."""
    from native_models.models.qwen_text import QwenRMSNorm

    for module in pipeline.get_module("text_encoder").modules():
        if isinstance(module, QwenRMSNorm):
            module.compute_dtype = torch.bfloat16  # the instance attribute QwenRMSNorm offers as its seam


def split_half_pairs(x: torch.Tensor) -> torch.Tensor:
    """Head channels (..., D) reordered so that adjacent pairs (2i, 2i + 1) hold channels (i, i + D/2): the
    adjacent-pair rotary applied after it rotates the split-half (NeoX) pairs, and q.k is unchanged by a channel
    order both share, so attention sees exactly a split-half rotary."""
    half = x.shape[-1] // 2
    order = torch.stack((torch.arange(half), torch.arange(half) + half), dim=-1).flatten()
    return x[..., order.to(x.device)]


def rotary_split_half(pipeline: ComposedPipeline, suffixes: tuple[str, ...]) -> None:
    """The DiT's rotary on split-half pairs: the q/k norms (named by `suffixes`) hand on `split_half_pairs`."""
    for suffix in suffixes:
        for module in modules_named(pipeline, "transformer", suffix):
            wrap_after(module, "forward", split_half_pairs)


def padding_side_swapped(pipeline: ComposedPipeline) -> None:
    """The tokenizer pads on the other side from the one its checkpoint names. Not a catalog fault: the Qwen
    pipelines keep each prompt's real tokens by mask and rotary attention sees only position differences, so it
    changes the prompt states by rounding only (cases/test_qwenimage.py, cases/test_zimage.py measure it)."""
    tokenizer = pipeline.get_module("tokenizer")
    side = "right" if tokenizer.padding_side == "left" else "left"
    if hasattr(tokenizer, "settings"):  # the native PromptTokenizer (from the tokenizer cache)
        tokenizer.settings = replace(tokenizer.settings, padding_side=side)
    else:  # a transformers tokenizer (cache off)
        tokenizer.padding_side = side
