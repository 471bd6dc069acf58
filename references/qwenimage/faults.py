"""The Qwen-Image faults: LLM text-encoder mistakes, DiT/VAE mistakes and shard mistakes a parity run must catch.

LLM encoder (issue 14): the wrong hidden-state layer, the template drop index off by one (a shape change: the
comparison reports it as the divergence), the attention mask ignored, grouped-query heads mapped to the wrong key/
value heads, RMSNorm in half precision. A dropped encoder mask is only visible where padding precedes real tokens
(left padding; with right padding causality already hides the pads) and only when a call encodes prompts of
different lengths (QwenImagePipeline encodes each call's prompts alone, so a single prompt has no padding): those
faults take a second, shorter prompt (`extra_prompts`); the tiny tokenizer pads on the left. A swapped padding side
is not in the catalog: it cannot be seen (docs/families/qwenimage.md, "Faults": the pipeline keeps the real tokens
by mask whichever side the pads are on, and rotary attention sees only position differences; measured in
cases/test_qwenimage.py::test_padding_side_swap_is_invisible).

DiT/VAE: rotary pairs split-half instead of adjacent, rotary rows/columns not centred, the DiT's text mask dropped,
q/k norm weights swapped, the timestep not divided by 1000, true CFG without its norm-preserving rescale, the
decode denormalisation with std where 1/std is meant. Shards: Ulysses' image all-to-all back with heads in the
wrong order, the text stream's row-parallel output projection without its all-reduce. Registered on import
(harness/verdicts/faults.py explains a `Fault`); functions are module-level (shard faults are pickled into ranks).
"""

from __future__ import annotations

from typing import Any

import torch

from harness.verdicts.faults import Fault, parallel_modules, register, swap_qk_norm_weights, wrap_after
from native_models.pipeline import ComposedPipeline
from references.common.llm_faults import (
    encoder_mask_ignored,
    gqa_groups_wrong,
    rmsnorm_in_half_precision,
    rotary_split_half,
    text_spec_changed,
)

FAMILY = ("qwenimage",)
# A second, shorter prompt in the same encode call: it is left-padded, so its real tokens would see the pads
SHORTER_PROMPT = (("extra_prompts", ("a small blue bird",)),)


# ======================================================================================================= encode
def _second_to_last_hidden_state(pipeline: ComposedPipeline) -> None:
    text_spec_changed(pipeline, hidden_state=-2)


register(Fault(
    name="qwen_hidden_state_wrong_layer",
    description="the prompt states taken from hidden_states[-2] (the second-to-last layer, un-normed) instead of "
                "hidden_states[-1] (the final-normed last layer QwenImagePipeline takes; the issue text says -2)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_second_to_last_hidden_state, families=FAMILY,
))


def _drop_index_off_by_one(pipeline: ComposedPipeline) -> None:
    text_spec_changed(pipeline, drop_tokens=33)


register(Fault(
    name="qwen_template_drop_off_by_one",
    description="33 template tokens dropped instead of 34: the template's last token (the newline after 'user') "
                "stays in front of every prompt, one token longer: the comparison reports the shape mismatch at "
                "encode/prompt_embeds",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_drop_index_off_by_one, families=FAMILY,
))


register(Fault(
    name="qwen_text_encoder_mask_ignored",
    description="the Qwen2.5-VL encoder run without the tokenizer's padding mask (causal only): the shorter "
                "prompt's real tokens also attend to the padding in front of them (two prompts of different "
                "lengths, left padding)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=encoder_mask_ignored, families=FAMILY, request_overrides=SHORTER_PROMPT,
))


register(Fault(
    name="qwen_gqa_heads_grouped_wrong",
    description="grouped-query attention with the key/value heads tiled across query heads (q head h reads k/v "
                "head h % H_kv) instead of shared by consecutive query heads (h // groups)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=gqa_groups_wrong, families=FAMILY,
))


