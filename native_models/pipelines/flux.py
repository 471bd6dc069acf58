"""FLUX.1 text-to-image: the family's config, sampling defaults and pipeline (mirrors Diffusers' FluxPipeline).

FLUX facts encoded here: CLIP gives the pooled vector and T5 the token embeddings; latents are 2x2 patches
packed into tokens of 4*C channels; 3-axis position ids (0, row, col) for image tokens and zeros for text;
timesteps reach the DiT divided by 1000; a guidance embedding replaces CFG for the distilled checkpoints;
the sigma schedule is linspace(1, 1/N, N) shifted by a resolution-dependent `mu`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from native_models.configs import PipelineConfig, SamplingParams, TextEncoderSpec
from native_models.errors import CheckpointError, RequestError
from native_models.loader import read_json
from native_models.pipeline import ComposedPipeline
from native_models.registry import register_configs
from native_models.req import Req


def pack_flux_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): 2x2 patches become tokens, channels ordered (C, dy, dx)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_flux_latents(tokens: torch.Tensor, raw_shape: tuple[int, ...]) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w), the inverse of `pack_flux_latents`."""
    b, c, h, w = raw_shape
    patches = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)  # (B, C, h/2, 2, w/2, 2)
    return patches.reshape(b, c, h, w)


def flux_image_ids(grid_h: int, grid_w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Position ids (grid_h * grid_w, 3) of packed image tokens: (0, row, col), row-major."""
    rows = torch.arange(grid_h)[:, None].expand(grid_h, grid_w)
    cols = torch.arange(grid_w)[None, :].expand(grid_h, grid_w)
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(grid_h * grid_w, 3)
    return ids.to(device=device, dtype=dtype)


@dataclass
class FluxSamplingParams(SamplingParams):
    """FLUX.1-dev defaults (FluxPipeline's own: 28 steps, guidance 3.5, 1024x1024, 512 T5 tokens)."""

    num_inference_steps: int = 28
    height: int = 1024
    width: int = 1024
    guidance_scale: float = 3.5
    max_sequence_length: int = 512

    @classmethod
    def for_checkpoint(cls, checkpoint: Path) -> SamplingParams:
        """FLUX.1-schnell (a transformer without guidance embedding: timestep-distilled) samples as its model card
        says: 4 steps, guidance 0, 256 T5 tokens; every other FLUX checkpoint gets FLUX.1-dev's defaults."""
        transformer = read_json(checkpoint / "transformer" / "config.json")
        if transformer.get("guidance_embeds", False):
            return cls()
        return cls(num_inference_steps=4, guidance_scale=0.0, max_sequence_length=256)


@dataclass
class FluxPipelineConfig(PipelineConfig):
    text_encoders: tuple[TextEncoderSpec, ...] = field(
        default_factory=lambda: (
            TextEncoderSpec("text_encoder", "tokenizer", "pooler_output", "pooled_prompt_embeds",
                            length_from_tokenizer=True),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "last_hidden_state", "prompt_embeds"),
        )
    )
    timestep_divisor: float = 1000.0
    guidance_embeds: bool = True  # set from the transformer's config when the pipeline loads
    vae_scale_factor: int = 8  # set from the VAE's config when the pipeline loads

    def check_request(self, batch: Req) -> None:
        multiple = self.vae_scale_factor * 2
        for name in ("height", "width"):
            value = getattr(batch, name)
            if value % multiple:
                raise RequestError(f"{name} {value} is not divisible by {multiple} (VAE factor x 2x2 packing)")
        if batch.max_sequence_length > 512:
            raise RequestError(f"max_sequence_length {batch.max_sequence_length} exceeds FLUX's limit of 512")

    def prepare_latent_shape(self, batch: Req, vae_scale_factor: int, latent_channels: int) -> tuple[int, ...]:
        h = 2 * (batch.height // (vae_scale_factor * 2))
        w = 2 * (batch.width // (vae_scale_factor * 2))
        return (batch.batch_size, latent_channels, h, w)

    def pack_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return pack_flux_latents(latents)

    def unpack_latents(self, latents: torch.Tensor, raw_shape: tuple[int, ...]) -> torch.Tensor:
        return unpack_flux_latents(latents, raw_shape)

    def prepare_sigmas(self, batch: Req) -> list[float]:
        n = batch.num_inference_steps
        return np.linspace(1.0, 1 / n, n).tolist()

    def compute_mu(self, batch: Req, scheduler: Any) -> float:
        assert batch.latents is not None
        return scheduler.compute_mu(batch.latents.shape[1])  # image tokens after packing

    def _cond_kwargs(self, embeds: list[torch.Tensor]) -> dict[str, Any]:
        pooled, tokens = embeds
        return {"encoder_hidden_states": tokens, "pooled_projections": pooled}

    def prepare_pos_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        assert batch.prompt_embeds is not None
        return self._cond_kwargs(batch.prompt_embeds)

    def prepare_neg_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        assert batch.negative_prompt_embeds is not None
        return self._cond_kwargs(batch.negative_prompt_embeds)

    def prepare_rotary_kwargs(self, batch: Req) -> dict[str, Any]:
        assert batch.raw_latent_shape is not None and batch.prompt_embeds is not None
        _, _, h, w = batch.raw_latent_shape
        text_len = batch.prompt_embeds[1].shape[1]
        return {
            "img_ids": flux_image_ids(h // 2, w // 2, batch.dtype, batch.device),
            "txt_ids": torch.zeros(text_len, 3, dtype=batch.dtype, device=batch.device),
        }

    def prepare_guidance(self, batch: Req) -> torch.Tensor | None:
        if not self.guidance_embeds:
            return None
        return torch.full([1], batch.guidance_scale, dtype=torch.float32, device=batch.device).expand(
            batch.batch_size
        )


class FluxPipeline(ComposedPipeline):
    pipeline_name = "FluxPipeline"
    _required_config_modules = (
        "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae", "scheduler",
    )

    @classmethod
    def configure(cls, config: PipelineConfig, checkpoint: Path) -> None:
        if not isinstance(config, FluxPipelineConfig):
            raise TypeError(f"FluxPipeline needs a FluxPipelineConfig, got {type(config).__name__}")
        transformer = read_json(checkpoint / "transformer" / "config.json")
        vae = read_json(checkpoint / "vae" / "config.json")
        config.guidance_embeds = bool(transformer.get("guidance_embeds", False))
        blocks = vae.get("block_out_channels")
        if not isinstance(blocks, list) or not blocks:
            raise CheckpointError(f"{checkpoint / 'vae' / 'config.json'}: block_out_channels missing or empty")
        config.vae_scale_factor = 2 ** (len(blocks) - 1)

    def create_pipeline_stages(self) -> None:
        self.add_standard_t2i_stages()

    def latent_channels(self) -> int:
        return int(self.get_module("transformer").config.in_channels) // 4


EntryClass = FluxPipeline

register_configs(
    FluxSamplingParams,
    FluxPipelineConfig,
    hf_model_paths=["black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"],
    model_detectors=[lambda name: "flux" in name.lower()],
)
