"""Timestep preparation: the scheduler's sigma and timestep schedule for this request."""

from __future__ import annotations

from typing import Any

from native_models.configs import PipelineConfig
from native_models.req import Req
from native_models.stages.base import FLOAT_LIST, POSITIVE_INT, TENSOR, PipelineStage


class TimestepPreparationStage(PipelineStage):
    """Writes `sigmas` (list of floats handed to the scheduler) and `timesteps`; records the full schedule."""

    trace_stage = "timesteps"
    reads = {"num_inference_steps": POSITIVE_INT, "latents": TENSOR}
    writes = {"timesteps": TENSOR, "sigmas": FLOAT_LIST}

    def __init__(self, scheduler: Any, config: PipelineConfig) -> None:
        self.scheduler = scheduler
        self.config = config

    def forward(self, batch: Req) -> Req:
        options: dict[str, Any] = {}  # only what the family uses: a multistep scheduler takes neither option
        sigmas = self.config.prepare_sigmas(batch)
        if sigmas is not None:
            options["sigmas"] = sigmas
        mu = self.config.compute_mu(batch, self.scheduler)
        if mu is not None:
            options["mu"] = mu
        self.scheduler.set_timesteps(batch.num_inference_steps, device=batch.device, **options)
        batch.sigmas = [float(s) for s in self.scheduler.sigmas[:-1].tolist()]
        batch.timesteps = self.scheduler.timesteps
        batch.record(self.trace_stage, "sigmas", self.scheduler.sigmas)
        batch.record(self.trace_stage, "timesteps", self.scheduler.timesteps)
        return batch
