"""Text encoding: every configured encoder turns the prompt (and negative prompt) into embeddings."""

from __future__ import annotations

from typing import Any

import torch

from native_models.configs import PipelineConfig, TextEncoderSpec
from native_models.req import Req
from native_models.stages.base import STRING_LIST, TENSOR_LIST, PipelineStage


def zero_past_length(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """embeds (B, L, D) with every position at or past its prompt's token count (the mask's sum) set to 0."""
    lengths = mask.gt(0).sum(dim=1)  # (B,)
    keep = torch.arange(embeds.shape[1], device=embeds.device)[None, :] < lengths[:, None]  # (B, L)
    return embeds.masked_fill(~keep[..., None], 0)


class TextEncodingStage(PipelineStage):
    """Writes `prompt_embeds` (and `negative_prompt_embeds` under true CFG): one tensor per encoder, in order."""

    trace_stage = "encode"
    reads = {"prompt": STRING_LIST}
    writes = {"prompt_embeds": TENSOR_LIST}

    def __init__(self, encoders: list[tuple[TextEncoderSpec, Any, torch.nn.Module]], config: PipelineConfig) -> None:
        self.encoders = encoders  # (spec, tokenizer, model)
        self.config = config

    def encode(self, prompts: list[str], batch: Req) -> list[torch.Tensor]:
        prompts = [self.config.clean_prompt(prompt) for prompt in prompts]
        embeds = []
        for spec, tokenizer, model in self.encoders:
            max_length = spec.max_length or (
                tokenizer.model_max_length if spec.length_from_tokenizer else batch.max_sequence_length
            )
            tokens = tokenizer(
                prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt",
                return_attention_mask=spec.attention_mask or spec.zero_padding,
            )
            ids = tokens.input_ids.to(batch.device)
            with torch.no_grad():
                if spec.attention_mask:
                    outputs = model(ids, tokens.attention_mask.to(batch.device))
                else:
                    outputs = model(ids)
            embed = self.config.postprocess_text(spec, outputs).to(batch.dtype)
            if spec.zero_padding:
                embed = zero_past_length(embed, tokens.attention_mask.to(batch.device))
            embeds.append(embed)
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
