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
    output: str  # "pooler_output", "last_hidden_state" or "hidden_states" (then `hidden_state` picks one)
    trace_field: str  # canonical trace name of the positive embedding, e.g. "prompt_embeds"
    max_length: int | None = None  # fixed token budget; None: see below
    length_from_tokenizer: bool = False  # True: the tokenizer's model_max_length (CLIP: 77); else the request's
    attention_mask: bool = False  # give the encoder the tokenizer's padding mask (Wan's UMT5; FLUX's T5 gets none)
    zero_padding: bool = False  # zero the embeddings past each prompt's token count (Wan), after the dtype cast
    # --- decoder-only chat LLMs (Qwen-Image's Qwen2.5-VL, Z-Image's Qwen3): ---
    template: str | None = None  # `template.format(prompt)` is tokenized (a system prompt around the user's)
    padding: str = "max_length"  # or "longest": pad to the call's longest prompt (each cut to the budget first)
    hidden_state: int | None = None  # with output "hidden_states": transformers' `hidden_states[hidden_state]`
    # keep each prompt's own tokens (where the padding mask is 1, whichever side the padding is on), drop the
    # first `drop_tokens` of them (the template's), and right-pad every prompt with zeros to the longest: the
    # stage then also writes the 1/0 mask of the kept tokens (`Req.prompt_masks`), recorded as `mask_field`
    keep_real_tokens: bool = False
    drop_tokens: int = 0
    mask_field: str | None = None  # canonical trace name of that mask, e.g. "prompt_embeds_mask"
    trim_to_request: bool = False  # cut the kept tokens (and mask) to the request's max_sequence_length


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
    # image-conditioned families: which entry of the image encoder's hidden states the DiT gets (Wan: penultimate)
    image_hidden_state: int = -2

    def check_request(self, batch: Req) -> None:
        """Reject a request this model cannot run (raise RequestError naming the value); default: accept."""

    # ---- text encoding ----
    def clean_prompt(self, text: str) -> str:
        """The prompt as the family's tokenizer receives it (Wan cleans it first); default: unchanged."""
        return text

    def postprocess_text(self, spec: TextEncoderSpec, outputs: Any) -> torch.Tensor:
        """Pick the embedding a pipeline uses from an encoder's outputs."""
        if spec.output == "hidden_states":
            if spec.hidden_state is None:
                raise ValueError(f"{spec.encoder}: output 'hidden_states' needs a hidden_state index")
            return outputs.hidden_states[spec.hidden_state]
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

    def run_transformer(
        self, transformer: Any, model_input: torch.Tensor, timestep: torch.Tensor, cond_kwargs: dict[str, Any],
        uncond_kwargs: dict[str, Any] | None, shared_kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """The DiT's conditional output and, under true CFG (`uncond_kwargs` given), its unconditional output at
        one step, both in the latents' layout. Default: one call per pass with the keywords `hidden_states` and
        `timestep` (FLUX, Wan, Qwen-Image); a DiT that takes other arguments or batches both passes in one call
        (Z-Image) overrides this."""
        shared = {"hidden_states": model_input, "timestep": timestep, **shared_kwargs}
        cond = transformer(**shared, **cond_kwargs)
        uncond = None if uncond_kwargs is None else transformer(**shared, **uncond_kwargs)
        return cond, uncond

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

    def finish_noise_pred(self, noise_pred: torch.Tensor, batch: Req) -> torch.Tensor:
        """The (guided) prediction as the scheduler steps with it; default: unchanged (Z-Image negates it)."""
        return noise_pred

    # ---- experts (two-transformer families) ----
    def select_expert(self, t: torch.Tensor, batch: Req) -> int:
        """Index of the transformer that denoises at scheduler timestep `t` (0: `transformer`, 1: `transformer_2`)."""
        return 0

    def expert_cfg_scale(self, expert: int, batch: Req) -> float:
        """The CFG scale used with transformer `expert` (default: the request's one scale)."""
        return batch.true_cfg_scale

    # ---- image conditioning (image-to-video families) ----
    def prepare_condition_video(self, image: Any, batch: Req) -> torch.Tensor:
        """The conditioning image as the pixel video the VAE encodes, (1, 3, F, H, W) float32 in [-1, 1]."""
        raise NotImplementedError(f"{type(self).__name__} takes no conditioning image")

    def normalize_condition_latents(self, latents: torch.Tensor, vae: Any, batch: Req) -> torch.Tensor:
        """VAE-encoded conditioning latents -> the DiT's latent space (the inverse of the decode denormalisation)."""
        raise NotImplementedError(f"{type(self).__name__} takes no conditioning image")

    def prepare_condition_mask(self, batch: Req, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """Mask channels telling the DiT which latent frames are given, for latents of `latent_shape`."""
        raise NotImplementedError(f"{type(self).__name__} takes no conditioning image")

    def join_condition(self, mask: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """`Req.condition` from the mask channels and the conditioning latents (recorded apart as latents/mask
        and latents/condition): the mask first, as WanImageToVideoPipeline concatenates them."""
        return torch.cat([mask, latents], dim=1)  # (B, C_mask + C_lat, T, h, w)

    # ---- decoding ----
    def get_decode_scale_and_shift(self, vae: Any) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Latents are divided by scale then shifted before decoding (floats, or per-channel tensors)."""
        return float(vae.scaling_factor), float(vae.shift_factor or 0.0)

    def post_denoising_loop(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """Latents after the loop -> spatial latents for the VAE."""
        assert batch.raw_latent_shape is not None  # guaranteed by DecodingStage.reads
        return self.unpack_latents(latents, batch.raw_latent_shape)

    def vae_output(self, decoded: torch.Tensor, batch: Req) -> torch.Tensor:
        """The VAE's raw output -> the decoded image or video the pipeline keeps (Qwen-Image's video VAE decodes
        one frame: it takes frame 0); default: unchanged. Recorded as `decode/image`."""
        return decoded

    def post_decoding(self, image: torch.Tensor, batch: Req) -> torch.Tensor:
        """VAE output in about [-1, 1] -> frames in [0, 1]."""
        return (image / 2 + 0.5).clamp(0, 1)
