"""The FLUX drill alignment maps (harness/drill/alignment.py): where the native FLUX modules differ from
Diffusers' in how they are called or what they return. Registered on import (the harness reads
`references.<family>.drill` on first use of its alignment registry).

- Rotary tables: Diffusers passes (cos, sin), each (L, D) with every pair's value repeated; the native blocks
  take a `Rotary` of per-pair (L, D/2) tables. The adapter converts the reference's tables (interleaved pairs,
  as Diffusers applies them), so a native block or attention is judged on the reference's rotary inputs.
- Double-stream blocks return (image, text) natively and (text, image) in Diffusers.
- Single-stream blocks: Diffusers takes the text and image streams apart, concatenates them inside and returns
  them apart; the native block takes and returns the concatenated sequence.
- adaLN-Zero norms: Diffusers' `norm1` returns (normed x, gate, shift_mlp, scale_mlp, gate_mlp), the native
  `Modulation` the six chunks (shift, scale, gate, shift_mlp, scale_mlp, gate_mlp) and the block normalises:
  compared on the four chunks both return (the normed stream is compared at the block and attention).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.drill.alignment import ComponentAlignment, DrillContext, ModuleRule, NotForceable, register_alignment
from harness.drill.outputs import Flat, flatten
from native_models.models.flux_transformer import Rotary
from references.common.drill_encoders import CLIP_TEXT, t5_alignment

Call = tuple[tuple[Any, ...], dict[str, Any]]


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], name: str, position: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > position:
        return args[position]
    raise NotForceable(f"the reference call has no '{name}'")


def rotary(rope: Any) -> Rotary:
    """Diffusers' (cos, sin), each (L, D) with pairs repeated, as the native per-pair tables (interleaved)."""
    if not (isinstance(rope, tuple) and len(rope) == 2):
        raise NotForceable(f"expected image_rotary_emb (cos, sin), got {type(rope).__name__}")
    cos, sin = rope
    return Rotary(cos[:, 0::2].float(), sin[:, 0::2].float(), True)


def _double_block(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module, ctx: DrillContext) -> Call:
    return (_arg(args, kwargs, "hidden_states", 0), _arg(args, kwargs, "encoder_hidden_states", 1),
            _arg(args, kwargs, "temb", 2), rotary(_arg(args, kwargs, "image_rotary_emb", 3))), {}


def _double_block_outputs(output: Any, ctx: DrillContext) -> Flat:
    return flatten(output).pick((1, 0))  # native (image, text) -> Diffusers' order (text, image)


def _single_block(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module, ctx: DrillContext) -> Call:
    image, text = _arg(args, kwargs, "hidden_states", 0), _arg(args, kwargs, "encoder_hidden_states", 1)
    return (torch.cat((text, image), dim=1), _arg(args, kwargs, "temb", 2),
            rotary(_arg(args, kwargs, "image_rotary_emb", 3))), {}


def _single_block_outputs(output: Any, ctx: DrillContext) -> Flat:
    """The native [text, image] sequence split as Diffusers returns it: (text, image)."""
    text_length = ctx.argument("encoder_hidden_states", 1).shape[1]
    return Flat(("0", "1"), (output[:, :text_length], output[:, text_length:]), False)


def _joint_attention(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module, ctx: DrillContext) -> Call:
    return (_arg(args, kwargs, "hidden_states", 0), _arg(args, kwargs, "encoder_hidden_states", 1),
            rotary(_arg(args, kwargs, "image_rotary_emb", 3))), {}


def _self_attention(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module, ctx: DrillContext) -> Call:
    return (_arg(args, kwargs, "hidden_states", 0), rotary(_arg(args, kwargs, "image_rotary_emb", 3))), {}


def _modulation(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module, ctx: DrillContext) -> Call:
    return (_arg(args, kwargs, "emb", 1),), {}


def _time_text_embed(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module, ctx: DrillContext) -> Call:
    """Diffusers calls (timestep, pooled) without a guidance embedding, (timestep, guidance, pooled) with one."""
    if len(args) == 2 and not kwargs:
        return (args[0], None, args[1]), {}
    return tuple(args), dict(kwargs)


def _picks(native: tuple[int, ...], reference: tuple[int, ...]) -> dict[str, Any]:
    return {"native_outputs": lambda out, ctx: flatten(out).pick(native),
            "reference_outputs": lambda out, ctx: flatten(out).pick(reference)}


NORM_NOTE = "compared on the gate/shift/scale chunks both sides return; the normed stream at the block"

FLUX_TRANSFORMER = register_alignment(ComponentAlignment(
    "FluxTransformer2DModel",
    rules=(
        ModuleRule("transformer_blocks.*", inputs=_double_block, native_outputs=_double_block_outputs),
        ModuleRule("single_transformer_blocks.*", inputs=_single_block, native_outputs=_single_block_outputs),
        ModuleRule("transformer_blocks.*.attn", inputs=_joint_attention),
        ModuleRule("single_transformer_blocks.*.attn", inputs=_self_attention),
        ModuleRule("transformer_blocks.*.norm1", inputs=_modulation, note=NORM_NOTE, **_picks((2, 3, 4, 5),
                                                                                               (1, 2, 3, 4))),
        ModuleRule("transformer_blocks.*.norm1_context", inputs=_modulation, note=NORM_NOTE,
                   **_picks((2, 3, 4, 5), (1, 2, 3, 4))),
        ModuleRule("single_transformer_blocks.*.norm", inputs=_modulation, note=NORM_NOTE, **_picks((2,), (1,))),
        ModuleRule("time_text_embed", inputs=_time_text_embed),
    ),
    description="Diffusers FluxTransformer2DModel: blocks, attention and adaLN norms fed through adapters",
))
register_alignment(CLIP_TEXT)
register_alignment(t5_alignment("T5EncoderModel"))
