"""Latent preparation: the initial noise, drawn exactly as the reference draws it."""

from __future__ import annotations

import torch

from native_models.configs import PipelineConfig
from native_models.req import Req
from native_models.stages.base import GENERATOR, POSITIVE_INT, SHAPE, TENSOR, PipelineStage


def draw_initial_noise(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Generator]:
    """Gaussian noise from a CPU generator seeded with `seed`, drawn in `dtype`, then moved to `device`.

    A CPU generator makes the noise identical on every device, so a CPU golden and a GPU run start alike; the
    reference runner seeds Diffusers the same way.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(shape, generator=generator, dtype=dtype)
    return noise.to(device), generator


class LatentPreparationStage(PipelineStage):
    """Writes `latents` (in the DiT's layout), `raw_latent_shape` and `generator`."""

    trace_stage = "latents"
    reads = {"height": POSITIVE_INT, "width": POSITIVE_INT}
    writes = {"latents": TENSOR, "raw_latent_shape": SHAPE, "generator": GENERATOR}

    def __init__(self, config: PipelineConfig, vae_scale_factor: int, latent_channels: int) -> None:
        self.config = config
        self.vae_scale_factor = vae_scale_factor
        self.latent_channels = latent_channels

    def draw_noise(self, shape: tuple[int, ...], batch: Req) -> tuple[torch.Tensor, torch.Generator]:
        """The initial noise (spatial `shape`) and the generator it came from; one method, so a fault or a
        family with another RNG recipe replaces just this."""
        return draw_initial_noise(shape, batch.seed, self.config.latent_dtype(batch), batch.device)

    def forward(self, batch: Req) -> Req:
        shape = self.config.prepare_latent_shape(batch, self.vae_scale_factor, self.latent_channels)
        noise, generator = self.draw_noise(shape, batch)
        batch.record(self.trace_stage, "initial", noise)
        batch.raw_latent_shape = tuple(noise.shape)
        batch.latents = self.config.pack_latents(noise)
        batch.generator = generator
        return batch
