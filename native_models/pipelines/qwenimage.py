"""Qwen-Image text-to-image: the family's config, sampling defaults and pipeline (mirrors Diffusers' QwenImagePipeline).

Modular style: the standard stages (`add_standard_t2i_stages`), with everything Qwen-Image does differently as
configuration. The reference's preprocessing is a sequence of the standard steps, each with its own settings:
encode (one LLM encoder), draw packed noise, build a shifted sigma schedule, denoise with true CFG, decode; none of
them needs to know another's internals, so no model-specific stage is needed. What is Qwen-Image's (diffusers
0.42.1, pipeline_qwenimage.py = P; docs/families/qwenimage.md):
- text: the prompt goes into a fixed system template (P:175, `str.format`), is tokenized to the longest prompt of
  the call (`padding=True`, budget 1024 + 34, P:201) on the tokenizer's own padding side, and run through the
  Qwen2.5-VL text decoder with its padding mask; the pipeline keeps **hidden_states[-1]** (P:209: the final-normed
  last layer; the issue text says the second-to-last, the reference takes the last), each prompt's real tokens
  (where the mask is 1) minus the first 34 (the template's), right-padded with zeros, cut to max_sequence_length
  (P:255-266). The mask of real tokens goes to the DiT, or None when nothing is padded (P:264);
- latents: 2x2 patches packed into tokens of 64 channels as FLUX packs them (P:333), noise drawn in the model dtype;
  `img_shapes` [(1, h/2, w/2)] per image;
- timesteps: sigmas `np.linspace(1, 1/N, N)` shifted by mu from the packed token count (P:598-606), t / 1000 to the
  DiT in the model dtype (P:643);
- true CFG with a negative prompt, norm-preserving: `comb = neg + s (cond - neg)`, rescaled per token to the norm of
  `cond` over its 64 channels (P:668-672), in the model dtype;
- decoding: unpacked to one latent frame (B, 16, 1, h, w) of the video VAE, `z / (1 / std) + mean` per channel with
  the reciprocal taken in the VAE dtype (P:705-713), frame 0 of the decoded video (P:714).
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
from native_models.pipelines.flux import pack_flux_latents, unpack_flux_latents
from native_models.registry import register_configs
from native_models.req import Req

# QwenImagePipeline.prompt_template_encode (P:175) and prompt_template_encode_start_idx (P:176)
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATE_TOKENS = 34
TOKENIZER_MAX_LENGTH = 1024  # QwenImagePipeline.tokenizer_max_length: prompt tokens after the template
MAX_SEQUENCE_LENGTH = 1024  # P:328: check_inputs refuses more


@dataclass
class QwenImageSamplingParams(SamplingParams):
    """QwenImagePipeline's defaults: 1024x1024, 50 steps, true CFG 4.0 (on only with a negative prompt)."""

    prompt: str = "a red fox in the snow"
    num_inference_steps: int = 50
    height: int = 1024
    width: int = 1024
    guidance_scale: float = 1.0  # no guidance embedding in Qwen-Image
    true_cfg_scale: float = 4.0
    max_sequence_length: int = 512


