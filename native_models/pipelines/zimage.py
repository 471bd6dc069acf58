"""Z-Image text-to-image: the family's config, sampling defaults and pipeline (mirrors Diffusers' ZImagePipeline).

Hybrid style: one model-specific `ZImageBeforeDenoisingStage` does validation, text encoding, latent preparation
and timesteps, then the standard denoising and decoding stages run with Z-Image's callbacks. Why not the standard
stages: ZImagePipeline's preprocessing (diffusers 0.42.1, pipeline_z_image.py = P, lines 168-480;
docs/families/zimage.md) is one recipe whose steps are not the standard ones with other settings:
- each prompt goes through the *tokenizer's* chat template (P:217-227, `apply_chat_template(..., enable_thinking=
  True)`), not a string template, then is padded to `max_sequence_length` with a **boolean** mask (P:229-238);
- the text encoder's **hidden_states[-2]** (P:244: the second-to-last layer, un-normed) is cut per prompt to its
  real tokens (P:249), and what the DiT takes is that *list* of variable-length tensors, one per prompt, not one
  padded tensor per encoder (the standard text stage's contract); the stage keeps the list as a right-padded tensor
  plus its mask (what the trace records and forcing feeds back) and the DiT gets the list;
- the noise is float32 whatever the model dtype and stays unpacked (P:453-462); mu comes from (h/2)(w/2) of that
  grid and the sigmas from float32 `torch.linspace` (P:137, 463-480), not from packed tokens and float64 numpy.
Written as one stage it reads line for line against P:168-480, and the shared text, latent and timestep stages
keep their FLUX/Wan/Qwen-Image contracts untouched.

Denoising (standard stage, Z-Image callbacks): the DiT gets `latents.to(model dtype)` as a list of (C, 1, h, w),
the timestep `(1000 - t) / 1000` (P:510, 0 = noise), and, under CFG, *one* call on the doubled batch (positives,
then negatives, P:521-531); CFG is `pos + s (pos - neg)` per sample in float32 (P:551), on when the scale is > 0 in
Diffusers (the harness maps its true-CFG scale onto it), and the prediction is **negated** before the scheduler
step (P:568). Decoding: `z / scaling_factor + shift_factor` in the VAE's dtype (P:593), FLUX's AutoencoderKL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from native_models.configs import PipelineConfig, SamplingParams, TextEncoderSpec
from native_models.errors import CheckpointError, RequestError
from native_models.loader import read_json
from native_models.pipeline import ComposedPipeline
from native_models.registry import register_configs
from native_models.req import Req
from native_models.stages.base import (
    FLOAT_LIST,
    GENERATOR,
    POSITIVE_INT,
    SHAPE,
    STRING_LIST,
    TENSOR,
    TENSOR_LIST,
    PipelineStage,
)
from native_models.stages.denoising import DenoisingStage
from native_models.stages.latent_preparation import draw_initial_noise
from native_models.stages.text_encoding import keep_real_tokens, run_text_encoder

CHAT_TEMPLATE_KWARGS = {"add_generation_prompt": True, "enable_thinking": True}  # P:221-226


@dataclass
class ZImageSamplingParams(SamplingParams):
    """ZImagePipeline's defaults: 1024x1024, 50 steps, CFG 5.0 against the empty negative prompt."""

    prompt: str = "a red fox in the snow"
    negative_prompt: str | None = ""
    num_inference_steps: int = 50
    height: int = 1024
    width: int = 1024
    guidance_scale: float = 5.0  # no guidance embedding in Z-Image; kept equal to the CFG scale for clarity
    true_cfg_scale: float = 5.0
    max_sequence_length: int = 512


