"""Denoising: the DiT forward at every step, classifier-free guidance, and the scheduler step."""

from __future__ import annotations

from typing import Any

import torch

from native_models.configs import PipelineConfig
from native_models.errors import StageFieldError
from native_models.req import Req
from native_models.stages.base import FLOAT_LIST, POSITIVE_INT, SHAPE, TENSOR, TENSOR_LIST, PipelineStage


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

    def __init__(self, transformer: torch.nn.Module, scheduler: Any, config: PipelineConfig) -> None:
        self.transformer = transformer
        self.scheduler = scheduler
        self.config = config

    def forward(self, batch: Req) -> Req:
        if batch.do_true_cfg and batch.negative_prompt_embeds is None:
            raise StageFieldError(self.name, "negative_prompt_embeds", "must be a list of tensors under true CFG")
        assert batch.raw_latent_shape is not None and batch.latents is not None and batch.timesteps is not None
        pos_kwargs = self.config.prepare_pos_cond_kwargs(batch)
        neg_kwargs = self.config.prepare_neg_cond_kwargs(batch) if batch.do_true_cfg else None
        rotary_kwargs = self.config.prepare_rotary_kwargs(batch)
        guidance = self.config.prepare_guidance(batch)
        latents = batch.latents
        progress = batch.extra.get("progress")
        for step, t in enumerate(batch.timesteps):
            timestep = self.config.prepare_timestep(t, batch)
            with torch.no_grad():
                cond = self.transformer(
                    hidden_states=latents, timestep=timestep, guidance=guidance, **pos_kwargs, **rotary_kwargs
                )
                batch.record("denoise", "transformer_output", self._spatial(cond, batch), step)
                noise_pred = cond
                if neg_kwargs is not None:
                    uncond = self.transformer(
                        hidden_states=latents, timestep=timestep, guidance=guidance, **neg_kwargs, **rotary_kwargs
                    )
                    batch.record("denoise", "transformer_output_uncond", self._spatial(uncond, batch), step)
                    noise_pred = self.config.combine_cfg(cond, uncond, batch.true_cfg_scale)
            batch.record("denoise", "noise_pred", self._spatial(noise_pred, batch), step)
            latents = self.scheduler.step(noise_pred, step, latents)
            batch.record("denoise", "latents", self._spatial(latents, batch), step)
            if progress is not None:
                progress(step + 1, len(batch.timesteps))
        batch.latents = latents
        return batch

    def _spatial(self, tensor: torch.Tensor, batch: Req) -> torch.Tensor:
        assert batch.raw_latent_shape is not None
        return self.config.unpack_latents(tensor, batch.raw_latent_shape)

