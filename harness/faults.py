"""A catalog of named, deliberately broken native variants: the bugs a parity run must localize.

Each `Fault` mutates an already built native pipeline (instance attributes and instance-level method wrappers
only: no source is edited, nothing is patched on a class or a module, so a fault dies with its pipeline) and
names the record where a teacher-forced parity run must report the first divergence. The catalog covers the
native-port mistakes of field notes section 5 (decode scale/shift and VAE factor, the sigma schedule's order,
dtype, range and shift, conditioning kwargs, rotary style, embedding format, a numpy `sigmas`, a missing
`raw_latent_shape`) and issue 5's list (softmax scale, a norm epsilon, the last step skipped, the text
encoder's mask, height/width swapped in the position ids, a bf16 VAE decode, the guidance scale).

Two kinds of detection:
- numeric (default): the parity run fails and its first *local* divergence is `expected_stage` /
  `expected_field` / `expected_step` (a negative step counts from the last one: -1 is the last step), while
  every other stage's local records pass (except the stages named in `also_fails`);
- `raises`: the native pipeline refuses the run with a `StageFieldError` naming the stage that checks the
  field (the stages' declared reads/writes) and the field: the loud bugs of section 5.

`dtypes` says in which precisions the fault exists or can be seen at all; `scope_note` says why one is left out
(measured, never assumed). `diffparity faults CASE` (harness/fault_matrix.py) runs them all; add one with
`register(Fault(...))`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from harness.forcing import find_stage
from harness.request import GenerationRequest
from native_models.pipeline import ComposedPipeline
from native_models.req import Req
from native_models.stages.decoding import DecodingStage
from native_models.stages.denoising import DenoisingStage
from native_models.stages.latent_preparation import LatentPreparationStage
from native_models.stages.text_encoding import TextEncodingStage
from native_models.stages.timestep_preparation import TimestepPreparationStage

DTYPES = ("fp32", "bf16")
CFG_NEGATIVE_PROMPT = "blurry, low quality"
CFG_SCALE = 2.5
NONSQUARE_SIZE = (48, 80)


@dataclass(frozen=True)
class Fault:
    """One broken native variant and where parity must catch it.

    `expected_step` is the denoising step of the first divergence (None outside the loop; negative counts from
    the last step); `expected_field` None means any field of the stage. `needs_cfg` / `needs_nonsquare`: the
    fault only shows under true CFG / on a non-square image, so its request must have them.
    """

    name: str
    description: str
    expected_stage: str
    expected_step: int | None
    apply: Callable[[ComposedPipeline], None]
    expected_field: str | None = None
    needs_cfg: bool = False
    needs_nonsquare: bool = False
    families: tuple[str, ...] = ("flux",)  # model families whose pipelines the mutation knows how to break
    raises: bool = False  # the native pipeline refuses the run (StageFieldError naming stage and field)
    dtypes: tuple[str, ...] = DTYPES  # precisions in which the fault exists / is visible
    scope_note: str = ""  # why a precision is not in `dtypes`
    also_fails: tuple[str, ...] = ()  # other stages whose local records legitimately fail too (said why above)
    topology: tuple[int, int] = (1, 1)  # (tp, sp) ranks the native side needs: a shard fault breaks a parallel run
    request_overrides: tuple[tuple[str, Any], ...] = ()  # request fields the fault needs to show (e.g. frames)

    def request_for(self, base: GenerationRequest) -> GenerationRequest:
        """`base` with what this fault needs to show: true CFG with a negative prompt, a non-square size."""
        changes: dict[str, Any] = {}
        if self.needs_cfg and not base.do_true_cfg:
            changes.update(negative_prompt=CFG_NEGATIVE_PROMPT, true_cfg_scale=CFG_SCALE)
        if self.needs_nonsquare and base.height == base.width:
            changes.update(height=NONSQUARE_SIZE[0], width=NONSQUARE_SIZE[1])
        changes.update(dict(self.request_overrides))
        return replace(base, **changes)

    def expected_for(self, request: GenerationRequest) -> tuple[str, str | None, int | None]:
        """(stage, field, step) of the expected first divergence for `request` (a negative step resolved)."""
        step = self.expected_step
        if step is not None and step < 0:
            step += request.steps
        return self.expected_stage, self.expected_field, step

    def applies_to(self, dtype: str) -> bool:
        return dtype in self.dtypes


FAULTS: dict[str, Fault] = {}


def register(fault: Fault) -> Fault:
    if fault.name in FAULTS:
        raise ValueError(f"fault '{fault.name}' is already registered")
    unknown = sorted(set(fault.dtypes) - set(DTYPES))
    if unknown or not fault.dtypes:
        raise ValueError(f"fault '{fault.name}': dtypes {list(fault.dtypes)} must be a non-empty subset of {DTYPES}")
    if set(fault.dtypes) != set(DTYPES) and not fault.scope_note:
        raise ValueError(f"fault '{fault.name}' leaves out a precision without a scope_note saying why")
    FAULTS[fault.name] = fault
    return fault


def get_fault(name: str) -> Fault:
    if name not in FAULTS:
        raise KeyError(f"unknown fault '{name}'; known faults: {', '.join(sorted(FAULTS))}")
    return FAULTS[name]


def faults_for(family: str) -> list[Fault]:
    """The registered faults that know how to break a pipeline of `family`, in registration order."""
    return [fault for fault in FAULTS.values() if family in fault.families]


def _wrap_after(obj: Any, name: str, after: Callable[[Any], Any]) -> None:
    """Shadow the bound method `obj.name` on the instance: call it, then return `after(result)`."""
    original = getattr(obj, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return after(original(*args, **kwargs))

    setattr(obj, name, wrapper)


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
    apply=_t5_penultimate_hidden_state,
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
    apply=_clip_causal_mask_dropped,
))


def _embeds_not_a_list(pipeline: ComposedPipeline) -> None:
    stage = find_stage(pipeline, TextEncodingStage)

    def keep_last_encoder_only(batch: Req) -> Req:
        assert batch.prompt_embeds is not None
        batch.prompt_embeds = batch.prompt_embeds[-1]  # type: ignore[assignment]  # the bare T5 tensor
        return batch

    _wrap_after(stage, "forward", keep_last_encoder_only)


register(Fault(
    name="prompt_embeds_not_a_list",
    description="the text stage hands on the T5 tensor alone where a list with one tensor per encoder is "
                "expected (section 5: prompt embeddings in the wrong format)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_embeds_not_a_list, raises=True,
))


# ==================================================================================================== timesteps
def _no_sigma_shift(pipeline: ComposedPipeline) -> None:
    # mu = 0 makes FLUX's exponential time shift exp(0) / (exp(0) + 1/t - 1) = t: the schedule stays unshifted
    pipeline.config.compute_mu = lambda batch, scheduler: 0.0  # type: ignore[method-assign]


register(Fault(
    name="sigma_shift_not_applied",
    description="the resolution-dependent sigma shift (mu) is not applied: sigmas stay linspace(1, 1/N, N)",
    expected_stage="timesteps", expected_field="sigmas", expected_step=None,
    apply=_no_sigma_shift,
))


def _sigmas_reversed(pipeline: ComposedPipeline) -> None:
    _wrap_after(pipeline.config, "prepare_sigmas", lambda sigmas: list(reversed(sigmas)))


register(Fault(
    name="sigmas_reversed",
    description="the sigma schedule in the wrong order: ascending linspace(1/N, 1, N) before the shift "
                "(section 5: schedule order)",
    expected_stage="timesteps", expected_field="sigmas", expected_step=None,
    apply=_sigmas_reversed,
))


def _timesteps_truncated(pipeline: ComposedPipeline) -> None:
    scheduler = find_stage(pipeline, TimestepPreparationStage).scheduler

    def truncate(result: None) -> None:
        scheduler.timesteps = scheduler.timesteps.to(torch.int64)  # sigma * 1000 truncated, as DDPM-era ints

    _wrap_after(scheduler, "set_timesteps", truncate)


register(Fault(
    name="timesteps_truncated_to_int",
    description="timesteps kept as int64 (sigma * 1000 truncated, as DDPM-era schedulers store them) instead of "
                "float32 (section 5: schedule dtype)",
    expected_stage="timesteps", expected_field="timesteps", expected_step=None,
    apply=_timesteps_truncated,
))


def _sigmas_as_numpy(pipeline: ComposedPipeline) -> None:
    def to_numpy(batch: Req) -> Req:
        batch.sigmas = np.asarray(batch.sigmas, dtype=np.float32)  # type: ignore[assignment]
        return batch

    _wrap_after(find_stage(pipeline, TimestepPreparationStage), "forward", to_numpy)


register(Fault(
    name="sigmas_not_a_list",
    description="sigmas handed on as a numpy array instead of a list of floats (section 5)",
    expected_stage="timesteps", expected_field="sigmas", expected_step=None,
    apply=_sigmas_as_numpy, raises=True,
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
    apply=_noise_in_token_order,
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
    apply=_vae_scale_factor_doubled, also_fails=("latents",),
))


def _raw_latent_shape_dropped(pipeline: ComposedPipeline) -> None:
    def drop(batch: Req) -> Req:
        batch.raw_latent_shape = None
        return batch

    _wrap_after(find_stage(pipeline, LatentPreparationStage), "forward", drop)


register(Fault(
    name="raw_latent_shape_missing",
    description="the latent stage does not keep raw_latent_shape, so nothing later can unpack the tokens "
                "(section 5)",
    expected_stage="latents", expected_field="raw_latent_shape", expected_step=None,
    apply=_raw_latent_shape_dropped, raises=True,
))


# ====================================================================================================== denoise
def _split_half_rotary(pipeline: ComposedPipeline) -> None:
    pipeline.get_module("transformer").rope_interleaved = False  # FLUX rotates interleaved pairs


register(Fault(
    name="rotary_style_swapped",
    description="rotary embedding applied split-half (NeoX style) instead of to interleaved pairs",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_split_half_rotary,
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
    apply=_image_ids_height_width_swapped, needs_nonsquare=True,
))


def _softmax_scale_squared(pipeline: ComposedPipeline) -> None:
    transformer = pipeline.get_module("transformer")
    factor = transformer.config.attention_head_dim ** -0.5
    for module in transformer.modules():
        for name in ("qkv", "context_qkv"):
            if callable(getattr(type(module), name, None)):
                _wrap_after(module, name, lambda qkv, f=factor: (qkv[0] * f, qkv[1], qkv[2]))


register(Fault(
    name="attention_softmax_scale_wrong",
    description="DiT attention logits scaled by 1/D instead of 1/sqrt(D) (the scale applied twice); done by "
                "scaling q by 1/sqrt(D) after its norm, which is the same product (rotary is linear)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_softmax_scale_squared,
))


def _timestep_not_divided(pipeline: ComposedPipeline) -> None:
    pipeline.config.timestep_divisor = 1.0  # instance attribute: the DiT gets 0..1000 and scales it by 1000 again


register(Fault(
    name="timestep_value_range_wrong",
    description="timesteps reach the DiT on the 0..1000 scale instead of divided by 1000 (section 5: value "
                "range); the schedule itself is right",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_timestep_not_divided,
))


def _guidance_divided(pipeline: ComposedPipeline) -> None:
    _wrap_after(pipeline.config, "prepare_guidance", lambda g: None if g is None else g / 1000.0)


register(Fault(
    name="guidance_scale_wrong",
    description="the guidance embedding fed guidance_scale / 1000 (scaled like a timestep) while the DiT "
                "multiplies by 1000 itself: it embeds 3.5 instead of 3500",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_guidance_divided,
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
    apply=_conditioning_swapped, needs_cfg=True,
))


def _cfg_wrong_sign(pipeline: ComposedPipeline) -> None:
    pipeline.config.combine_cfg = (  # type: ignore[method-assign]
        lambda cond, uncond, scale: uncond - scale * (cond - uncond)
    )


register(Fault(
    name="cfg_wrong_sign",
    description="true CFG combined with the wrong sign: uncond - s * (cond - uncond)",
    expected_stage="denoise", expected_field="noise_pred", expected_step=0,
    apply=_cfg_wrong_sign, needs_cfg=True,
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
    apply=_last_step_skipped,
))


# ======================================================================================================= decode
def _decode_scale_inverted(pipeline: ComposedPipeline) -> None:
    config = find_stage(pipeline, DecodingStage).config

    def inverted(scale_shift: tuple[Any, Any]) -> tuple[Any, Any]:
        scale, shift = scale_shift
        return 1.0 / scale, shift  # latents multiplied by the scaling factor instead of divided

    _wrap_after(config, "get_decode_scale_and_shift", inverted)


register(Fault(
    name="decode_scale_shift_wrong",
    description="latents multiplied by the VAE scaling factor before decoding instead of divided by it",
    expected_stage="decode", expected_field="latents", expected_step=None,
    apply=_decode_scale_inverted,
))


def _decode_shift_missing(pipeline: ComposedPipeline) -> None:
    config = find_stage(pipeline, DecodingStage).config
    _wrap_after(config, "get_decode_scale_and_shift", lambda scale_shift: (scale_shift[0], 0.0))


register(Fault(
    name="decode_shift_missing",
    description="latents divided by the scaling factor but the VAE's shift_factor never added (section 5: "
                "missing denormalization)",
    expected_stage="decode", expected_field="latents", expected_step=None,
    apply=_decode_shift_missing,
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
    apply=_vae_decode_in_bf16, dtypes=("fp32",),
    scope_note="fp32 only: in a bf16 run the reference itself decodes in bf16, so the mutation changes nothing",
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
    apply=_group_norm_default_eps, dtypes=("fp32",),
    scope_note="fp32 only: in bf16 the change (rel_l2 3.5e-5 of the fp32 image) only flips bf16 roundings, and "
               "the faulty bf16 decoder differs from the correct one by 1.3e-2, no more than two correct bf16 "
               "decoders differ (forced decode/image floor 1.6e-2): no bf16 tolerance can see it without failing "
               "correct runs",
))


# ==================================================================================================== norm weights
# Visible only on checkpoints whose norm parameters are not all 1 / 0 (the tiny builders randomise them:
# references/tiny_build.py randomise_constant_parameters); on default-initialised weights these bugs change no bit.
def _modules_named(pipeline: ComposedPipeline, component: str, suffix: str) -> list[torch.nn.Module]:
    found = [m for name, m in pipeline.get_module(component).named_modules() if name.endswith(suffix)]
    if not found:
        raise ValueError(f"no module of {component} ends with '{suffix}'")
    return found


def _drop_weight(pipeline: ComposedPipeline, component: str, suffix: str, parameter: str = "weight") -> None:
    for module in _modules_named(pipeline, component, suffix):
        setattr(module, parameter, None)  # the module's own no-affine path: as if the weight were never loaded


def _swap_qk_norm_weights(pipeline: ComposedPipeline, attention_suffix: str) -> None:
    for attention in _modules_named(pipeline, "transformer", attention_suffix):
        attention.norm_q.weight, attention.norm_k.weight = attention.norm_k.weight, attention.norm_q.weight


def _flux_norm_q_weight_dropped(pipeline: ComposedPipeline) -> None:
    _drop_weight(pipeline, "transformer", ".norm_q")


register(Fault(
    name="norm_weight_dropped",
    description="the DiT's q RMSNorm run without its weight (every block's attn.norm_q: normalised, not scaled), "
                "as when a port's RMSNorm has no affine parameter or the weight is not loaded",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_flux_norm_q_weight_dropped,
))


def _flux_qk_norm_swapped(pipeline: ComposedPipeline) -> None:
    _swap_qk_norm_weights(pipeline, ".attn")


register(Fault(
    name="qk_norm_weights_swapped",
    description="every block's attn.norm_q weight loaded into norm_k and the other way round (a name-mapping "
                "slip in a weight loader)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_flux_qk_norm_swapped,
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
    apply=_flux_vae_norm_bias_dropped,
))


# ============================================================================================== Wan 2.1 (video)
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
))


def _umt5_padding_not_zeroed(pipeline: ComposedPipeline) -> None:
    _wan_text_spec_changed(pipeline, zero_padding=False)


register(Fault(
    name="wan_text_padding_not_zeroed",
    description="the UMT5 states at padding positions handed to the DiT instead of zeros (WanPipeline cuts each "
                "prompt's states at its token count and pads with zeros)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_umt5_padding_not_zeroed, families=("wan",),
))


def _wan_cross_norm_weight_dropped(pipeline: ComposedPipeline) -> None:
    _drop_weight(pipeline, "transformer", ".norm2")


register(Fault(
    name="wan_norm_weight_dropped",
    description="every block's cross-attention LayerNorm (norm2, affine in Wan 2.1) run without its weight",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_wan_cross_norm_weight_dropped, families=("wan",),
))


def _wan_qk_norm_swapped(pipeline: ComposedPipeline) -> None:
    _swap_qk_norm_weights(pipeline, ".attn1")


register(Fault(
    name="wan_qk_norm_weights_swapped",
    description="every block's self-attention norm_q weight loaded into norm_k and the other way round (Wan's "
                "q/k RMSNorm spans all heads: one weight of dim entries each)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_wan_qk_norm_swapped, families=("wan",),
))


def _wan_cross_norm_bias_dropped(pipeline: ComposedPipeline) -> None:
    _drop_weight(pipeline, "transformer", ".norm2", "bias")


register(Fault(
    name="wan_norm_bias_dropped",
    description="every block's cross-attention LayerNorm (norm2) keeps its weight but drops its bias",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_wan_cross_norm_bias_dropped, families=("wan",), dtypes=("fp32",),
    scope_note="fp32 only: the bias of a norm whose output feeds the tiny DiT's cross-attention moves the forced "
               "step-0 output by rel_l2 7.2e-3 in fp32 and 8.5e-3 in bf16, below the bf16 threshold (9.8e-3, 3x "
               "the floor of two correct bf16 runs): no bf16 tolerance can see it without failing correct runs",
))


# ---- shard faults: they break one rank's part of the parallel DiT (native_models/parallel), so they need the
# native side on several ranks (`topology`, run by harness/multirank.py on every rank); on one rank there is
# nothing to break and `apply` refuses. Module-level functions: they are pickled into the rank processes.
def _parallel_modules(pipeline: ComposedPipeline, kind: type, fault: str) -> list[Any]:
    found = [m for m in pipeline.get_module("transformer").modules() if isinstance(m, kind)]
    if not found:
        raise ValueError(f"fault {fault} breaks {kind.__name__} shards, but this pipeline's transformer has none "
                         f"(run the native side on ranks: --tp / --sp)")
    return found


def heads_back_in_wrong_order(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Ulysses' return all-to-all with the ranks' head chunks put back in reverse order."""
    from native_models.parallel import comm

    out = comm.heads_to_sequence(x, group)  # (B, H, L/w, D)
    return out.unflatten(1, (comm.group_size(group), -1)).flip(1).flatten(1, 2)


