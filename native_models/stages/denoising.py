"""Denoising: the DiT forward at every step, classifier-free guidance, and the scheduler step.

The loop is split in two public pieces so that one step can run alone: `prepare` computes what every step
shares (conditioning, rotary inputs, guidance) once per request, and `denoise_step` runs step i from any
latents. `forward` is nothing but `prepare` plus a loop of `denoise_step`; the harness's teacher-forced run
calls the same `denoise_step` from the reference's latents, so the forced and the free run share one step code.

Two-expert families (Wan 2.2 A14B) hand the stage a second transformer: at every step the config's
`select_expert(t)` picks one (0: `transformer`, 1: `transformer_2`), `expert_cfg_scale` its CFG scale; the index
is kept per step in `batch.experts` and recorded as `denoise/expert` (int64, shape (1,)) when there are two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from native_models.configs import PipelineConfig
from native_models.errors import StageFieldError
from native_models.req import Req
from native_models.stages.base import (
    FLOAT_LIST,
    POSITIVE_INT,
    SHAPE,
    TENSOR,
    TENSOR_LIST,
    FieldKind,
    PipelineStage,
)


@dataclass
class StepInputs:
    """What every denoising step of one request shares, computed once by `DenoisingStage.prepare`."""

    pos_kwargs: dict[str, Any]
    neg_kwargs: dict[str, Any] | None  # None without true CFG
    rotary_kwargs: dict[str, Any]
    guidance: torch.Tensor | None


class DenoisingStage(PipelineStage):
    """Runs the sampling loop; records per step the DiT output(s), the guided prediction and the new latents."""

    trace_stage = "denoise"
    reads = {
        "latents": TENSOR,
        "timesteps": TENSOR,
        "num_inference_steps": POSITIVE_INT,
        "sigmas": FLOAT_LIST,
        "prompt_embeds": TENSOR_LIST,
        "raw_latent_shape": SHAPE,
        "height": POSITIVE_INT,
        "width": POSITIVE_INT,
    }
    optional_reads = {"negative_prompt_embeds": TENSOR_LIST}
    writes = {"latents": TENSOR}

    def __init__(
        self,
        transformer: torch.nn.Module,
        scheduler: Any,
        config: PipelineConfig,
        transformer_2: torch.nn.Module | None = None,
        extra_reads: dict[str, FieldKind] | None = None,
    ) -> None:
        """`transformer_2`: the second (low-noise) expert of a two-expert family; `extra_reads`: fields the
        family's conditioning callbacks read besides the standard ones (I2V: `condition`, `image_embeds`)."""
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.scheduler = scheduler
        self.config = config
        if extra_reads:
            self.reads = {**type(self).reads, **extra_reads}

    @property
    def experts(self) -> tuple[torch.nn.Module, ...]:
        """The transformers a step can run, by index (read at every step, so a fault may replace one)."""
        return (self.transformer,) if self.transformer_2 is None else (self.transformer, self.transformer_2)

    def prepare(self, batch: Req) -> StepInputs:
        """Conditioning kwargs, rotary inputs and guidance of this request (the same for every step)."""
        if batch.do_true_cfg and batch.negative_prompt_embeds is None:
            raise StageFieldError(self.name, "negative_prompt_embeds", "must be a list of tensors under true CFG")
        batch.experts = {}  # a fresh map per run (a copied request must not share the previous run's)
        return StepInputs(
            pos_kwargs=self.config.prepare_pos_cond_kwargs(batch),
            neg_kwargs=self.config.prepare_neg_cond_kwargs(batch) if batch.do_true_cfg else None,
            rotary_kwargs=self.config.prepare_rotary_kwargs(batch),
            guidance=self.config.prepare_guidance(batch),
        )

    def denoise_step(
        self, inputs: StepInputs, batch: Req, step: int, t: torch.Tensor, latents: torch.Tensor
    ) -> torch.Tensor:
        """Step `step` at scheduler timestep `t` from `latents` (DiT layout): DiT, CFG, scheduler; returns the
        latents after the step. Records transformer_output(_uncond), noise_pred and latents at `step` (and the
        expert that ran, for two experts)."""
        experts = self.experts
        expert = self.config.select_expert(t, batch)
        if not 0 <= expert < len(experts):
            raise ValueError(f"select_expert chose transformer {expert} at step {step}; there are {len(experts)}")
        transformer = experts[expert]
        batch.experts[step] = expert
        if len(experts) > 1:
            batch.record(self.trace_stage, "expert", torch.tensor([expert], dtype=torch.int64), step)
        timestep = self.config.prepare_timestep(t, batch)
        shared: dict[str, Any] = dict(inputs.rotary_kwargs)
        if inputs.guidance is not None:  # only guidance-distilled DiTs take it
            shared["guidance"] = inputs.guidance
        with torch.no_grad():
            cond, uncond = self.config.run_transformer(
                transformer, self.config.prepare_model_input(latents, batch), timestep, inputs.pos_kwargs,
                inputs.neg_kwargs, shared,
            )
            batch.record(self.trace_stage, "transformer_output", self._spatial(cond, batch), step)
            noise_pred = cond
            if uncond is not None:
                batch.record(self.trace_stage, "transformer_output_uncond", self._spatial(uncond, batch), step)
                noise_pred = self.config.combine_cfg(cond, uncond, self.config.expert_cfg_scale(expert, batch))
            noise_pred = self.config.finish_noise_pred(noise_pred, batch)
        batch.record(self.trace_stage, "noise_pred", self._spatial(noise_pred, batch), step)
        latents = self.scheduler.step(noise_pred, step, latents)
        batch.record(self.trace_stage, "latents", self._spatial(latents, batch), step)
        return latents

    def forward(self, batch: Req) -> Req:
        assert batch.latents is not None and batch.timesteps is not None  # guaranteed by `reads`
        inputs = self.prepare(batch)
        latents = batch.latents
        progress = batch.extra.get("progress")
        for step, t in enumerate(batch.timesteps):
            latents = self.denoise_step(inputs, batch, step, t, latents)
            if progress is not None:
                progress(step + 1, len(batch.timesteps))
        batch.latents = latents
        return batch

    def _spatial(self, tensor: torch.Tensor, batch: Req) -> torch.Tensor:
        assert batch.raw_latent_shape is not None
        return self.config.unpack_latents(tensor, batch.raw_latent_shape)
