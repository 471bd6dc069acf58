"""The Wan 2.1 drill alignment maps (harness/drill/alignment.py): where the native Wan modules differ from
Diffusers' in how they are called or what they return. Registered on import.

- Rotary tables: Diffusers' `rope` returns (cos, sin), each (1, L, 1, D) with every pair's value repeated, and
  takes the latent video; the native `rope` takes the token grid and returns per-pair (L, 1, D/2) tables.
- `condition_embedder`: Diffusers returns (temb, timestep_proj (B, 6C), text, image embedding or None), the
  native one (temb, modulation (B, 6, C), text).
- Blocks and attention take the native rotary tables; `attn*.core` (the attention kernel as a module, so
  sequence parallelism can wrap it) has no Diffusers counterpart.
- VAE: Diffusers' causal blocks take a shared feature cache and a running index (run state: not forceable, so
  they are judged by their free-run error); its convolutions, norms and attention align as they are.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from harness.drill.alignment import ComponentAlignment, DrillContext, ModuleRule, NotForceable, register_alignment
from harness.drill.outputs import Flat
from native_models.models.wan_transformer import WanRotary
from references.common.drill_encoders import t5_alignment

Call = tuple[tuple[Any, ...], dict[str, Any]]


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], name: str, position: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > position:
        return args[position]
    raise NotForceable(f"the reference call has no '{name}'")


def rotary(rope: Any) -> WanRotary:
    """Diffusers' (cos, sin) (1, L, 1, D), pairs repeated, as the native per-pair (L, 1, D/2) tables."""
    if not (isinstance(rope, tuple) and len(rope) == 2):
        raise NotForceable(f"expected rotary_emb (cos, sin), got {type(rope).__name__}")
    cos, sin = rope
    return WanRotary(cos[0, :, :, 0::2], sin[0, :, :, 1::2])


def _rope(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module, ctx: DrillContext) -> Call:
    return (ctx.root.token_grid(_arg(args, kwargs, "hidden_states", 0)),), {}


def _reference_rope(output: Any, ctx: DrillContext) -> Flat:
    table = rotary(output)
    return Flat(("0", "1"), (table.cos, table.sin), False)


def _condition(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module, ctx: DrillContext) -> Call:
    image = kwargs.get("encoder_hidden_states_image", args[2] if len(args) > 2 else None)
    if image is not None:
        raise NotForceable("an image embedding (I2V) reaches the condition embedder: the native one is T2V only")
    return (_arg(args, kwargs, "timestep", 0), _arg(args, kwargs, "encoder_hidden_states", 1)), {}


def _reference_condition(output: Any, ctx: DrillContext) -> Flat:
    temb, projection, text = output[0], output[1], output[2]
    return Flat(("0", "1", "2"), (temb, projection.unflatten(1, (6, -1)), text), False)


def _block(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module, ctx: DrillContext) -> Call:
    return (_arg(args, kwargs, "hidden_states", 0), _arg(args, kwargs, "encoder_hidden_states", 1),
            _arg(args, kwargs, "temb", 2), rotary(_arg(args, kwargs, "rotary_emb", 3))), {}


def _attention(args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module, ctx: DrillContext) -> Call:
    rope = kwargs.get("rotary_emb", args[3] if len(args) > 3 else None)
    context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    return (_arg(args, kwargs, "hidden_states", 0), context, None if rope is None else rotary(rope)), {}


WAN_TRANSFORMER = register_alignment(ComponentAlignment(
    "WanTransformer3DModel",
    rules=(
        ModuleRule("rope", inputs=_rope, reference_outputs=_reference_rope),
        ModuleRule("condition_embedder", inputs=_condition, reference_outputs=_reference_condition),
        ModuleRule("blocks.*", inputs=_block),
        ModuleRule("blocks.*.attn1", inputs=_attention),
        ModuleRule("blocks.*.attn2", inputs=_attention),
        ModuleRule("blocks.*.attn*.core", note="the attention kernel as a module (Diffusers calls it inline): "
                                               "compared only against a single-rank native run"),
    ),
    description="Diffusers WanTransformer3DModel: rotary tables, condition embedder, blocks and attention adapted",
))
register_alignment(t5_alignment("UMT5EncoderModel"))
