"""Text encoding: every configured encoder turns the prompt (and negative prompt) into embeddings.

Encoder-only models (CLIP, T5, UMT5) take the padded batch as is. Decoder-only chat LLMs (Qwen-Image's Qwen2.5-VL)
take the prompt inside a template and hand on each prompt's own tokens only: the positions the padding mask keeps
(on whichever side the tokenizer pads), minus the template's leading tokens, right-padded with zeros to the
longest prompt, with the mask of what is real. Both are `TextEncoderSpec` options, so the stage never branches
on the model.
"""

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


def keep_real_tokens(embeds: torch.Tensor, mask: torch.Tensor, drop: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prompt's states at the positions `mask` (B, L) keeps, without the first `drop` of them, right-padded
    with zeros to the longest: (B, L', D) and the int64 mask (B, L') of the kept positions (ones, then zeros)."""
    rows = [states[keep.bool()][drop:] for states, keep in zip(embeds, mask, strict=True)]  # (n_i, D) each
    longest = max(row.shape[0] for row in rows)
    kept = torch.stack([torch.cat([row, row.new_zeros(longest - row.shape[0], row.shape[1])]) for row in rows])
    real = torch.zeros(len(rows), longest, dtype=torch.long, device=embeds.device)
    for i, row in enumerate(rows):
        real[i, : row.shape[0]] = 1
    return kept, real


def run_text_encoder(spec: TextEncoderSpec, model: Any, ids: torch.Tensor, mask: torch.Tensor | None) -> Any:
    """The encoder's outputs for token ids (B, L) and, when the spec gives it one, the padding mask; for a
    `hidden_states` spec the chosen state itself (through the model's `hidden_state` when it has one: it runs
    only the layers that state needs)."""
    with torch.no_grad():
        if spec.output == "hidden_states" and callable(getattr(model, "hidden_state", None)):
            if spec.hidden_state is None:
                raise ValueError(f"{spec.encoder}: output 'hidden_states' needs a hidden_state index")
            return model.hidden_state(ids, mask if spec.attention_mask else None, spec.hidden_state)
        if spec.output == "hidden_states":
            return model(ids, mask if spec.attention_mask else None, output_hidden_states=True)
        return model(ids, mask) if spec.attention_mask else model(ids)


class TextEncodingStage(PipelineStage):
    """Writes `prompt_embeds` (and `negative_prompt_embeds` under true CFG): one tensor per encoder, in order;
    for encoders that keep each prompt's own tokens also `prompt_masks` (`negative_prompt_masks`)."""

    trace_stage = "encode"
    reads = {"prompt": STRING_LIST}
    writes = {"prompt_embeds": TENSOR_LIST}

    def __init__(self, encoders: list[tuple[TextEncoderSpec, Any, torch.nn.Module]], config: PipelineConfig) -> None:
        self.encoders = encoders  # (spec, tokenizer, model)
        self.config = config

    def encode_one(self, spec: TextEncoderSpec, tokenizer: Any, model: torch.nn.Module, prompts: list[str],
                   batch: Req) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One encoder's embeddings (B, L, D) in the run's dtype, and the mask of real tokens (B, L) for a
        `keep_real_tokens` encoder (else None)."""
        texts = [spec.template.format(p) for p in prompts] if spec.template is not None else prompts
        max_length = spec.max_length or (
            tokenizer.model_max_length if spec.length_from_tokenizer else batch.max_sequence_length
        )
        tokens = tokenizer(
            texts, padding=spec.padding, max_length=max_length, truncation=True, return_tensors="pt",
            return_attention_mask=spec.attention_mask or spec.zero_padding or spec.keep_real_tokens,
        )
        ids = tokens.input_ids.to(batch.device)
        mask = getattr(tokens, "attention_mask", None)  # a transformers BatchEncoding has none unless asked
        mask = None if mask is None else mask.to(batch.device)
        outputs = run_text_encoder(spec, model, ids, mask)
        embed = outputs if isinstance(outputs, torch.Tensor) else self.config.postprocess_text(spec, outputs)
        real = None
        if spec.keep_real_tokens:
            assert mask is not None  # asked for above
            embed, real = keep_real_tokens(embed, mask, spec.drop_tokens)
            if spec.trim_to_request:
                embed, real = embed[:, : batch.max_sequence_length], real[:, : batch.max_sequence_length]
        embed = embed.to(batch.dtype)
        if spec.zero_padding:
            assert mask is not None
            embed = zero_past_length(embed, mask)
        return embed, real

    def encode(self, prompts: list[str], batch: Req) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        prompts = [self.config.clean_prompt(prompt) for prompt in prompts]
        results = [self.encode_one(spec, tokenizer, model, prompts, batch) for spec, tokenizer, model in self.encoders]
        return [embed for embed, _ in results], [mask for _, mask in results]

    def _record(self, batch: Req, embeds: list[torch.Tensor], masks: list[torch.Tensor | None], prefix: str) -> None:
        for (spec, _, _), tensor, mask in zip(self.encoders, embeds, masks, strict=True):
            batch.record(self.trace_stage, f"{prefix}{spec.trace_field}", tensor)
            if spec.mask_field is not None and mask is not None:
                batch.record(self.trace_stage, f"{prefix}{spec.mask_field}", mask)

    def forward(self, batch: Req) -> Req:
        batch.prompt_embeds, batch.prompt_masks = self.encode(batch.prompt, batch)
        self._record(batch, batch.prompt_embeds, batch.prompt_masks, "")
        if batch.do_true_cfg:
            assert batch.negative_prompt is not None  # do_true_cfg implies it
            batch.negative_prompt_embeds, batch.negative_prompt_masks = self.encode(batch.negative_prompt, batch)
            self._record(batch, batch.negative_prompt_embeds, batch.negative_prompt_masks, "negative_")
        return batch
