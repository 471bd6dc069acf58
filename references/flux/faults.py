"""The FLUX faults: native-port mistakes a FLUX parity run must catch and charge to the right stage.

The catalog covers the mistakes of field notes section 5 (decode scale/shift and VAE factor, the sigma
schedule's order, dtype, range and shift, conditioning kwargs, rotary style, embedding format, a numpy `sigmas`,
a missing `raw_latent_shape`), issue 5's list (softmax scale, a norm epsilon, the last step skipped, the text
encoder's mask, height/width swapped in the position ids, a bf16 VAE decode, the guidance scale) and norm
weights. Registered on import (harness/verdicts/faults.py explains a `Fault`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.run.forcing import find_stage
from harness.verdicts.faults import (
    Fault,
    drop_weight,
    register,
    swap_qk_norm_weights,
    wrap_after,
)
from native_models.pipeline import ComposedPipeline
from native_models.req import Req
from native_models.stages.decoding import DecodingStage
from native_models.stages.denoising import DenoisingStage
from native_models.stages.latent_preparation import LatentPreparationStage
from native_models.stages.text_encoding import TextEncodingStage
from native_models.stages.timestep_preparation import TimestepPreparationStage


# ======================================================================================================= encode
def _t5_penultimate_hidden_state(pipeline: ComposedPipeline) -> None:
    stage = find_stage(pipeline, TextEncodingStage)
    for spec, _, model in stage.encoders:
        if spec.output == "last_hidden_state":
            original = model.forward
            model.forward = lambda ids, _f=original: _f(ids, output_hidden_states=True)  # instance attribute
    config = pipeline.config
    base_postprocess = config.postprocess_text

    def pick(spec: Any, outputs: Any) -> torch.Tensor:
        if spec.output == "last_hidden_state":
            return outputs.hidden_states[-2]  # the last block's output before the final norm
        return base_postprocess(spec, outputs)

    config.postprocess_text = pick  # type: ignore[method-assign]


register(Fault(
    name="text_encoder_wrong_hidden_state",
    description="T5 embeddings taken from the penultimate hidden state (before the final norm) instead of "
                "last_hidden_state (section 5: wrong encoder output picked)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    families=("flux",), apply=_t5_penultimate_hidden_state,
    expected_module=None,
))


def _clip_causal_mask_dropped(pipeline: ComposedPipeline) -> None:
    from native_models.models.clip_text import CLIPAttention

    for _, _, model in find_stage(pipeline, TextEncodingStage).encoders:
        for module in model.modules():
            if isinstance(module, CLIPAttention):
                module.is_causal = False  # the instance attribute CLIPAttention reads (its one seam for this)


register(Fault(
    name="text_encoder_mask_ignored",
    description="CLIP's attention mask ignored: its layers attend bidirectionally, so the pooled end-of-text "
                "state also sees the padding after it. FLUX gives neither encoder a padding mask (FluxPipeline "
                "passes none; field notes section 7), so CLIP's causal mask is the one text-encoder mask a FLUX "
                "port can drop; a padding-mask fault belongs to a family that passes one (Wan's UMT5)",
    expected_stage="encode", expected_field="pooled_prompt_embeds", expected_step=None,
    families=("flux",), apply=_clip_causal_mask_dropped,
    expected_module="text_model.encoder.layers.0.self_attn",
))


def _embeds_not_a_list(pipeline: ComposedPipeline) -> None:
    stage = find_stage(pipeline, TextEncodingStage)

    def keep_last_encoder_only(batch: Req) -> Req:
        assert batch.prompt_embeds is not None
        batch.prompt_embeds = batch.prompt_embeds[-1]  # type: ignore[assignment]  # the bare T5 tensor
        return batch

    wrap_after(stage, "forward", keep_last_encoder_only)


register(Fault(
    name="prompt_embeds_not_a_list",
    description="the text stage hands on the T5 tensor alone where a list with one tensor per encoder is "
                "expected (section 5: prompt embeddings in the wrong format)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    families=("flux",), apply=_embeds_not_a_list, raises=True,
    expected_module=None,
))


# ==================================================================================================== timesteps
def _no_sigma_shift(pipeline: ComposedPipeline) -> None:
    # mu = 0 makes FLUX's exponential time shift exp(0) / (exp(0) + 1/t - 1) = t: the schedule stays unshifted
    pipeline.config.compute_mu = lambda batch, scheduler: 0.0  # type: ignore[method-assign]


register(Fault(
    name="sigma_shift_not_applied",
    description="the resolution-dependent sigma shift (mu) is not applied: sigmas stay linspace(1, 1/N, N)",
    expected_stage="timesteps", expected_field="sigmas", expected_step=None,
    families=("flux",), apply=_no_sigma_shift,
    expected_module=None,
))


def _sigmas_reversed(pipeline: ComposedPipeline) -> None:
    wrap_after(pipeline.config, "prepare_sigmas", lambda sigmas: list(reversed(sigmas)))


register(Fault(
    name="sigmas_reversed",
    description="the sigma schedule in the wrong order: ascending linspace(1/N, 1, N) before the shift "
                "(section 5: schedule order)",
    expected_stage="timesteps", expected_field="sigmas", expected_step=None,
    families=("flux",), apply=_sigmas_reversed,
    expected_module=None,
))


def _timesteps_truncated(pipeline: ComposedPipeline) -> None:
    scheduler = find_stage(pipeline, TimestepPreparationStage).scheduler

    def truncate(result: None) -> None:
        scheduler.timesteps = scheduler.timesteps.to(torch.int64)  # sigma * 1000 truncated, as DDPM-era ints

    wrap_after(scheduler, "set_timesteps", truncate)


register(Fault(
    name="timesteps_truncated_to_int",
    description="timesteps kept as int64 (sigma * 1000 truncated, as DDPM-era schedulers store them) instead of "
                "float32 (section 5: schedule dtype)",
    expected_stage="timesteps", expected_field="timesteps", expected_step=None,
    families=("flux",), apply=_timesteps_truncated,
    expected_module=None,
))


def _sigmas_as_numpy(pipeline: ComposedPipeline) -> None:
    def to_numpy(batch: Req) -> Req:
        batch.sigmas = np.asarray(batch.sigmas, dtype=np.float32)  # type: ignore[assignment]
        return batch

    wrap_after(find_stage(pipeline, TimestepPreparationStage), "forward", to_numpy)


register(Fault(
    name="sigmas_not_a_list",
    description="sigmas handed on as a numpy array instead of a list of floats (section 5)",
    expected_stage="timesteps", expected_field="sigmas", expected_step=None,
    families=("flux",), apply=_sigmas_as_numpy, raises=True,
    expected_module=None,
))


# ====================================================================================================== latents
def _noise_in_token_order(pipeline: ComposedPipeline) -> None:
    stage = find_stage(pipeline, LatentPreparationStage)
    config = pipeline.config

    def draw(shape: tuple[int, ...], batch: Req) -> tuple[torch.Tensor, torch.Generator]:
        b, c, h, w = shape
        generator = torch.Generator("cpu").manual_seed(batch.seed)
        tokens = torch.randn((b, (h // 2) * (w // 2), c * 4), generator=generator, dtype=batch.dtype)
        return config.unpack_latents(tokens, shape).to(batch.device), generator  # same numbers, other places

    stage.draw_noise = draw  # instance attribute


register(Fault(
    name="initial_noise_generator_order",
    description="initial noise drawn in packed-token order (B, tokens, 4C) and unpacked, instead of drawn "
                "spatially (B, C, h, w) and packed: the same random numbers land in other places",
    expected_stage="latents", expected_field="initial", expected_step=None,
    families=("flux",), apply=_noise_in_token_order,
    expected_module=None,
))


def _vae_scale_factor_doubled(pipeline: ComposedPipeline) -> None:
    stage = find_stage(pipeline, LatentPreparationStage)
    stage.vae_scale_factor = 2 * stage.vae_scale_factor  # instance attribute: FLUX's 8 taken as 16


register(Fault(
    name="vae_scale_factor_wrong",
    description="the latent grid computed with vae_scale_factor 16 instead of 8 (section 5): a quarter of the "
                "latent tokens. FLUX derives the schedule's shift mu from the packed token count, so the first "
                "record this changes in pipeline order is the schedule; the initial latents then differ in shape "
                "(a free record that forcing does not re-run, so latents fails too)",
    expected_stage="timesteps", expected_field="sigmas", expected_step=None,
    families=("flux",), apply=_vae_scale_factor_doubled, also_fails=("latents",),
    expected_module=None,
))


def _raw_latent_shape_dropped(pipeline: ComposedPipeline) -> None:
    def drop(batch: Req) -> Req:
        batch.raw_latent_shape = None
        return batch

    wrap_after(find_stage(pipeline, LatentPreparationStage), "forward", drop)


register(Fault(
    name="raw_latent_shape_missing",
    description="the latent stage does not keep raw_latent_shape, so nothing later can unpack the tokens "
                "(section 5)",
    expected_stage="latents", expected_field="raw_latent_shape", expected_step=None,
    families=("flux",), apply=_raw_latent_shape_dropped, raises=True,
    expected_module=None,
))


# ====================================================================================================== denoise
def _split_half_rotary(pipeline: ComposedPipeline) -> None:
    pipeline.get_module("transformer").rope_interleaved = False  # FLUX rotates interleaved pairs


register(Fault(
    name="rotary_style_swapped",
    description="rotary embedding applied split-half (NeoX style) instead of to interleaved pairs",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    families=("flux",), apply=_split_half_rotary,
    expected_module="",
))


def _image_ids_height_width_swapped(pipeline: ComposedPipeline) -> None:
    from native_models.pipelines.flux import flux_image_ids

    config = pipeline.config
    original = config.prepare_rotary_kwargs

    def swapped(batch: Req) -> dict[str, Any]:
        assert batch.raw_latent_shape is not None
        _, _, h, w = batch.raw_latent_shape
        ids = flux_image_ids(w // 2, h // 2, batch.dtype, batch.device)  # grid (W, H) where (H, W) is meant
        return {**original(batch), "img_ids": ids}

    config.prepare_rotary_kwargs = swapped  # type: ignore[method-assign]


register(Fault(
    name="image_ids_height_width_swapped",
    description="image position ids built for a (width, height) grid instead of (height, width): the same "
                "token count, every token of a non-square image at another position (a square one is unchanged)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    families=("flux",), apply=_image_ids_height_width_swapped, needs_nonsquare=True,
    expected_module=None,
))


def _softmax_scale_squared(pipeline: ComposedPipeline) -> None:
    transformer = pipeline.get_module("transformer")
    factor = transformer.config.attention_head_dim ** -0.5
    for module in transformer.modules():
        for name in ("qkv", "context_qkv"):
            if callable(getattr(type(module), name, None)):
                wrap_after(module, name, lambda qkv, f=factor: (qkv[0] * f, qkv[1], qkv[2]))


register(Fault(
    name="attention_softmax_scale_wrong",
    description="DiT attention logits scaled by 1/D instead of 1/sqrt(D) (the scale applied twice); done by "
                "scaling q by 1/sqrt(D) after its norm, which is the same product (rotary is linear)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    families=("flux",), apply=_softmax_scale_squared,
    expected_module="transformer_blocks.0.attn",
))


def _timestep_not_divided(pipeline: ComposedPipeline) -> None:
    pipeline.config.timestep_divisor = 1.0  # instance attribute: the DiT gets 0..1000 and scales it by 1000 again


register(Fault(
    name="timestep_value_range_wrong",
    description="timesteps reach the DiT on the 0..1000 scale instead of divided by 1000 (section 5: value "
                "range); the schedule itself is right",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    families=("flux",), apply=_timestep_not_divided,
    expected_module=None,
))


def _guidance_divided(pipeline: ComposedPipeline) -> None:
    wrap_after(pipeline.config, "prepare_guidance", lambda g: None if g is None else g / 1000.0)


register(Fault(
    name="guidance_scale_wrong",
    description="the guidance embedding fed guidance_scale / 1000 (scaled like a timestep) while the DiT "
                "multiplies by 1000 itself: it embeds 3.5 instead of 3500",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    families=("flux",), apply=_guidance_divided,
    expected_module=None,
))


def _conditioning_swapped(pipeline: ComposedPipeline) -> None:
    config = pipeline.config
    positive, negative = config.prepare_pos_cond_kwargs, config.prepare_neg_cond_kwargs
    config.prepare_pos_cond_kwargs = negative  # type: ignore[method-assign]
    config.prepare_neg_cond_kwargs = positive  # type: ignore[method-assign]


register(Fault(
    name="conditioning_kwargs_swapped",
    description="the DiT's conditioning kwargs mixed up: the conditional pass gets the negative prompt's "
                "embeddings and the unconditional pass the prompt's (section 5: conditioning kwargs)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    families=("flux",), apply=_conditioning_swapped, needs_cfg=True,
    expected_module=None,
))


def _cfg_wrong_sign(pipeline: ComposedPipeline) -> None:
    pipeline.config.combine_cfg = (  # type: ignore[method-assign]
        lambda cond, uncond, scale: uncond - scale * (cond - uncond)
    )


register(Fault(
    name="cfg_wrong_sign",
    description="true CFG combined with the wrong sign: uncond - s * (cond - uncond)",
    expected_stage="denoise", expected_field="noise_pred", expected_step=0,
    families=("flux",), apply=_cfg_wrong_sign, needs_cfg=True,
    expected_module=None,
))


def _last_step_skipped(pipeline: ComposedPipeline) -> None:
    stage = find_stage(pipeline, DenoisingStage)
    original = stage.denoise_step

    def step_or_skip(inputs: Any, batch: Req, step: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        assert batch.timesteps is not None
        if step == len(batch.timesteps) - 1:
            return latents  # `for t in timesteps[:-1]`: the last step never runs
        return original(inputs, batch, step, t, latents)

    stage.denoise_step = step_or_skip  # instance attribute


register(Fault(
    name="last_denoising_step_skipped",
    description="the sampling loop stops one step early (timesteps[:-1]): the last step's records are missing "
                "and the VAE decodes the latents before it",
    expected_stage="denoise", expected_field="transformer_output", expected_step=-1,
    families=("flux",), apply=_last_step_skipped,
    expected_module=None,
))


# ======================================================================================================= decode
def _decode_scale_inverted(pipeline: ComposedPipeline) -> None:
    config = find_stage(pipeline, DecodingStage).config

    def inverted(scale_shift: tuple[Any, Any]) -> tuple[Any, Any]:
        scale, shift = scale_shift
        return 1.0 / scale, shift  # latents multiplied by the scaling factor instead of divided

    wrap_after(config, "get_decode_scale_and_shift", inverted)


register(Fault(
    name="decode_scale_shift_wrong",
    description="latents multiplied by the VAE scaling factor before decoding instead of divided by it",
    expected_stage="decode", expected_field="latents", expected_step=None,
    families=("flux",), apply=_decode_scale_inverted,
    expected_module=None,
))


def _decode_shift_missing(pipeline: ComposedPipeline) -> None:
    config = find_stage(pipeline, DecodingStage).config
    wrap_after(config, "get_decode_scale_and_shift", lambda scale_shift: (scale_shift[0], 0.0))


register(Fault(
    name="decode_shift_missing",
    description="latents divided by the scaling factor but the VAE's shift_factor never added (section 5: "
                "missing denormalization)",
    expected_stage="decode", expected_field="latents", expected_step=None,
    families=("flux",), apply=_decode_shift_missing,
    expected_module=None,
))


def _vae_decode_in_bf16(pipeline: ComposedPipeline) -> None:
    vae = find_stage(pipeline, DecodingStage).vae
    original = vae.decode
    vae.to(torch.bfloat16)  # this pipeline's own VAE instance

    def decode_bf16(z: torch.Tensor) -> torch.Tensor:
        return original(z.to(torch.bfloat16)).to(z.dtype)

    vae.decode = decode_bf16  # instance attribute


register(Fault(
    name="vae_decode_in_bf16",
    description="the VAE decodes in bfloat16 (weights and input cast down, output cast back) instead of in the "
                "run's float32",
    expected_stage="decode", expected_field="image", expected_step=None,
    families=("flux",), apply=_vae_decode_in_bf16, dtypes=("fp32",),
    scope_note="fp32 only: in a bf16 run the reference itself decodes in bf16, so the mutation changes nothing",
    expected_module="decoder.conv_in",
))


def _group_norm_default_eps(pipeline: ComposedPipeline) -> None:
    vae = find_stage(pipeline, DecodingStage).vae
    for module in vae.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.eps = 1e-5  # torch's GroupNorm default instead of the 1e-6 Diffusers' VAE decoder uses


register(Fault(
    name="norm_eps_changed",
    description="the VAE decoder's GroupNorms built with torch's default eps 1e-5 instead of Diffusers' 1e-6",
    expected_stage="decode", expected_field="image", expected_step=None,
    families=("flux",), apply=_group_norm_default_eps, dtypes=("fp32",),
    scope_note="fp32 only: in bf16 the change (rel_l2 3.5e-5 of the fp32 image) only flips bf16 roundings, and "
               "the faulty bf16 decoder differs from the correct one by 1.3e-2, no more than two correct bf16 "
               "decoders differ (forced decode/image floor 1.6e-2): no bf16 tolerance can see it without failing "
               "correct runs",
    expected_module="decoder.mid_block.resnets.0.norm1",
))


# ==================================================================================================== norm weights
# Visible only on checkpoints whose norm parameters are not all 1 / 0 (the tiny builders randomise them:
# references/common/tiny_build.py randomise_constant_parameters); on default-initialised weights these bugs
# change no bit.
def _flux_norm_q_weight_dropped(pipeline: ComposedPipeline) -> None:
    drop_weight(pipeline, "transformer", ".norm_q")


register(Fault(
    name="norm_weight_dropped",
    description="the DiT's q RMSNorm run without its weight (every block's attn.norm_q: normalised, not scaled), "
                "as when a port's RMSNorm has no affine parameter or the weight is not loaded",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    families=("flux",), apply=_flux_norm_q_weight_dropped,
    expected_module="transformer_blocks.0.attn.norm_q",
))


def _flux_qk_norm_swapped(pipeline: ComposedPipeline) -> None:
    swap_qk_norm_weights(pipeline, ".attn")


register(Fault(
    name="qk_norm_weights_swapped",
    description="every block's attn.norm_q weight loaded into norm_k and the other way round (a name-mapping "
                "slip in a weight loader)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    families=("flux",), apply=_flux_qk_norm_swapped,
    expected_module="transformer_blocks.0.attn.norm_q",
))


def _flux_vae_norm_bias_dropped(pipeline: ComposedPipeline) -> None:
    vae = find_stage(pipeline, DecodingStage).vae
    for module in vae.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.bias = None  # affine weight kept, bias dropped


register(Fault(
    name="norm_bias_dropped",
    description="the VAE decoder's GroupNorms scale by their weight but drop their bias",
    expected_stage="decode", expected_field="image", expected_step=None,
    families=("flux",), apply=_flux_vae_norm_bias_dropped,
    expected_module="decoder.mid_block.resnets.0.norm1",
))


