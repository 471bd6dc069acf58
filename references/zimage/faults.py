"""The Z-Image faults: LLM text-encoder mistakes and DiT/VAE mistakes a parity run must catch.

LLM encoder (issue 14): the wrong hidden-state layer (-1 instead of ZImagePipeline's -2), the chat template's
empty think block appended (`enable_thinking=False`: the prompt four tokens longer, a shape change reported as
the divergence; Z-Image has no drop index to get wrong), the attention mask ignored (visible because the tiny
tokenizer pads on the left: every prompt is padded to max_sequence_length in front of its real tokens),
grouped-query heads mapped to the wrong key/value heads, RMSNorm in half precision. A swapped padding side is
not in the catalog: it cannot be seen (docs/families/zimage.md, "Faults"; measured in
cases/test_zimage.py::test_padding_side_swap_is_invisible).

DiT/VAE: rotary pairs split-half instead of adjacent, q/k norm weights swapped, the learned pad tokens replaced
by zeros, the timestep passed as t / 1000 (FLUX's convention) instead of (1000 - t) / 1000, the model output not
negated, CFG in the FLUX/Wan form neg + s (pos - neg) instead of pos + s (pos - neg), the noise drawn in the model
dtype instead of float32, the VAE shift factor forgotten. Registered on import (harness/verdicts/faults.py).
"""

from __future__ import annotations

from typing import Any

import torch

from harness.run.forcing import find_stage
from harness.verdicts.faults import Fault, register, swap_qk_norm_weights, wrap_after
from native_models.pipeline import ComposedPipeline
from native_models.req import Req
from references.common.llm_faults import (
    encoder_mask_ignored,
    gqa_groups_wrong,
    rmsnorm_in_half_precision,
    rotary_split_half,
    text_spec_changed,
)

FAMILY = ("zimage",)


def _before_denoising(pipeline: ComposedPipeline) -> Any:
    from native_models.pipelines.zimage import ZImageBeforeDenoisingStage

    return find_stage(pipeline, ZImageBeforeDenoisingStage)


# ======================================================================================================= encode
def _last_hidden_state(pipeline: ComposedPipeline) -> None:
    text_spec_changed(pipeline, hidden_state=-1)


register(Fault(
    name="zimage_hidden_state_wrong_layer",
    description="the prompt states taken from hidden_states[-1] (the final-normed last layer) instead of "
                "hidden_states[-2] (the second-to-last layer, un-normed, as ZImagePipeline takes)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_last_hidden_state, families=FAMILY,
))


def _thinking_block(pipeline: ComposedPipeline) -> None:
    _before_denoising(pipeline).chat_template_kwargs["enable_thinking"] = False  # the stage's instance dict


register(Fault(
    name="zimage_chat_template_think_block",
    description="the chat template applied with enable_thinking=False (Qwen3's default for chat), which appends "
                "an empty think block after the assistant header: every prompt longer, a shape mismatch at "
                "encode/prompt_embeds (ZImagePipeline passes enable_thinking=True)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_thinking_block, families=FAMILY,
))


register(Fault(
    name="zimage_text_encoder_mask_ignored",
    description="the Qwen3 encoder run without the padding mask (causal only): with the tokenizer padding on "
                "the left to max_sequence_length, every real token also attends to the padding in front of it",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=encoder_mask_ignored, families=FAMILY,
))


register(Fault(
    name="zimage_gqa_heads_grouped_wrong",
    description="grouped-query attention with the key/value heads tiled across query heads (q head h reads k/v "
                "head h % H_kv) instead of shared by consecutive query heads (h // groups)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=gqa_groups_wrong, families=FAMILY,
))


register(Fault(
    name="zimage_rmsnorm_half_precision",
    description="the text encoder's RMSNorms (layer norms and Qwen3's per-head q/k norms) normalise in bfloat16 "
                "instead of upcasting to float32 first",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=rmsnorm_in_half_precision, families=FAMILY, dtypes=("fp32",),
    scope_note="fp32 only: it moves encode/prompt_embeds by rel_l2 5.5e-3 in fp32 (5.5e3x the threshold); in bf16 "
               "1.08e-2 against the bf16 threshold 1.95e-2 (a correct bf16 run: 6.5e-3): no bf16 tolerance can "
               "see it without failing correct runs",
))


# ====================================================================================================== latents
def _noise_in_model_dtype(pipeline: ComposedPipeline) -> None:
    pipeline.config.latent_dtype = lambda batch: batch.dtype  # type: ignore[method-assign]


