"""Conditioning latents: the conditioning image -> VAE-encoded latents and mask channels the DiT gets besides the
noisy latents (image-to-video: Wan 2.1 I2V, Wan 2.2 A14B I2V)."""

from __future__ import annotations

import torch

from native_models.configs import PipelineConfig
from native_models.errors import StageFieldError
from native_models.req import Req
from native_models.stages.base import POSITIVE_INT, RGB_IMAGE, SHAPE, TENSOR, PipelineStage

SAMPLE_MODES = ("argmax", "sample")


class ConditionLatentStage(PipelineStage):
    """Writes `condition` (B, C_mask + C_lat, T, h, w): the mask channels, then the normalised conditioning latents
    (the order WanImageToVideoPipeline.prepare_latents concatenates them in); records `latents/mask` and
    `latents/condition` (the normalised latents alone).

    Runs after the initial noise is drawn, as the reference does: with `sample_mode="sample"` the posterior sample
    draws from `batch.generator` after the noise; with `"argmax"` (Wan: `retrieve_latents(..., "argmax")`) it takes
    the posterior mean and draws nothing. The VAE encodes once; the latents are repeated over the batch.
    """

    trace_stage = "latents"
    reads = {"image": RGB_IMAGE, "raw_latent_shape": SHAPE, "height": POSITIVE_INT, "width": POSITIVE_INT,
             "num_frames": POSITIVE_INT}
    writes = {"condition": TENSOR}

    def __init__(self, vae: torch.nn.Module, config: PipelineConfig, sample_mode: str = "argmax") -> None:
        if sample_mode not in SAMPLE_MODES:
            raise ValueError(f"sample_mode {sample_mode!r} is not one of {SAMPLE_MODES}")
        self.vae = vae
        self.config = config
        self.sample_mode = sample_mode

    def encode(self, video: torch.Tensor, batch: Req) -> torch.Tensor:
        """(1, 3, F, H, W) pixels -> (1, C_lat, T, h, w) latents in the VAE's dtype (mean or sample)."""
        weight = next(self.vae.parameters())
        with torch.no_grad():
            posterior = self.vae.encode(video.to(weight.device, weight.dtype))
        if self.sample_mode == "argmax":
            return posterior.mode()
        if batch.generator is None:
            raise StageFieldError(self.name, "generator", "must be a torch.Generator to sample the posterior")
        return posterior.sample(batch.generator)

    def forward(self, batch: Req) -> Req:
        assert batch.raw_latent_shape is not None  # guaranteed by `reads`
        video = self.config.prepare_condition_video(batch.image, batch)  # (1, 3, F, H, W) float32
        latents = self.encode(video, batch).repeat(batch.batch_size, 1, 1, 1, 1)  # (B, C_lat, T, h, w)
        latents = latents.to(batch.device, self.config.latent_dtype(batch))
        latents = self.config.normalize_condition_latents(latents, self.vae, batch)
        expected = (batch.raw_latent_shape[0], *batch.raw_latent_shape[2:])
        if (latents.shape[0], *latents.shape[2:]) != expected:
            raise StageFieldError(self.name, "condition", f"latents {tuple(latents.shape)} do not match the noise "
                                  f"{batch.raw_latent_shape} in batch, frames and size")
        mask = self.config.prepare_condition_mask(batch, tuple(latents.shape)).to(latents.device)
        batch.record(self.trace_stage, "mask", mask)
        batch.record(self.trace_stage, "condition", latents)
        batch.condition = self.config.join_condition(mask, latents)  # (B, C_mask + C_lat, T, h, w)
        return batch