@dataclass
class ZImagePipelineConfig(PipelineConfig):
    # Read by ZImageBeforeDenoisingStage (hidden state, mask) and by forcing (trace fields of the embeddings and
    # their mask); `template`, `padding` and `drop_tokens` are not Z-Image's (the chat template is the tokenizer's).
    text_encoders: tuple[TextEncoderSpec, ...] = field(
        default_factory=lambda: (
            TextEncoderSpec("text_encoder", "tokenizer", "hidden_states", "prompt_embeds", attention_mask=True,
                            hidden_state=-2, keep_real_tokens=True, mask_field="prompt_embeds_mask"),
        )
    )
    vae_scale_factor: int = 8  # set from the VAE's config when the pipeline loads (2 ** (len(block_out) - 1))

    def check_request(self, batch: Req) -> None:
        """ZImagePipeline refuses sizes its VAE x 2x2 patches do not divide (P:402-412); so does this."""
        multiple = self.vae_scale_factor * 2
        for name in ("height", "width"):
            value = getattr(batch, name)
            if value % multiple:
                raise RequestError(f"{name} {value} is not divisible by {multiple} (VAE factor x 2x2 patches)")

    # ---- latents ----
    def latent_dtype(self, batch: Req) -> torch.dtype:
        return torch.float32  # P:459 draws float32 noise and the loop keeps float32 latents (asserted, P:572)

    # ---- per-step DiT conditioning ----
    @staticmethod
    def _caption_list(embeds: list[torch.Tensor], masks: list[torch.Tensor | None] | None) -> dict[str, Any]:
        """One (L_i, D) tensor of real-token states per prompt: what ZImagePipeline hands the DiT (P:249)."""
        padded, mask = embeds[0], (masks[0] if masks else None)
        if mask is None:
            return {"cap_feats": list(padded.unbind(0))}
        return {"cap_feats": [states[keep.bool()] for states, keep in zip(padded, mask, strict=True)]}

    def prepare_pos_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        assert batch.prompt_embeds is not None
        return self._caption_list(batch.prompt_embeds, batch.prompt_masks)

    def prepare_neg_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        assert batch.negative_prompt_embeds is not None
        return self._caption_list(batch.negative_prompt_embeds, batch.negative_prompt_masks)

    def prepare_timestep(self, t: torch.Tensor, batch: Req) -> torch.Tensor:
        return (1000 - t.expand(batch.batch_size)) / 1000  # float32, 0 = pure noise (P:510-511)

    def run_transformer(
        self, transformer: Any, model_input: torch.Tensor, timestep: torch.Tensor, cond_kwargs: dict[str, Any],
        uncond_kwargs: dict[str, Any] | None, shared_kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """One DiT call, on the doubled batch under CFG (positives first, P:521-531); outputs (B, C, h, w)."""
        images = list(model_input.unsqueeze(2).unbind(0))  # (C, 1, h, w) per sample
        count = len(images)
        if uncond_kwargs is None:
            outputs = transformer(images, timestep, cond_kwargs["cap_feats"], **shared_kwargs)
        else:
            outputs = transformer(images + images, timestep.repeat(2),
                                  cond_kwargs["cap_feats"] + uncond_kwargs["cap_feats"], **shared_kwargs)
        cond = torch.stack(outputs[:count]).squeeze(2)
        uncond = torch.stack(outputs[count:]).squeeze(2) if uncond_kwargs is not None else None
        return cond, uncond

    def combine_cfg(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        positive, negative = cond.float(), uncond.float()
        return positive + scale * (positive - negative)  # P:551: away from the negative, per sample in float32

    def finish_noise_pred(self, noise_pred: torch.Tensor, batch: Req) -> torch.Tensor:
        return -noise_pred.float()  # P:568: the model predicts the negated flow velocity

    # ---- decoding ----
    def post_denoising_loop(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        return latents.to(batch.dtype)  # float32 latents -> the VAE's dtype (P:592)


class ZImageBeforeDenoisingStage(PipelineStage):
    """Everything ZImagePipeline does before its denoising loop, in its order: validation, prompt encoding (prompts,
    then negatives under CFG), the initial noise, the sigma schedule. Records `encode/*`, `latents/initial` and
    `timesteps/*` as the standard stages would."""

    trace_stage = "encode"
    reads = {"prompt": STRING_LIST, "height": POSITIVE_INT, "width": POSITIVE_INT,
             "num_inference_steps": POSITIVE_INT}  # fmt: skip
    writes = {"prompt_embeds": TENSOR_LIST, "latents": TENSOR, "raw_latent_shape": SHAPE, "generator": GENERATOR,
              "timesteps": TENSOR, "sigmas": FLOAT_LIST}  # fmt: skip

    def __init__(self, tokenizer: Any, text_encoder: torch.nn.Module, scheduler: Any, config: ZImagePipelineConfig,
                 vae_scale_factor: int, latent_channels: int) -> None:  # fmt: skip
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.scheduler = scheduler
        self.config = config
        self.spec = config.text_encoders[0]
        self.chat_template_kwargs = dict(CHAT_TEMPLATE_KWARGS)  # instance attribute: how prompts are wrapped
        self.vae_scale_factor = vae_scale_factor
        self.latent_channels = latent_channels

    # ---- validation ----
    def validate(self, batch: Req) -> None:
        self.config.check_request(batch)
        if batch.do_true_cfg and (batch.negative_prompt is None or len(batch.negative_prompt) != batch.batch_size):
            raise RequestError(f"Z-Image CFG needs one negative prompt per prompt ({batch.batch_size})")

    # ---- text ----
    def encode(self, prompts: list[str], batch: Req) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt states (B, L, D), right-padded with zeros, and their real-token mask (B, L) (P:209-251)."""
        spec = self.spec
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                    **self.chat_template_kwargs) for prompt in prompts]  # fmt: skip
        tokens = self.tokenizer(texts, padding="max_length", max_length=batch.max_sequence_length, truncation=True,
                                return_tensors="pt")  # fmt: skip
        ids = tokens.input_ids.to(batch.device)
        mask = tokens.attention_mask.to(batch.device).bool()  # P:238: a boolean mask
        states = run_text_encoder(spec, self.text_encoder, ids, mask)
        if not isinstance(states, torch.Tensor):
            states = self.config.postprocess_text(spec, states)
        return keep_real_tokens(states, mask, spec.drop_tokens)

    def _encode_and_record(self, prompts: list[str], batch: Req, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask = self.encode(prompts, batch)
        batch.record("encode", f"{prefix}{self.spec.trace_field}", embeds)
        if self.spec.mask_field is not None:
            batch.record("encode", f"{prefix}{self.spec.mask_field}", mask)
        return embeds, mask

    # ---- latents and timesteps ----
    def latent_grid(self, batch: Req) -> tuple[int, int]:
        factor = self.vae_scale_factor
        return 2 * (batch.height // (factor * 2)), 2 * (batch.width // (factor * 2))  # P:262-263

    def prepare_latents(self, batch: Req) -> None:
        h, w = self.latent_grid(batch)
        shape = (batch.batch_size, self.latent_channels, h, w)
        noise, generator = draw_initial_noise(shape, batch.seed, self.config.latent_dtype(batch), batch.device)
        batch.record("latents", "initial", noise)
        batch.latents, batch.raw_latent_shape, batch.generator = noise, tuple(noise.shape), generator

    def prepare_timesteps(self, batch: Req) -> None:
        n = batch.num_inference_steps
        h, w = self.latent_grid(batch)
        sigmas = torch.linspace(1.0, 1 / n, n).tolist()  # float32 values (P:137)
        mu = self.scheduler.compute_mu((h // 2) * (w // 2))  # P:471-477 (a static-shift scheduler ignores it)
        self.scheduler.set_timesteps(n, mu=mu, sigmas=sigmas, device=batch.device)
        batch.sigmas = [float(s) for s in self.scheduler.sigmas[:-1].tolist()]
        batch.timesteps = self.scheduler.timesteps
        batch.record("timesteps", "sigmas", self.scheduler.sigmas)
        batch.record("timesteps", "timesteps", self.scheduler.timesteps)

    def forward(self, batch: Req) -> Req:
        self.validate(batch)
        embeds, mask = self._encode_and_record(batch.prompt, batch, "")
        batch.prompt_embeds, batch.prompt_masks = [embeds], [mask]
        if batch.do_true_cfg:
            assert batch.negative_prompt is not None  # checked by validate
            embeds, mask = self._encode_and_record(batch.negative_prompt, batch, "negative_")
            batch.negative_prompt_embeds, batch.negative_prompt_masks = [embeds], [mask]
        self.prepare_latents(batch)
        self.prepare_timesteps(batch)
        return batch


class ZImagePipeline(ComposedPipeline):
    pipeline_name = "ZImagePipeline"
    _required_config_modules = ("text_encoder", "tokenizer", "transformer", "vae", "scheduler")

    @classmethod
    def configure(cls, config: PipelineConfig, checkpoint: Path) -> None:
        if not isinstance(config, ZImagePipelineConfig):
            raise TypeError(f"ZImagePipeline needs a ZImagePipelineConfig, got {type(config).__name__}")
        vae_file = checkpoint / "vae" / "config.json"
        blocks = read_json(vae_file).get("block_out_channels")
        if not isinstance(blocks, list) or not blocks:
            raise CheckpointError(f"{vae_file}: block_out_channels missing or empty")
        config.vae_scale_factor = 2 ** (len(blocks) - 1)  # P:163-165

    def create_pipeline_stages(self) -> None:
        assert isinstance(self.config, ZImagePipelineConfig)  # checked by configure
        transformer, scheduler = self.get_module("transformer"), self.get_module("scheduler")
        self.add_stage("before_denoising", ZImageBeforeDenoisingStage(
            self.get_module("tokenizer"), self.get_module("text_encoder"), scheduler, self.config,
            self.vae_scale_factor(), int(transformer.config.in_channels),
        ))  # fmt: skip
        self.add_stage("denoising", DenoisingStage(transformer, scheduler, self.config))
        self.add_decoding_stage()

    def vae_scale_factor(self) -> int:
        assert isinstance(self.config, ZImagePipelineConfig)
        return self.config.vae_scale_factor


EntryClass = ZImagePipeline

register_configs(
    ZImageSamplingParams,
    ZImagePipelineConfig,
    hf_model_paths=["Tongyi-MAI/Z-Image-Turbo"],
    model_detectors=[lambda name: name == "ZImagePipeline" or "z-image" in name.lower()],
)