def _sp_heads_wrong_order(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.sequence_parallel import UlyssesAttention

    for module in _parallel_modules(pipeline, UlyssesAttention, "sp_heads_wrong_order"):
        module.to_sequence = heads_back_in_wrong_order  # instance attribute (the seam UlyssesAttention offers)


register(Fault(
    name="sp_heads_wrong_order",
    description="sequence parallelism: Ulysses' all-to-all back from head shards puts the ranks' heads in the "
                "wrong order, so every token's attention output mixes up heads",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_sp_heads_wrong_order, families=("wan",), topology=(1, 2),
))


def _sp_padding_unmasked(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.sequence_parallel import UlyssesAttention

    for module in _parallel_modules(pipeline, UlyssesAttention, "sp_padding_unmasked"):
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
))


def _tp_qk_norm_not_reduced(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.tensor_parallel import ShardedRMSNorm

    for module in _parallel_modules(pipeline, ShardedRMSNorm, "tp_qk_norm_not_reduced"):
        module.group = None  # no all-reduce: each rank normalises q/k by its own heads' mean square


register(Fault(
    name="tp_qk_norm_not_reduced",
    description="tensor parallelism: the q/k RMSNorm, which spans all heads, normalises each rank's head shard "
                "by that shard's own mean square (its all-reduce dropped). Step 0 in either precision; the field "
                "is the DiT output in fp32 (rel_l2 4.0e-2), in bf16 under the default cosine bar the guided "
                "noise_pred (cosine 0.9897; the DiT output's 0.99919 still passes 0.999)",
    expected_stage="denoise", expected_field=None, expected_step=0,
    apply=_tp_qk_norm_not_reduced, families=("wan",), topology=(2, 1),
))