register(Fault(
    name="qwen_rmsnorm_half_precision",
    description="the text encoder's RMSNorms normalise in bfloat16 instead of upcasting to float32 first",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=rmsnorm_in_half_precision, families=FAMILY, dtypes=("fp32",),
    scope_note="fp32 only: it moves encode/prompt_embeds by rel_l2 3.5e-3 in fp32 (5.0e3x the threshold), but a "
               "bf16 run's states are rounded to bf16 after every layer anyway: 5.9e-3 with the fault against the "
               "bf16 threshold 1.18e-2 (a correct bf16 run: 3.9e-3), so no bf16 tolerance can see it without "
               "failing correct runs",
))


# ====================================================================================================== denoise
def _qwenimage_rotary_split_half(pipeline: ComposedPipeline) -> None:
    rotary_split_half(pipeline, (".attn.norm_q", ".attn.norm_k", ".attn.norm_added_q", ".attn.norm_added_k"))


register(Fault(
    name="qwenimage_rotary_style_swapped",
    description="the DiT's rotary applied to split-half (NeoX) channel pairs (i, i + D/2) instead of adjacent "
                "pairs (2i, 2i + 1), for image and text queries and keys",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_qwenimage_rotary_split_half, families=FAMILY,
))


def uncentred_rotary(pipeline: ComposedPipeline) -> None:
    from native_models.models.qwenimage_transformer import axis_angles

    rotary = pipeline.get_module("transformer").pos_embed

    def table(grid: tuple[int, int, int]) -> torch.Tensor:
        f, h, w = grid
        d_f, d_h, d_w = rotary.axes_dims
        parts = (
            axis_angles(torch.arange(f), d_f).view(f, 1, 1, -1).expand(f, h, w, -1),
            axis_angles(torch.arange(h), d_h).view(1, h, 1, -1).expand(f, h, w, -1),  # 0..h-1, not centred
            axis_angles(torch.arange(w), d_w).view(1, 1, w, -1).expand(f, h, w, -1),
        )
        return torch.cat(parts, dim=-1).reshape(f * h * w, -1)

    rotary.forward = table  # instance attribute


register(Fault(
    name="qwenimage_rotary_not_centred",
    description="image rows and columns at rotary positions 0..n-1 instead of centred on 0 (Diffusers' "
                "scale_rope=True: -(n - n//2) .. n//2 - 1); the text positions stay after the image's",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=uncentred_rotary, families=FAMILY,
))


def _dit_text_mask_dropped(pipeline: ComposedPipeline) -> None:
    def unmasked(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, "encoder_hidden_states_mask": None}

    wrap_after(pipeline.config, "prepare_pos_cond_kwargs", unmasked)
    wrap_after(pipeline.config, "prepare_neg_cond_kwargs", unmasked)


register(Fault(
    name="qwenimage_dit_text_mask_ignored",
    description="the DiT run without the text mask: image and text queries attend to the zero states that pad "
                "the shorter prompt to the longer one's length (two prompts of different lengths)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_dit_text_mask_dropped, families=FAMILY, request_overrides=SHORTER_PROMPT,
))


def _qwenimage_qk_norm_swapped(pipeline: ComposedPipeline) -> None:
    swap_qk_norm_weights(pipeline, ".attn")


register(Fault(
    name="qwenimage_qk_norm_weights_swapped",
    description="every block's image-stream attn.norm_q weight loaded into norm_k and the other way round",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_qwenimage_qk_norm_swapped, families=FAMILY,
))


def _timestep_not_divided(pipeline: ComposedPipeline) -> None:
    pipeline.config.timestep_divisor = 1.0  # instance attribute: the DiT gets 0..1000 and multiplies by 1000 again


register(Fault(
    name="qwenimage_timestep_not_divided",
    description="the timestep reaches the DiT on the 0..1000 scale instead of t / 1000 (the DiT multiplies by 1000 "
                "itself)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_timestep_not_divided, families=FAMILY,
))


