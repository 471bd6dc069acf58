"""Decoding: denormalise the final latents and run the VAE decoder."""

from __future__ import annotations

import torch

from native_models.configs import PipelineConfig
from native_models.req import Req
from native_models.stages.base import SHAPE, TENSOR, PipelineStage


class DecodingStage(PipelineStage):
    """Writes `output`: frames (B, C, H, W) in [0, 1]; records the VAE's input latents and raw output."""

    trace_stage = "decode"
    reads = {"latents": TENSOR, "raw_latent_shape": SHAPE}
    writes = {"output": TENSOR}

    def __init__(self, vae: torch.nn.Module, config: PipelineConfig) -> None:
        self.vae = vae
        self.config = config

    def forward(self, batch: Req) -> Req:
        assert batch.latents is not None
        latents = self.config.post_denoising_loop(batch.latents, batch)
        scale, shift = self.config.get_decode_scale_and_shift(self.vae)
        latents = latents / scale + shift
        batch.record(self.trace_stage, "latents", latents)
        with torch.no_grad():
            image = self.config.vae_output(self.vae.decode(latents), batch)
        batch.record(self.trace_stage, "image", image)
        batch.output = self.config.post_decoding(image, batch)
        return batch