@dataclass
class QwenImagePipelineConfig(PipelineConfig):
    text_encoders: tuple[TextEncoderSpec, ...] = field(
        default_factory=lambda: (
            TextEncoderSpec(
                "text_encoder", "tokenizer", "hidden_states", "prompt_embeds",
                max_length=TOKENIZER_MAX_LENGTH + TEMPLATE_TOKENS, attention_mask=True, template=PROMPT_TEMPLATE,
                padding="longest", hidden_state=-1, keep_real_tokens=True, drop_tokens=TEMPLATE_TOKENS,
                mask_field="prompt_embeds_mask", trim_to_request=True,
            ),
        )
    )  # fmt: skip
    timestep_divisor: float = 1000.0
    vae_scale_factor: int = 8  # set from the VAE's config when the pipeline loads (2 ** len(temperal_downsample))
    shift_terminal: float | None = None  # set from the scheduler's config when the pipeline loads

    def check_request(self, batch: Req) -> None:
        """Refuse what QwenImagePipeline would silently resize (it only warns) or refuses itself."""
        multiple = self.vae_scale_factor * 2
        for name in ("height", "width"):
            value = getattr(batch, name)
            if value % multiple:
                raise RequestError(f"{name} {value} is not divisible by {multiple} (VAE factor x 2x2 packing)")
        if self.shift_terminal and batch.num_inference_steps < 2:
            # linspace(1, 1/N, N) is [1.0] for one step; stretching it to the terminal sigma divides 0 by 0, and
            # Diffusers' scheduler returns NaN sigmas (checked: diffusers 0.42.1)
            raise RequestError(f"{batch.num_inference_steps} step: the scheduler's shift_terminal="
                               f"{self.shift_terminal} needs at least 2 steps (1 gives NaN sigmas in Diffusers)")
        if batch.max_sequence_length > MAX_SEQUENCE_LENGTH:
            raise RequestError(f"max_sequence_length {batch.max_sequence_length} exceeds Qwen-Image's limit of "
                               f"{MAX_SEQUENCE_LENGTH}")

    # ---- latents ----
    def prepare_latent_shape(self, batch: Req, vae_scale_factor: int, latent_channels: int) -> tuple[int, ...]:
        h = 2 * (batch.height // (vae_scale_factor * 2))
        w = 2 * (batch.width // (vae_scale_factor * 2))
        return (batch.batch_size, latent_channels, h, w)

    def pack_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return pack_flux_latents(latents)  # (B, C, h, w) -> (B, h/2 * w/2, 4C), channels (C, dy, dx) as P:333

    def unpack_latents(self, latents: torch.Tensor, raw_shape: tuple[int, ...]) -> torch.Tensor:
        return unpack_flux_latents(latents, raw_shape)

    # ---- timesteps ----
    def prepare_sigmas(self, batch: Req) -> list[float]:
        n = batch.num_inference_steps
        return np.linspace(1.0, 1 / n, n).tolist()  # float64, as P:598 (Z-Image uses float32 torch.linspace)

    def compute_mu(self, batch: Req, scheduler: Any) -> float:
        assert batch.latents is not None
        return scheduler.compute_mu(batch.latents.shape[1])  # packed image tokens (P:599)

    # ---- per-step DiT conditioning ----
    @staticmethod
    def _cond_kwargs(embeds: list[torch.Tensor], masks: list[torch.Tensor | None] | None) -> dict[str, Any]:
        mask = masks[0] if masks else None
        if mask is not None and bool(mask.bool().all()):
            mask = None  # P:264: an all-ones mask is dropped, so the DiT takes its unmasked attention path
        return {"encoder_hidden_states": embeds[0], "encoder_hidden_states_mask": mask}

    def prepare_pos_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        assert batch.prompt_embeds is not None
        return self._cond_kwargs(batch.prompt_embeds, batch.prompt_masks)

    def prepare_neg_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        assert batch.negative_prompt_embeds is not None
        return self._cond_kwargs(batch.negative_prompt_embeds, batch.negative_prompt_masks)

    def prepare_rotary_kwargs(self, batch: Req) -> dict[str, Any]:
        """`img_shapes`: one (frames, rows, cols) grid of packed tokens per image."""
        assert batch.raw_latent_shape is not None
        _, _, h, w = batch.raw_latent_shape
        return {"img_shapes": [[(1, h // 2, w // 2)]] * batch.batch_size}

    def combine_cfg(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """True CFG, then each token's prediction rescaled to the conditional one's norm (over its channels)."""
        combined = uncond + scale * (cond - uncond)  # (B, N, 64)
        cond_norm = torch.norm(cond, dim=-1, keepdim=True)  # (B, N, 1), in the model dtype as P:670
        combined_norm = torch.norm(combined, dim=-1, keepdim=True)
        return combined * (cond_norm / combined_norm)

    # ---- decoding ----
    def post_denoising_loop(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """Packed tokens -> one latent frame (B, C, 1, h, w) in the VAE's dtype (every component loads in it)."""
        return super().post_denoising_loop(latents, batch).unsqueeze(2).to(batch.dtype)

    def get_decode_scale_and_shift(self, vae: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 / std, mean) per channel as (1, C, 1, 1, 1) tensors in the VAE's dtype; the reciprocal is taken in that
        dtype, as P:708-712 does, so bf16 rounds the same way."""
        weight = next(vae.parameters())
        channels = len(vae.latents_mean)
        mean = torch.tensor(vae.latents_mean).view(1, channels, 1, 1, 1).to(weight.device, weight.dtype)
        inverse_std = 1.0 / torch.tensor(vae.latents_std).view(1, channels, 1, 1, 1).to(weight.device, weight.dtype)
        return inverse_std, mean

    def vae_output(self, decoded: torch.Tensor, batch: Req) -> torch.Tensor:
        return decoded[:, :, 0]  # the one decoded frame (B, 3, 1, H, W) -> (B, 3, H, W), as P:714


class QwenImagePipeline(ComposedPipeline):
    pipeline_name = "QwenImagePipeline"
    _required_config_modules = ("text_encoder", "tokenizer", "transformer", "vae", "scheduler")

    @classmethod
    def configure(cls, config: PipelineConfig, checkpoint: Path) -> None:
        if not isinstance(config, QwenImagePipelineConfig):
            raise TypeError(f"QwenImagePipeline needs a QwenImagePipelineConfig, got {type(config).__name__}")
        vae_file = checkpoint / "vae" / "config.json"
        downsample = read_json(vae_file).get("temperal_downsample", [False, True, True])
        if not isinstance(downsample, list) or not all(isinstance(v, bool) for v in downsample):
            raise CheckpointError(f"{vae_file}: temperal_downsample {downsample!r} is not a list of booleans")
        config.vae_scale_factor = 2 ** len(downsample)  # P:170
        terminal = read_json(checkpoint / "scheduler" / "scheduler_config.json").get("shift_terminal")
        config.shift_terminal = float(terminal) if isinstance(terminal, int | float) and terminal else None
        transformer_file = checkpoint / "transformer" / "config.json"
        if read_json(transformer_file).get("guidance_embeds", False):
            raise CheckpointError(f"{transformer_file}: guidance_embeds is true; QwenImagePipeline has no guidance "
                                  "embedding input (only Qwen-Image's undistilled models are implemented)")

    def create_pipeline_stages(self) -> None:
        self.add_standard_t2i_stages()

    def vae_scale_factor(self) -> int:
        assert isinstance(self.config, QwenImagePipelineConfig)  # checked by configure
        return self.config.vae_scale_factor

    def latent_channels(self) -> int:
        return int(self.get_module("transformer").config.in_channels) // 4  # P:585


EntryClass = QwenImagePipeline

register_configs(
    QwenImageSamplingParams,
    QwenImagePipelineConfig,
    hf_model_paths=["Qwen/Qwen-Image"],
    model_detectors=[lambda name: name == "QwenImagePipeline" or "qwen-image" in name.lower()],
)