def _cfg_rescale_missing(pipeline: ComposedPipeline) -> None:
    pipeline.config.combine_cfg = (  # type: ignore[method-assign]
        lambda cond, uncond, scale: uncond + scale * (cond - uncond)
    )


register(Fault(
    name="qwenimage_cfg_rescale_missing",
    description="true CFG combined as neg + s (cond - neg) without QwenImagePipeline's per-token rescale to the "
                "conditional prediction's norm",
    expected_stage="denoise", expected_field="noise_pred", expected_step=0,
    apply=_cfg_rescale_missing, families=FAMILY, needs_cfg=True, dtypes=("fp32",),
    scope_note="fp32 only: on the tiny random DiT the prompt barely moves the prediction, so the rescale factor "
               "is close to 1: dropping it moves the forced step-0 noise_pred by rel_l2 6.0e-3 (2.2e3x the fp32 "
               "threshold), in bf16 1.17e-2 against the threshold 2.98e-2 (a correct bf16 run: 8.5e-3)",
))


# ======================================================================================================= decode
def _decode_std_not_inverted(pipeline: ComposedPipeline) -> None:
    def std_for_inverse(scale_shift: tuple[Any, Any]) -> tuple[Any, Any]:
        inverse_std, mean = scale_shift
        return 1.0 / inverse_std, mean  # latents / std + mean: std where 1 / std is meant

    wrap_after(pipeline.config, "get_decode_scale_and_shift", std_for_inverse)


register(Fault(
    name="qwenimage_decode_denormalisation_wrong",
    description="latents denormalised as z / std + mean instead of z / (1 / std) + mean (= z * std + mean)",
    expected_stage="decode", expected_field="latents", expected_step=None,
    apply=_decode_std_not_inverted, families=FAMILY,
))


# ===================================================================================================== shards
def image_heads_back_in_wrong_order(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Ulysses' return all-to-all with the ranks' head chunks put back in reverse order."""
    from native_models.parallel import comm

    out = comm.heads_to_sequence(x, group)  # (B, H, L/w, D)
    return out.unflatten(1, (comm.group_size(group), -1)).flip(1).flatten(1, 2)


def _sp_image_heads_wrong_order(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.joint_sequence_parallel import JointUlyssesAttention

    for module in parallel_modules(pipeline, JointUlyssesAttention, "qwenimage_sp_heads_wrong_order"):
        module.to_sequence = image_heads_back_in_wrong_order  # the instance attribute the module offers


register(Fault(
    name="qwenimage_sp_heads_wrong_order",
    description="joint-attention sequence parallelism: the image all-to-all back from head shards puts the ranks' "
                "heads in the wrong order (the text stream, gathered over heads, stays right)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_sp_image_heads_wrong_order, families=FAMILY, topology=(1, 2),
))


def _tp_text_out_not_reduced(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.tensor_parallel import RowwiseLinear

    found = [m for m in parallel_modules(pipeline, RowwiseLinear, "qwenimage_tp_text_out_not_reduced")]
    text_out = [m for name, m in pipeline.get_module("transformer").named_modules()
                if name.endswith("attn.to_add_out") and m in found]
    for module in text_out:
        module.group = None  # no all-reduce: each rank keeps its own heads' share of the text attention output


register(Fault(
    name="qwenimage_tp_text_out_not_reduced",
    description="tensor parallelism: the text stream's attention output projection (row-parallel to_add_out) "
                "without its all-reduce, so each rank keeps only its heads' share of the text update",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_tp_text_out_not_reduced, families=FAMILY, topology=(2, 1), dtypes=("fp32",),
    scope_note="fp32 only: the text stream reaches the image output only through the second block's joint "
               "attention: the forced step-0 DiT output moves by rel_l2 4.3e-4 (563x the fp32 threshold), in bf16 "
               "2.47e-3 against the threshold 7.7e-3 (a correct bf16 run: 2.52e-3, the same)",
))
