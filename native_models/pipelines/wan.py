"""Wan 2.1 text-to-video: the family's config, sampling defaults and pipeline (mirrors Diffusers' WanPipeline).

Wan facts encoded here (all through `PipelineConfig` callbacks and `TextEncoderSpec` options; the stages are the
standard ones):
- one UMT5 encoder: the prompt is cleaned (ftfy when installed, HTML unescaped twice, whitespace collapsed),
  tokenized to `max_sequence_length` with its padding mask given to the encoder, and the embeddings past each
  prompt's token count are zeroed; no pooled embedding, no guidance embedding;
- latents are 5D (B, 16, T, h, w) with T = (frames - 1) // 4 + 1, drawn and stepped in float32 whatever the model
  dtype; the DiT gets `latents.to(model dtype)` (the DiT patchifies internally: no packing here);
- timesteps reach the DiT as the scheduler's int64 values (0..1000), unscaled;
- true CFG with a negative prompt is WanPipeline's `guidance_scale`: uncond + s * (cond - uncond);
- the multistep UniPC scheduler (flow prediction) takes no sigmas and no shift from the pipeline;
- decoding denormalises per channel, `latents / (1 / std) + mean`, with the reciprocal taken in the VAE dtype,
  after casting the float32 latents to that dtype.

Wan 2.2 A14B (two experts; `boundary_ratio` and `transformer_2` in model_index.json): `transformer` denoises the
steps whose timestep t >= boundary_ratio * num_train_timesteps (the scheduler config's), `transformer_2` the others,
each with its CFG scale (`true_cfg_scale`, and `true_cfg_scale_2`, WanPipeline's `guidance_scale_2`, which defaults
to the first); whether CFG runs at all follows the first scale alone, as in WanPipeline. The expert of every step is
recorded as `denoise/expert` (config callbacks, DenoisingStage).
"""

from __future__ import annotations

import html
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import regex
import torch

from native_models.configs import PipelineConfig, SamplingParams, TextEncoderSpec
from native_models.errors import CheckpointError, RequestError
from native_models.loader import read_json
from native_models.models.autoencoder_kl_wan import AutoencoderKLWanConfig
from native_models.pipeline import ComposedPipeline
from native_models.registry import register_configs
from native_models.req import Req

# WanPipeline runs ftfy.fix_text only where ftfy is importable; so does the native side (same machine, same answer).
_FTFY = importlib.util.find_spec("ftfy") is not None


def clean_wan_prompt(text: str) -> str:
    """WanPipeline's prompt_clean: ftfy (if installed), HTML entities unescaped twice, whitespace runs -> one space."""
    if _FTFY:
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()  # the `regex` module, as Diffusers: its \s is Unicode White_Space


WAN_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)


@dataclass
class WanSamplingParams(SamplingParams):
    """WanPipeline's defaults: 81 frames at 480x832, 50 steps, CFG 5.0 against the negative prompt of Diffusers'
    WanPipeline example (Wan's own sampling negative prompt, in English), 512 UMT5 tokens."""

    prompt: str = "a cat walks on the grass, realistic"
    negative_prompt: str | None = ""  # what WanPipeline encodes for None; the checkpoint default is below

    @classmethod
    def for_checkpoint(cls, checkpoint: Path) -> SamplingParams:
        """A Wan checkpoint run as a user would (`run --model`): CFG against WAN_NEGATIVE_PROMPT. The class default
        stays "" because a request without a negative prompt falls back to it on the native side, where
        WanPipeline encodes "" for None."""
        return cls(negative_prompt=WAN_NEGATIVE_PROMPT)
    num_inference_steps: int = 50
    height: int = 480
    width: int = 832
    num_frames: int = 81
    guidance_scale: float = 5.0  # no guidance embedding in Wan; kept equal to the CFG scale for clarity
    true_cfg_scale: float = 5.0
    true_cfg_scale_2: float | None = None  # two experts: the low-noise expert's scale (None: `true_cfg_scale`)
    max_sequence_length: int = 512


