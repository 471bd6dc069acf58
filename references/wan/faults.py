"""The Wan 2.1 faults: text-encoder padding, norm weights, and shard faults of the parallel DiT.

Shard faults break one rank's part of the parallel DiT (native_models/parallel), so they need the native side on
several ranks (`topology`, run by harness/run/multirank.py on every rank); on one rank there is nothing to break
and `apply` refuses. Their functions are module-level: they are pickled into the rank processes. Registered on
import (harness/verdicts/faults.py explains a `Fault`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from harness.run.forcing import find_stage
from harness.verdicts.faults import (
    Fault,
    drop_weight,
    parallel_modules,
    register,
    swap_qk_norm_weights,
)
from native_models.pipeline import ComposedPipeline
from native_models.stages.text_encoding import TextEncodingStage


def _wan_text_spec_changed(pipeline: ComposedPipeline, **changes: Any) -> None:
    stage = find_stage(pipeline, TextEncodingStage)
    stage.encoders = [(replace(spec, **changes), tokenizer, model) for spec, tokenizer, model in stage.encoders]


def _umt5_padding_mask_dropped(pipeline: ComposedPipeline) -> None:
    _wan_text_spec_changed(pipeline, attention_mask=False)


register(Fault(
    name="wan_text_padding_mask_dropped",
    description="UMT5 run without the tokenizer's padding mask: every prompt token also attends to the padding "
                "after it (the embeddings past the prompt are still zeroed)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_umt5_padding_mask_dropped, families=("wan",),
    expected_module=None,
))


def _umt5_padding_not_zeroed(pipeline: ComposedPipeline) -> None:
    _wan_text_spec_changed(pipeline, zero_padding=False)


register(Fault(
    name="wan_text_padding_not_zeroed",
    description="the UMT5 states at padding positions handed to the DiT instead of zeros (WanPipeline cuts each "
                "prompt's states at its token count and pads with zeros)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_umt5_padding_not_zeroed, families=("wan",),
    expected_module=None,
))


def _wan_cross_norm_weight_dropped(pipeline: ComposedPipeline) -> None:
    drop_weight(pipeline, "transformer", ".norm2")


register(Fault(
    name="wan_norm_weight_dropped",
    description="every block's cross-attention LayerNorm (norm2, affine in Wan 2.1) run without its weight",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_wan_cross_norm_weight_dropped, families=("wan",),
    expected_module="blocks.0.norm2",
))


def _wan_qk_norm_swapped(pipeline: ComposedPipeline) -> None:
    swap_qk_norm_weights(pipeline, ".attn1")


register(Fault(
    name="wan_qk_norm_weights_swapped",
    description="every block's self-attention norm_q weight loaded into norm_k and the other way round (Wan's "
                "q/k RMSNorm spans all heads: one weight of dim entries each)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_wan_qk_norm_swapped, families=("wan",),
    expected_module="blocks.0.attn1.norm_q",
))


def _wan_cross_norm_bias_dropped(pipeline: ComposedPipeline) -> None:
    drop_weight(pipeline, "transformer", ".norm2", "bias")


register(Fault(
    name="wan_norm_bias_dropped",
    description="every block's cross-attention LayerNorm (norm2) keeps its weight but drops its bias",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_wan_cross_norm_bias_dropped, families=("wan",), dtypes=("fp32",),
    scope_note="fp32 only: the bias of a norm whose output feeds the tiny DiT's cross-attention moves the forced "
               "step-0 output by rel_l2 7.2e-3 in fp32 and 8.5e-3 in bf16, below the bf16 threshold (9.8e-3, 3x "
               "the floor of two correct bf16 runs): no bf16 tolerance can see it without failing correct runs",
    expected_module="blocks.0.norm2",
))


# ---- shard faults: they break one rank's part of the parallel DiT (native_models/parallel), so they need the
# native side on several ranks (`topology`, run by harness/run/multirank.py on every rank); on one rank there is
# nothing to break and `apply` refuses. Module-level functions: they are pickled into the rank processes.
def heads_back_in_wrong_order(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Ulysses' return all-to-all with the ranks' head chunks put back in reverse order."""
    from native_models.parallel import comm

    out = comm.heads_to_sequence(x, group)  # (B, H, L/w, D)
    return out.unflatten(1, (comm.group_size(group), -1)).flip(1).flatten(1, 2)


def _sp_heads_wrong_order(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.sequence_parallel import UlyssesAttention

    for module in parallel_modules(pipeline, UlyssesAttention, "sp_heads_wrong_order"):
        module.to_sequence = heads_back_in_wrong_order  # instance attribute (the seam UlyssesAttention offers)


register(Fault(
    name="sp_heads_wrong_order",
    description="sequence parallelism: Ulysses' all-to-all back from head shards puts the ranks' heads in the "
                "wrong order, so every token's attention output mixes up heads",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_sp_heads_wrong_order, families=("wan",), topology=(1, 2),
    expected_module="blocks.0.attn1.core",
))


def _sp_padding_unmasked(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.sequence_parallel import UlyssesAttention

    for module in parallel_modules(pipeline, UlyssesAttention, "sp_padding_unmasked"):
        module.mask_padded_keys = False


register(Fault(
    name="sp_padding_unmasked",
    description="sequence parallelism: the zero tokens that pad the sequence to a multiple of the ranks are not "
                "masked, so every query also attends to them as keys (9 frames at 48x80: 45 tokens padded to 46)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_sp_padding_unmasked, families=("wan",), topology=(1, 2), request_overrides=(("frames", 9),),
    dtypes=("fp32",),
    scope_note="fp32 only: one unmasked zero key among 46 moves the forced step-0 DiT output by rel_l2 1.4e-3 in "
               "fp32, less than a correct bf16 run differs from Diffusers there (3.2e-3, cosine 0.999995; with "
               "the fault 4.0e-3, cosine 0.999992): no bf16 tolerance can see it without failing correct runs",
    expected_module="blocks.0.attn1.core",
))


def _tp_qk_norm_not_reduced(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.tensor_parallel import ShardedRMSNorm

    for module in parallel_modules(pipeline, ShardedRMSNorm, "tp_qk_norm_not_reduced"):
        module.group = None  # no all-reduce: each rank normalises q/k by its own heads' mean square


register(Fault(
    name="tp_qk_norm_not_reduced",
    description="tensor parallelism: the q/k RMSNorm, which spans all heads, normalises each rank's head shard "
                "by that shard's own mean square (its all-reduce dropped). Step 0 in either precision; the field "
                "is the DiT output in fp32 (rel_l2 4.0e-2), in bf16 under the default cosine bar the guided "
                "noise_pred (cosine 0.9897; the DiT output's 0.99919 still passes 0.999)",
    expected_stage="denoise", expected_field=None, expected_step=0,
    apply=_tp_qk_norm_not_reduced, families=("wan",), topology=(2, 1),
    expected_module="blocks.0.attn1.norm_q",
))
