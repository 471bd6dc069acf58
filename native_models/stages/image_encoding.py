"""Image encoding: the conditioning image -> the image encoder's tokens the DiT attends to (Wan 2.1 I2V)."""

from __future__ import annotations

from typing import Any

import torch

from native_models.configs import PipelineConfig
from native_models.req import Req
from native_models.stages.base import RGB_IMAGE, TENSOR, PipelineStage


class ImageEncodingStage(PipelineStage):
    """Writes `image_embeds` (B, L_img, D) in the model dtype; records `encode/image_embeds`.

    The image is preprocessed once (`image_processor`: a PIL image -> (1, 3, S, S) float32) and encoded once; the
    hidden state the config names (`image_hidden_state`, Wan: -2, the penultimate layer's output) is repeated over
    the batch, as WanImageToVideoPipeline repeats it for each prompt.
    """

    trace_stage = "encode"
    reads = {"image": RGB_IMAGE}
    writes = {"image_embeds": TENSOR}

    def __init__(self, image_encoder: torch.nn.Module, image_processor: Any, config: PipelineConfig) -> None:
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.config = config

    def encode(self, batch: Req) -> torch.Tensor:
        """(1, L_img, D) in the encoder's dtype: the configured hidden state of the conditioning image."""
        device = next(self.image_encoder.parameters()).device
        pixels = self.image_processor(batch.image).to(device)  # (1, 3, S, S) float32; the encoder casts it
        with torch.no_grad():
            return self.image_encoder.hidden_state(pixels, self.config.image_hidden_state)

    def forward(self, batch: Req) -> Req:
        embeds = self.encode(batch).to(batch.device)
        embeds = embeds.repeat(batch.batch_size, 1, 1).to(batch.dtype)  # (B, L_img, D), the DiT's dtype
        batch.image_embeds = embeds
        batch.record(self.trace_stage, "image_embeds", embeds)
        return batch