@dataclass
class WanPipelineConfig(PipelineConfig):
    text_encoders: tuple[TextEncoderSpec, ...] = field(
        default_factory=lambda: (
            TextEncoderSpec("text_encoder", "tokenizer", "last_hidden_state", "prompt_embeds",
                            attention_mask=True, zero_padding=True),
        )
    )
    # set from the checkpoint's configs when the pipeline loads (WanPipeline.configure)
    vae_scale_factor_spatial: int = 8
    vae_scale_factor_temporal: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    boundary_ratio: float | None = None  # two experts (Wan 2.2 A14B): model_index.json's boundary_ratio
    num_train_timesteps: int = 1000  # the scheduler config's; the boundary timestep is boundary_ratio times it

    def check_request(self, batch: Req) -> None:
        """Refuse what WanPipeline would silently round: frames not 4k + 1, sizes the VAE x patch do not divide;
        and a second CFG scale without a second expert (WanPipeline raises too)."""
        scale_2 = batch.true_cfg_scale_2
        if scale_2 is not None:
            if self.boundary_ratio is None:
                raise RequestError(f"true_cfg_scale_2={scale_2!r} needs a two-expert checkpoint (boundary_ratio set)")
            if isinstance(scale_2, bool) or not isinstance(scale_2, int | float) or not math.isfinite(scale_2):
                raise RequestError(f"true_cfg_scale_2 must be a finite number, got {scale_2!r}")
        temporal = self.vae_scale_factor_temporal
        if batch.num_frames < 1 or (batch.num_frames - 1) % temporal:
            raise RequestError(f"Wan needs frames = {temporal}k + 1 (1, 5, 9, ...), got {batch.num_frames}")
        for name, patch in (("height", self.patch_size[1]), ("width", self.patch_size[2])):
            multiple = self.vae_scale_factor_spatial * patch
            value = getattr(batch, name)
            if value % multiple:
                raise RequestError(f"{name} {value} is not divisible by {multiple} (VAE factor x DiT patch)")
        latent_frames = (batch.num_frames - 1) // temporal + 1
        if latent_frames % self.patch_size[0]:
            raise RequestError(
                f"{latent_frames} latent frames ({batch.num_frames} frames) do not divide by the DiT's temporal "
                f"patch {self.patch_size[0]}"
            )

    # ---- text encoding ----
    def clean_prompt(self, text: str) -> str:
        return clean_wan_prompt(text)

    # ---- latents ----
    def latent_dtype(self, batch: Req) -> torch.dtype:
        return torch.float32  # WanPipeline.prepare_latents draws float32 and the loop keeps it

    def prepare_latent_shape(self, batch: Req, vae_scale_factor: int, latent_channels: int) -> tuple[int, ...]:
        latent_frames = (batch.num_frames - 1) // self.vae_scale_factor_temporal + 1
        return (batch.batch_size, latent_channels, latent_frames, batch.height // vae_scale_factor,
                batch.width // vae_scale_factor)

    # ---- per-step DiT conditioning ----
    def prepare_pos_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        assert batch.prompt_embeds is not None  # guaranteed by DenoisingStage.reads
        return {"encoder_hidden_states": batch.prompt_embeds[0]}

    def prepare_neg_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        assert batch.negative_prompt_embeds is not None  # checked by DenoisingStage.prepare
        return {"encoder_hidden_states": batch.negative_prompt_embeds[0]}

    def prepare_timestep(self, t: torch.Tensor, batch: Req) -> torch.Tensor:
        return t.expand(batch.batch_size)  # the scheduler's int64 timestep, uncast and unscaled, as WanPipeline

    # ---- experts ----
    @property
    def boundary_timestep(self) -> float | None:
        """boundary_ratio * num_train_timesteps as the Python float WanPipeline compares timesteps with."""
        return None if self.boundary_ratio is None else self.boundary_ratio * self.num_train_timesteps

    def select_expert(self, t: torch.Tensor, batch: Req) -> int:
        """0 (`transformer`, high noise) while `t >= boundary`, then 1 (`transformer_2`): WanPipeline's test,
        made with the same tensor-vs-float comparison (so its promotion and rounding are the same too)."""
        boundary = self.boundary_timestep
        return 0 if boundary is None or bool(t >= boundary) else 1

    def expert_cfg_scale(self, expert: int, batch: Req) -> float:
        if expert == 1 and batch.true_cfg_scale_2 is not None:
            return batch.true_cfg_scale_2
        return batch.true_cfg_scale

    # ---- decoding ----
    def post_denoising_loop(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        return latents.to(batch.dtype)  # float32 latents -> the VAE's dtype (every component loads in batch.dtype)

    def get_decode_scale_and_shift(self, vae: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 / std, mean) per channel as (1, C, 1, 1, 1) tensors in the VAE's dtype; the reciprocal is taken in
        that dtype, as WanPipeline does, so bf16 rounds the same way."""
        weight = next(vae.parameters())
        channels = len(vae.latents_mean)
        mean = torch.tensor(vae.latents_mean).view(1, channels, 1, 1, 1).to(weight.device, weight.dtype)
        inverse_std = 1.0 / torch.tensor(vae.latents_std).view(1, channels, 1, 1, 1).to(weight.device, weight.dtype)
        return inverse_std, mean


class WanPipeline(ComposedPipeline):
    pipeline_name = "WanPipeline"
    _required_config_modules = ("text_encoder", "tokenizer", "transformer", "vae", "scheduler")
    _optional_config_modules = ("transformer_2",)
    _parallel_modules = ("transformer", "transformer_2")
    # text-to-video decodes only: the VAE's encoder (53.6 M parameters at Wan 2.1 size) is not built
    _native_classes: ClassVar[dict[str, str]] = {
        "vae": "native_models.models.autoencoder_kl_wan:AutoencoderKLWanDecoder"}

    @classmethod
    def configure(cls, config: PipelineConfig, checkpoint: Path) -> None:
        if not isinstance(config, WanPipelineConfig):
            raise TypeError(f"{cls.__name__} needs a WanPipelineConfig, got {type(config).__name__}")
        index_file = checkpoint / "model_index.json"
        index = read_json(index_file)
        if index.get("expand_timesteps"):
            raise CheckpointError(
                f"{index_file}: expand_timesteps={index.get('expand_timesteps')!r} is Wan 2.2 TI2V 5B (per-token "
                "timesteps), which is not implemented"
            )
        cls.configure_experts(config, checkpoint, index)
        vae_file = checkpoint / "vae" / "config.json"
        try:
            vae = AutoencoderKLWanConfig.from_dict(read_json(vae_file))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{vae_file}: {exc}") from None
        config.vae_scale_factor_spatial = vae.spatial_factor
        config.vae_scale_factor_temporal = vae.temporal_factor
        patch = read_json(checkpoint / "transformer" / "config.json").get("patch_size", [1, 2, 2])
        if not (isinstance(patch, list) and len(patch) == 3 and all(isinstance(p, int) and p > 0 for p in patch)):
            raise CheckpointError(f"{checkpoint / 'transformer' / 'config.json'}: patch_size {patch!r} is not 3 ints")
        config.patch_size = (patch[0], patch[1], patch[2])

    @classmethod
    def configure_experts(cls, config: WanPipelineConfig, checkpoint: Path, index: dict[str, Any]) -> None:
        """boundary_ratio (model_index.json) and num_train_timesteps (scheduler config) of a two-expert checkpoint;
        it must name `transformer_2` (WanPipeline would call a missing one at the first low-noise step)."""
        ratio = index.get("boundary_ratio")
        if ratio is None:
            config.boundary_ratio = None
            return
        index_file = checkpoint / "model_index.json"
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio):
            raise CheckpointError(f"{index_file}: boundary_ratio must be a number, got {ratio!r}")
        transformer_2 = index.get("transformer_2")
        if not (isinstance(transformer_2, list) and len(transformer_2) == 2 and all(transformer_2)):
            raise CheckpointError(f"{index_file}: boundary_ratio={ratio} needs a transformer_2 component, "
                                  f"got {transformer_2!r}")
        steps = read_json(checkpoint / "scheduler" / "scheduler_config.json").get("num_train_timesteps", 1000)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise CheckpointError(f"{checkpoint / 'scheduler' / 'scheduler_config.json'}: num_train_timesteps "
                                  f"{steps!r} is not a positive integer")
        config.boundary_ratio = float(ratio)
        config.num_train_timesteps = steps

    def optional_modules(self, components: dict[str, tuple[str, str]]) -> list[str]:
        """transformer_2 only with a boundary: without one WanPipeline never calls it, so it is not loaded."""
        assert isinstance(self.config, WanPipelineConfig)  # checked by configure
        names = super().optional_modules(components)
        return names if self.config.boundary_ratio is not None else [n for n in names if n != "transformer_2"]

    def create_pipeline_stages(self) -> None:
        self.add_standard_t2i_stages()

    def vae_scale_factor(self) -> int:
        assert isinstance(self.config, WanPipelineConfig)  # checked by configure
        return self.config.vae_scale_factor_spatial


EntryClass = WanPipeline



def is_wan_image_to_video(name: str) -> bool:
    """A pipeline class name or path of Wan image-to-video (its own family: pipelines/wan_i2v.py)."""
    lowered = name.lower()
    return "imagetovideo" in lowered or "i2v" in lowered


register_configs(
    WanSamplingParams,
    WanPipelineConfig,
    hf_model_paths=["Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers",
                    "Wan-AI/Wan2.2-T2V-A14B-Diffusers"],
    # "wan" also matches WanImageToVideoPipeline, which this module (imported first) must leave to wan_i2v
    model_detectors=[lambda name: "wan" in name.lower() and not is_wan_image_to_video(name)],
)
