"""`PipelineConfig` (static model facts + per-step callbacks) and `SamplingParams` (request defaults).

A model family subclasses both. The standard stages never branch on the model: everything model-specific
(which encoder output is the embedding, how latents are packed, what the DiT's conditioning kwargs are called,
how timesteps are scaled, the decode scale and shift) is a method here, so a new family is a config plus, at
most, one model-specific stage.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from native_models.req import Req


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a pipeline: its component names, token budget, and which output is used."""

    encoder: str  # component name in model_index.json, e.g. "text_encoder_2"
    tokenizer: str  # e.g. "tokenizer_2"
    output: str  # "pooler_output" or "last_hidden_state"
    trace_field: str  # canonical trace name of the positive embedding, e.g. "prompt_embeds"
    max_length: int | None = None  # fixed token budget; None: see below
    length_from_tokenizer: bool = False  # True: the tokenizer's model_max_length (CLIP: 77); else the request's
    attention_mask: bool = False  # give the encoder the tokenizer's padding mask (Wan's UMT5; FLUX's T5 gets none)
    zero_padding: bool = False  # zero the embeddings past each prompt's token count (Wan), after the dtype cast


@dataclass
class SamplingParams:
    """Defaults of a generation request for one model family; a caller overrides what it sets."""

    prompt: str = "a photo of a cat"
    negative_prompt: str | None = None
    seed: int = 0
    num_inference_steps: int = 28
    height: int = 1024
    width: int = 1024
    guidance_scale: float = 3.5
    true_cfg_scale: float = 1.0
    max_sequence_length: int = 512
    num_frames: int = 1  # video families (Wan: 4k + 1); image families ignore it

    @classmethod
    def for_checkpoint(cls, checkpoint: Path) -> SamplingParams:
        """The defaults for one checkpoint of the family, read from its config files when variants of one
        pipeline class differ (FLUX.1-schnell against FLUX.1-dev); default: the class's own defaults."""
        return cls()

    def updated(self, **overrides: Any) -> SamplingParams:
        """A copy with the given non-None fields replaced (unknown names raise, so typos cannot pass silently)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(unknown)}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return type(self)(**values)


@dataclass
class PipelineConfig:
    """Static facts and callbacks the standard stages consult. Defaults describe an unpacked latent DiT."""

    text_encoders: tuple[TextEncoderSpec, ...] = ()
    timestep_divisor: float = 1.0  # scheduler timesteps are divided by this before the DiT sees them

    def check_request(self, batch: Req) -> None:
        """Reject a request this model cannot run (raise RequestError naming the value); default: accept."""

    # ---- text encoding ----
    def clean_prompt(self, text: str) -> str:
        """The prompt as the family's tokenizer receives it (Wan cleans it first); default: unchanged."""
        return text

    def postprocess_text(self, spec: TextEncoderSpec, outputs: Any) -> torch.Tensor:
        """Pick the embedding a pipeline uses from an encoder's outputs."""
        return getattr(outputs, spec.output)

    # ---- latents ----
    def latent_dtype(self, batch: Req) -> torch.dtype:
        """dtype of the initial noise and of the latents the scheduler steps (Wan: float32 whatever the model's)."""
        return batch.dtype

    def prepare_latent_shape(self, batch: Req, vae_scale_factor: int, latent_channels: int) -> tuple[int, ...]:
        """Spatial shape (B, C, h, w) of the initial noise."""
        return (batch.batch_size, latent_channels, batch.height // vae_scale_factor, batch.width // vae_scale_factor)

    def pack_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Spatial latents -> the DiT's input layout (identity unless the DiT packs patches)."""
        return latents

    def unpack_latents(self, latents: torch.Tensor, raw_shape: tuple[int, ...]) -> torch.Tensor:
        """The DiT's layout -> canonical spatial (B, C, h, w)."""
        return latents.reshape(raw_shape)

    # ---- timesteps ----
    def prepare_sigmas(self, batch: Req) -> list[float] | None:
        """Custom sigma schedule handed to the scheduler, or None for the scheduler's own."""
        return None

    def compute_mu(self, batch: Req, scheduler: Any) -> float | None:
        """Resolution-dependent shift, for schedulers that use one."""
        return None

    # ---- per-step DiT conditioning ----
    def prepare_pos_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        raise NotImplementedError

    def prepare_neg_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        raise NotImplementedError

    def prepare_rotary_kwargs(self, batch: Req) -> dict[str, Any]:
        """Rotary position inputs (ids or frequencies) of the DiT; computed once per request."""
        return {}

    def prepare_model_input(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """The DiT's `hidden_states` at a step: the latents in the model dtype (a no-op unless `latent_dtype`
        differs from it)."""
        return latents.to(batch.dtype)

    def prepare_timestep(self, t: torch.Tensor, batch: Req) -> torch.Tensor:
        """The timestep tensor (B,) the DiT receives at scheduler timestep `t` (cast first, then scaled)."""
        return t.expand(batch.batch_size).to(batch.dtype) / self.timestep_divisor

    def prepare_guidance(self, batch: Req) -> torch.Tensor | None:
        """Guidance-embedding input of guidance-distilled DiTs, else None."""
        return None

    def combine_cfg(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance: move from the unconditional towards the conditional prediction."""
        return uncond + scale * (cond - uncond)

    # ---- decoding ----
    def get_decode_scale_and_shift(self, vae: Any) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Latents are divided by scale then shifted before decoding (floats, or per-channel tensors)."""
        return float(vae.scaling_factor), float(vae.shift_factor or 0.0)

    def post_denoising_loop(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """Latents after the loop -> spatial latents for the VAE."""
        assert batch.raw_latent_shape is not None  # guaranteed by DecodingStage.reads
        return self.unpack_latents(latents, batch.raw_latent_shape)

    def post_decoding(self, image: torch.Tensor, batch: Req) -> torch.Tensor:
        """VAE output in about [-1, 1] -> frames in [0, 1]."""
        return (image / 2 + 0.5).clamp(0, 1)
