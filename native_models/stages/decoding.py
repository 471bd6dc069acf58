"""Decoding: denormalise the final latents and run the VAE decoder (on one rank of a parallel run)."""

from __future__ import annotations

from typing import ClassVar

import torch

from native_models.configs import PipelineConfig
from native_models.req import Req
from native_models.stages.base import SHAPE, TENSOR, FieldKind, PipelineStage


class DecodingStage(PipelineStage):
    """Writes `output`: frames (B, C, H, W) in [0, 1]; records the VAE's input latents and raw output."""

    trace_stage = "decode"
    reads = {"latents": TENSOR, "raw_latent_shape": SHAPE}
    writes = {"output": TENSOR}

    def __init__(self, vae: torch.nn.Module, config: PipelineConfig) -> None:
        self.vae = vae
        self.config = config

    def forward(self, batch: Req) -> Req:
        return self.decode(batch, self.vae_input(batch))

    def vae_input(self, batch: Req) -> torch.Tensor:
        """The latents handed to the VAE: denormalised, unpacked, recorded as `decode/latents`."""
        assert batch.latents is not None
        latents = self.config.post_denoising_loop(batch.latents, batch)
        scale, shift = self.config.get_decode_scale_and_shift(self.vae)
        latents = latents / scale + shift
        batch.record(self.trace_stage, "latents", latents)
        return latents

    def decode(self, batch: Req, latents: torch.Tensor) -> Req:
        """Run the VAE on `latents` (from `vae_input`): records its raw output, writes `output`."""
        with torch.no_grad():
            image = self.config.vae_output(self.vae.decode(latents), batch)
        batch.record(self.trace_stage, "image", image)
        batch.output = self.config.post_decoding(image, batch)
        return batch


class ReplicaDecodingStage(DecodingStage):
    """Decoding on a rank other than the first when the VAE is whole on every rank: the VAE's input is recorded
    (so the ranks can be checked to hand it the same latents) and nothing is decoded, since the frames would be
    the first rank's, bit for bit. On a CPU the ranks share the cores: the four ranks' decodes were a fifth of a
    Wan I2V tp2 x sp2 run's CPU time. `output` stays None."""

    writes: ClassVar[dict[str, FieldKind]] = {}

    def decode(self, batch: Req, latents: torch.Tensor) -> Req:
        return batch