register(Fault(
    name="zimage_noise_in_model_dtype",
    description="the initial noise drawn (and the latents stepped) in the model dtype, as FLUX and Qwen-Image do, "
                "instead of float32 whatever the model dtype (ZImagePipeline's prepare_latents)",
    expected_stage="latents", expected_field="initial", expected_step=None,
    apply=_noise_in_model_dtype, families=FAMILY, dtypes=("bf16",),
    scope_note="bf16 only: in an fp32 run the model dtype is float32, so nothing changes",
))


# ====================================================================================================== denoise
def _zimage_rotary_split_half(pipeline: ComposedPipeline) -> None:
    rotary_split_half(pipeline, (".attention.norm_q", ".attention.norm_k"))


register(Fault(
    name="zimage_rotary_style_swapped",
    description="the DiT's rotary applied to split-half (NeoX) channel pairs (i, i + D/2) instead of adjacent "
                "pairs (2i, 2i + 1), in every refiner and main block",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_zimage_rotary_split_half, families=FAMILY,
))


def _zimage_qk_norm_swapped(pipeline: ComposedPipeline) -> None:
    swap_qk_norm_weights(pipeline, ".attention")


register(Fault(
    name="zimage_qk_norm_weights_swapped",
    description="every block's attention.norm_q weight loaded into norm_k and the other way round",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_zimage_qk_norm_swapped, families=FAMILY,
))


def _pad_tokens_zero(pipeline: ComposedPipeline) -> None:
    transformer = pipeline.get_module("transformer")
    with torch.no_grad():
        transformer.x_pad_token.zero_()  # this pipeline's own instance: as if the learned tokens were not loaded
        transformer.cap_pad_token.zero_()


register(Fault(
    name="zimage_pad_tokens_not_learned",
    description="the image and caption streams padded to 32 tokens with zeros instead of the learned x_pad_token "
                "/ cap_pad_token (48x80: 15 image tokens padded to 32, a 16-token caption to 32)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_pad_tokens_zero, families=FAMILY,
))


def _timestep_flux_convention(pipeline: ComposedPipeline) -> None:
    def t_over_1000(t: torch.Tensor, batch: Req) -> torch.Tensor:
        return t.expand(batch.batch_size) / 1000  # 1 = noise, where Z-Image's DiT expects 0 = noise

    pipeline.config.prepare_timestep = t_over_1000  # type: ignore[method-assign]


register(Fault(
    name="zimage_timestep_convention_wrong",
    description="the DiT's timestep passed as t / 1000 (FLUX's and Qwen-Image's convention) instead of Z-Image's "
                "(1000 - t) / 1000",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_timestep_flux_convention, families=FAMILY,
))


def _output_not_negated(pipeline: ComposedPipeline) -> None:
    pipeline.config.finish_noise_pred = lambda noise_pred, batch: noise_pred.float()  # type: ignore[method-assign]


register(Fault(
    name="zimage_output_not_negated",
    description="the (guided) model output handed to the scheduler as it is, without ZImagePipeline's negation: "
                "the latents move against the flow",
    expected_stage="denoise", expected_field="noise_pred", expected_step=0,
    apply=_output_not_negated, families=FAMILY,
))


def _cfg_flux_form(pipeline: ComposedPipeline) -> None:
    def flux_form(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        return uncond.float() + scale * (cond.float() - uncond.float())

    pipeline.config.combine_cfg = flux_form  # type: ignore[method-assign]


register(Fault(
    name="zimage_cfg_formula_wrong",
    description="CFG combined as neg + s (pos - neg) (FLUX's and Wan's form) instead of Z-Image's pos + s (pos - "
                "neg), which is a scale one larger",
    expected_stage="denoise", expected_field="noise_pred", expected_step=0,
    apply=_cfg_flux_form, families=FAMILY, needs_cfg=True, dtypes=("fp32",),
    scope_note="fp32 only: the two forms differ by pos - neg, small on the tiny random DiT: the forced step-0 "
               "noise_pred moves by rel_l2 0.113 in fp32 (2.2e4x the threshold), in bf16 0.116 against the "
               "threshold 0.118 (a correct bf16 run: 0.031; CFG 5 amplifies bf16 rounding): seen at step 2 by "
               "1.01x, i.e. by luck",
))


# ======================================================================================================= decode
def _decode_shift_missing(pipeline: ComposedPipeline) -> None:
    wrap_after(pipeline.config, "get_decode_scale_and_shift", lambda scale_shift: (scale_shift[0], 0.0))


register(Fault(
    name="zimage_decode_shift_missing",
    description="latents divided by the VAE's scaling factor but its shift_factor never added",
    expected_stage="decode", expected_field="latents", expected_step=None,
    apply=_decode_shift_missing, families=FAMILY,
))
