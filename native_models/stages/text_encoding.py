"""Text encoding: every configured encoder turns the prompt (and negative prompt) into embeddings."""

from __future__ import annotations

from typing import Any

import torch

from native_models.configs import PipelineConfig, TextEncoderSpec
from native_models.req import Req
from native_models.stages.base import STRING_LIST, TENSOR_LIST, PipelineStage


class TextEncodingStage(PipelineStage):
    """Writes `prompt_embeds` (and `negative_prompt_embeds` under true CFG): one tensor per encoder, in order."""

    trace_stage = "encode"
    reads = {"prompt": STRING_LIST}
    writes = {"prompt_embeds": TENSOR_LIST}

    def __init__(self, encoders: list[tuple[TextEncoderSpec, Any, torch.nn.Module]], config: PipelineConfig) -> None:
        self.encoders = encoders  # (spec, tokenizer, model)
        self.config = config

    def encode(self, prompts: list[str], batch: Req) -> list[torch.Tensor]:
        embeds = []
        for spec, tokenizer, model in self.encoders:
            max_length = spec.max_length or (
                tokenizer.model_max_length if spec.length_from_tokenizer else batch.max_sequence_length
            )
            ids = tokenizer(
                prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
            ).input_ids
            with torch.no_grad():
                outputs = model(ids.to(batch.device))
            embeds.append(self.config.postprocess_text(spec, outputs).to(batch.dtype))
        return embeds

    def forward(self, batch: Req) -> Req:
        batch.prompt_embeds = self.encode(batch.prompt, batch)
        for (spec, _, _), tensor in zip(self.encoders, batch.prompt_embeds, strict=True):
            batch.record(self.trace_stage, spec.trace_field, tensor)
        if batch.do_true_cfg:
            assert batch.negative_prompt is not None  # do_true_cfg implies it
            batch.negative_prompt_embeds = self.encode(batch.negative_prompt, batch)
            for (spec, _, _), tensor in zip(self.encoders, batch.negative_prompt_embeds, strict=True):
                batch.record(self.trace_stage, f"negative_{spec.trace_field}", tensor)
        return batch
