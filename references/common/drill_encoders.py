"""Drill alignment maps of the text encoders the families share (CLIP, T5, UMT5): harness/drill/alignment.py.

The native encoders keep transformers' state-dict names, so their leaves align as they are; these maps cover
what differs: transformers 5 drops CLIP's `text_model.` level (the checkpoint, and so the native model, keep
it); transformers' layers take masks and position biases as keywords and return tuples with the bias, where the
native layers take the bias only and return the hidden states. A family registers the encoders it uses
(references/<family>/drill.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.drill.alignment import ComponentAlignment, DrillContext, ModuleRule, NotForceable
from harness.drill.outputs import flatten
from native_models.models.t5_encoder import T5Attention, masked_bias


def _hidden_states(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    value = kwargs.get("hidden_states", args[0] if args else None)
    if not isinstance(value, torch.Tensor):
        raise NotForceable("the reference call has no hidden_states tensor")
    return value


def _hidden_only(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module,
                 ctx: DrillContext) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """transformers' (hidden_states, attention_mask, is_causal...) -> the native (x): CLIP's text layers hold
    their causal mask themselves (`CLIPAttention.is_causal`) and FLUX passes no padding mask."""
    return (_hidden_states(args, kwargs),), {}


def _first_output(output: Any, ctx: DrillContext) -> Any:
    return flatten(output).pick((0,))


CLIP_TEXT = ComponentAlignment(
    "CLIPTextModel",
    renames=(("text_model.", ""),),
    rules=(
        ModuleRule("text_model.encoder.layers.*", inputs=_hidden_only),
        ModuleRule("text_model.encoder.layers.*.self_attn", inputs=_hidden_only, reference_outputs=_first_output,
                   note="causal mask held by the module (is_causal), not passed"),
    ),
    description="transformers CLIPTextModel: `text_model.` dropped by transformers 5; layers fed hidden states only",
)


def _attention_of(module: nn.Module) -> T5Attention:
    """The self-attention of a T5 block, its first layer, or the attention itself."""
    for candidate in (module, getattr(module, "SelfAttention", None),
                      getattr(getattr(module, "layer", [None])[0], "SelfAttention", None)):
        if isinstance(candidate, T5Attention):
            return candidate
    raise NotForceable(f"{type(module).__name__} holds no T5 self-attention")


def _hidden_and_bias(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module,
                     ctx: DrillContext) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """transformers' (hidden_states, mask=/attention_mask=, position_bias=...) -> the native (x, bias).

    transformers hands the bias computed by the first block on to the next ones (T5), or computes it inside
    every attention (UMT5, and T5's first block); the native model computes it once per table at the top. Where
    the reference passes it, the reference's bias is used; where it computes it inside, the native module's own
    table computes it (with the component call's padding mask), so that table is part of this module's error.
    """
    x = _hidden_states(args, kwargs)
    bias = kwargs.get("position_bias", args[2] if len(args) > 2 else None)  # T5Stack passes it third
    if bias is None:
        attention = _attention_of(module)
        if getattr(attention, "relative_attention_bias", None) is None:
            raise NotForceable("the reference passes no position bias and this block has no bias table")
        mask = ctx.argument("attention_mask", 1)
        keep = None if mask is None else mask.to(device=x.device, dtype=torch.bool)[:, None, None, :]
        bias = masked_bias(attention.compute_bias(x.shape[1], x.device), keep)
    return (x, bias), {}


def t5_alignment(native_class: str) -> ComponentAlignment:
    """The map of a native T5-style encoder (`T5EncoderModel`, `UMT5EncoderModel`)."""
    return ComponentAlignment(
        native_class,
        aliases=(("shared", "encoder.embed_tokens"),),
        rules=(
            ModuleRule("encoder.block.*", inputs=_hidden_and_bias, reference_outputs=_first_output),
            ModuleRule("encoder.block.*.layer.0", inputs=_hidden_and_bias, reference_outputs=_first_output),
            ModuleRule("encoder.block.*.layer.0.SelfAttention", inputs=_hidden_and_bias,
                       reference_outputs=_first_output),
        ),
        description="transformers T5/UMT5 encoder: layers fed (hidden states, position bias); tuples cut to the "
                    "hidden states",
    )
