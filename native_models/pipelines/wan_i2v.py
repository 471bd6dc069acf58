"""Wan image-to-video: the family's config, sampling defaults and pipeline (mirrors Diffusers'
WanImageToVideoPipeline, diffusers 0.42.1 pipelines/wan/pipeline_wan_i2v.py).

Everything of text-to-video Wan holds (pipelines/wan.py: prompt cleaning, UMT5, float32 latents, UniPC, true CFG,
decoding, Wan 2.2's two experts). On top of it, the conditioning image (a PIL RGB image, `Req.image`):
- Wan 2.1 I2V only (the DiT has `image_dim`): CLIP-encoded once (native_models/clip_image_processor.py, then the
  vision tower's penultimate hidden state, `hidden_states[-2]`), repeated over the batch, cast to the model dtype:
  `image_embeds` (B, 257, 1280), given to both CFG passes as `encoder_hidden_states_image`;
- resized with PIL's Lanczos filter to (height, width) (VaeImageProcessor: no RGB conversion, no crop), scaled to
  [-1, 1] in float32, followed by frames - 1 zero frames, encoded by the VAE in its dtype, the posterior *mean*
  taken (`retrieve_latents(..., sample_mode="argmax")`: no random numbers), repeated over the batch, cast to
  float32 and normalised `(z - mean) * (1 / std)` (reciprocal in float32);
- mask channels (B, 4, T, h, w): 1 on every channel of latent frame 0, 0 elsewhere (WanPipeline builds them by
  repeating the first video frame's mask 4 times and folding frames into channels);
- the DiT input at every step is cat([latents, mask, condition latents], dim=1) cast to the model dtype
  (16 + 4 + 16 = 36 channels for Wan 2.1 I2V).
RNG: the initial noise is drawn first, exactly as for text-to-video; nothing else draws.

Registered as its own registry family, `wan_i2v` (its config class differs from text-to-video's, and the gate checks
each registry entry's cases against it): cases in references/wan/cases.py, tests in cases/test_wan_i2v.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from native_models.configs import PipelineConfig
from native_models.errors import CheckpointError, RequestError
from native_models.loader import read_json, read_model_index
from native_models.pipelines.wan import WanPipeline, WanPipelineConfig, WanSamplingParams, is_wan_image_to_video
from native_models.registry import register_configs
from native_models.req import Req

# Diffusers' WanAttnProcessor splits the DiT's cross-attention context as "everything but the last 512 tokens is
# the image": with an image path, any other text length would mix image and text tokens on the reference side.
IMAGE_PATH_TEXT_LENGTH = 512


@dataclass
class WanI2VSamplingParams(WanSamplingParams):
    """WanImageToVideoPipeline's defaults (the same as WanPipeline's) plus the conditioning image."""

    image: Any = None  # a PIL RGB image; the request layer loads and validates it


@dataclass
class WanI2VPipelineConfig(WanPipelineConfig):
    image_context: bool = True  # set by configure: the DiT has an image path (Wan 2.1 I2V; not Wan 2.2 A14B I2V)

    def check_request(self, batch: Req) -> None:
        super().check_request(batch)
        if batch.image is None:
            raise RequestError("Wan image-to-video needs a conditioning image")
        mode = getattr(batch.image, "mode", None)
        if mode != "RGB":
            raise RequestError(f"the conditioning image must be an RGB PIL image, got {mode or type(batch.image)}")
        if self.image_context and batch.max_sequence_length != IMAGE_PATH_TEXT_LENGTH:
            raise RequestError(
                f"max_sequence_length {batch.max_sequence_length}: Wan 2.1 I2V needs {IMAGE_PATH_TEXT_LENGTH} "
                "(Diffusers splits the DiT's image and text context assuming 512 text tokens)"
            )

    # ---- per-step DiT input ----
    def prepare_model_input(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        assert batch.condition is not None  # guaranteed by the denoising stage's extra reads
        return torch.cat([latents, batch.condition], dim=1).to(batch.dtype)  # (B, 16 + 4 + 16, T, h, w)

    def image_kwargs(self, batch: Req) -> dict[str, Any]:
        if not self.image_context:
            return {}
        assert batch.image_embeds is not None  # guaranteed by the denoising stage's extra reads
        return {"encoder_hidden_states_image": batch.image_embeds}

    def prepare_pos_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        return {**super().prepare_pos_cond_kwargs(batch), **self.image_kwargs(batch)}

    def prepare_neg_cond_kwargs(self, batch: Req) -> dict[str, Any]:
        return {**super().prepare_neg_cond_kwargs(batch), **self.image_kwargs(batch)}

    # ---- conditioning latents ----
    def preprocess_condition_frame(self, image: Any, batch: Req) -> torch.Tensor:
        """VaeImageProcessor.preprocess of a PIL image: Lanczos resize to (height, width), /255 in float32,
        2x - 1 -> (1, 3, H, W) float32 in [-1, 1]."""
        import numpy as np
        import PIL.Image

        resized = image.resize((batch.width, batch.height), resample=PIL.Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(np.array(resized)).float() / 255.0  # (H, W, 3), as numpy's float32 division
        return (2.0 * pixels - 1.0).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)

    def prepare_condition_video(self, image: Any, batch: Req) -> torch.Tensor:
        frame = self.preprocess_condition_frame(image, batch).to(batch.device)
        zeros = frame.new_zeros(1, frame.shape[1], batch.num_frames - 1, batch.height, batch.width)
        return torch.cat([frame.unsqueeze(2), zeros], dim=2)  # (1, 3, F, H, W): the first frame, then zeros

    def normalize_condition_latents(self, latents: torch.Tensor, vae: Any, batch: Req) -> torch.Tensor:
        """(z - mean) * (1 / std) per channel in the latents' dtype (float32), as prepare_latents computes it."""
        channels = len(vae.latents_mean)
        mean = torch.tensor(vae.latents_mean).view(1, channels, 1, 1, 1).to(latents.device, latents.dtype)
        inverse_std = 1.0 / torch.tensor(vae.latents_std).view(1, channels, 1, 1, 1).to(latents.device, latents.dtype)
        return (latents - mean) * inverse_std

    def prepare_condition_mask(self, batch: Req, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """(B, f_t, T, h, w) float32: per video frame 1 for the given first frame and 0 for the others, the first
        frame's value repeated f_t times, then consecutive groups of f_t frames folded into channels."""
        b, _, t, h, w = latent_shape
        temporal = self.vae_scale_factor_temporal
        frames = torch.zeros(b, 1, batch.num_frames, h, w)
        frames[:, :, 0] = 1.0
        first = frames[:, :, :1].repeat_interleave(temporal, dim=2)
        mask = torch.cat([first, frames[:, :, 1:]], dim=2)  # (B, 1, f_t * T, h, w)
        return mask.view(b, t, temporal, h, w).transpose(1, 2)  # (B, f_t, T, h, w)


class WanImageToVideoPipeline(WanPipeline):
    pipeline_name = "WanImageToVideoPipeline"
    _optional_config_modules = ("image_encoder", "image_processor", "transformer_2")
    _native_classes: ClassVar[dict[str, str]] = {}  # the whole VAE: the conditioning frame is encoded

    @classmethod
    def configure(cls, config: PipelineConfig, checkpoint: Path) -> None:
        if not isinstance(config, WanI2VPipelineConfig):
            raise TypeError(f"{cls.__name__} needs a WanI2VPipelineConfig, got {type(config).__name__}")
        super().configure(config, checkpoint)
        transformer_file = checkpoint / "transformer" / "config.json"
        transformer = read_json(transformer_file)
        vae = read_json(checkpoint / "vae" / "config.json")
        z_dim = vae.get("z_dim", 16)
        expected = 2 * z_dim + config.vae_scale_factor_temporal
        if transformer.get("in_channels") != expected:
            raise CheckpointError(
                f"{transformer_file}: in_channels {transformer.get('in_channels')!r} should be {expected} (latents, "
                f"{config.vae_scale_factor_temporal} mask channels and conditioning latents of {z_dim} channels)"
            )
        config.image_context = transformer.get("image_dim") is not None
        if config.image_context:
            components = read_model_index(checkpoint)
            missing = [name for name in ("image_encoder", "image_processor") if name not in components]
            if missing:
                raise CheckpointError(f"{checkpoint / 'model_index.json'}: the DiT has an image path (image_dim) but "
                                      f"the checkpoint lacks {', '.join(missing)}")

    def optional_modules(self, components: dict[str, tuple[str, str]]) -> list[str]:
        """The image encoder and processor only for a DiT with an image path (WanImageToVideoPipeline uses them
        only then); transformer_2 as for text-to-video."""
        assert isinstance(self.config, WanI2VPipelineConfig)  # checked by configure
        names = super().optional_modules(components)
        if not self.config.image_context:
            names = [name for name in names if name not in ("image_encoder", "image_processor")]
        return names

    def create_pipeline_stages(self) -> None:
        assert isinstance(self.config, WanI2VPipelineConfig)  # checked by configure
        self.add_standard_ti2v_stages(image_encoding=self.config.image_context)


EntryClass = WanImageToVideoPipeline

register_configs(
    WanI2VSamplingParams,
    WanI2VPipelineConfig,
    hf_model_paths=["Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
                    "Wan-AI/Wan2.2-I2V-A14B-Diffusers"],
    model_detectors=[lambda name: "wan" in name.lower() and is_wan_image_to_video(name)],
)

__all__ = ["WanI2VPipelineConfig", "WanI2VSamplingParams", "WanImageToVideoPipeline"]
