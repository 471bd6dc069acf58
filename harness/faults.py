"""A catalog of named, deliberately broken native variants: the bugs a parity run must localize.

Each `Fault` mutates an already built native pipeline (instance attributes only: no source is edited, nothing
is patched globally, so a fault dies with its pipeline) and names the record where a teacher-forced parity
run must report the first divergence. The mutations reproduce the classic native-port mistakes of field notes
section 5. `run_parity(..., mutate_native=fault.apply)` runs one; tests/test_flux_fault_localization.py runs
them all. Add a fault with `register(Fault(...))`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from harness.forcing import find_stage
from harness.request import GenerationRequest
from native_models.pipeline import ComposedPipeline
from native_models.req import Req
from native_models.stages.decoding import DecodingStage
from native_models.stages.latent_preparation import LatentPreparationStage
from native_models.stages.text_encoding import TextEncodingStage


@dataclass(frozen=True)
class Fault:
    """One broken native variant and where parity must catch it.

    `expected_step` is the denoising step of the first divergence (None outside the loop); `expected_field`
    None means any field of the stage. `needs_cfg` / `needs_nonsquare`: the fault only shows under true CFG /
    on a non-square image, so its test request must have them.
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

    def request_for(self, base: GenerationRequest) -> GenerationRequest:
        """`base` with what this fault needs to show: true CFG with a negative prompt, a non-square size."""
        changes: dict[str, Any] = {}
        if self.needs_cfg and not base.do_true_cfg:
            changes.update(negative_prompt="blurry, low quality", true_cfg_scale=2.5)
        if self.needs_nonsquare and base.height == base.width:
            changes.update(height=48, width=80)
        return replace(base, **changes)


FAULTS: dict[str, Fault] = {}


def register(fault: Fault) -> Fault:
    if fault.name in FAULTS:
        raise ValueError(f"fault '{fault.name}' is already registered")
    FAULTS[fault.name] = fault
    return fault


def get_fault(name: str) -> Fault:
    if name not in FAULTS:
        raise KeyError(f"unknown fault '{name}'; known faults: {', '.join(sorted(FAULTS))}")
    return FAULTS[name]


# ---- encode ----
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
                "last_hidden_state",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_t5_penultimate_hidden_state,
))


# ---- timesteps ----
def _no_sigma_shift(pipeline: ComposedPipeline) -> None:
    # mu = 0 makes FLUX's exponential time shift exp(0) / (exp(0) + 1/t - 1) = t: the schedule stays unshifted
    pipeline.config.compute_mu = lambda batch, scheduler: 0.0  # type: ignore[method-assign]


register(Fault(
    name="sigma_shift_not_applied",
    description="the resolution-dependent sigma shift (mu) is not applied: sigmas stay linspace(1, 1/N, N)",
    expected_stage="timesteps", expected_field="sigmas", expected_step=None,
    apply=_no_sigma_shift,
))


# ---- latents ----
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


# ---- denoise ----
def _split_half_rotary(pipeline: ComposedPipeline) -> None:
    pipeline.get_module("transformer").rope_interleaved = False  # FLUX rotates interleaved pairs


register(Fault(
    name="rotary_style_swapped",
    description="rotary embedding applied split-half (NeoX style) instead of to interleaved pairs",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_split_half_rotary,
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


# ---- decode ----
def _decode_scale_inverted(pipeline: ComposedPipeline) -> None:
    config = find_stage(pipeline, DecodingStage).config
    base = config.get_decode_scale_and_shift

    def inverted(vae: Any) -> tuple[float, float]:
        scale, shift = base(vae)
        return 1.0 / scale, shift  # latents multiplied by the scaling factor instead of divided

    config.get_decode_scale_and_shift = inverted  # type: ignore[method-assign]


register(Fault(
    name="decode_scale_shift_wrong",
    description="latents multiplied by the VAE scaling factor before decoding instead of divided by it",
    expected_stage="decode", expected_field="latents", expected_step=None,
    apply=_decode_scale_inverted,
))
