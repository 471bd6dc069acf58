"""Tiny random Diffusers Wan pipelines for the native image-to-video and two-expert tests (issue 15, phase 1).

Built in code (no hub), every parameter non-constant (`randomise_constant_parameters`), saved with
`save_pretrained` into a test's temporary folder:
- `build_i2v(folder)`: WanImageToVideoPipeline, Wan 2.1 I2V layout (CLIP vision tower + processor, DiT with the
  image path, in_channels 16 + 4 + 16);
- `build_two_experts(folder, i2v=...)`: WanPipeline (or WanImageToVideoPipeline without image encoder, Wan 2.2
  A14B I2V layout) with `transformer_2` and `boundary_ratio`.
Phase 2 moves a cached builder of this kind next to the family's cases (references/<family>/).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)

from references.common.tiny_build import randomise_constant_parameters
from references.common.tokenizers import build_umt5_tokenizer

# Wan 2.1's scheduler config (flow_shift 3.0); UniPC with flow sigmas, as the tiny T2V checkpoint uses.
SCHEDULER = {
    "num_train_timesteps": 1000, "solver_order": 2, "prediction_type": "flow_prediction", "use_flow_sigmas": True,
    "flow_shift": 3.0, "timestep_spacing": "linspace", "final_sigmas_type": "zero", "lower_order_final": True,
    "solver_type": "bh2", "predict_x0": True,
}  # fmt: skip
Z_DIM = 16
TEXT_DIM = 32  # UMT5 d_model
IMAGE_DIM = 24  # CLIP vision hidden size
CLIP_IMAGE_SIZE = 28  # 4 x 4 patches of 7 px + the class token: 17 image tokens
HEADS, HEAD_DIM = 2, 16


def seeded(index: int, seed: int = 0) -> None:
    torch.manual_seed(seed * 16 + index)


def umt5(tokenizer: object) -> transformers.UMT5EncoderModel:
    seeded(0)
    return transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    ))


def dit(index: int, in_channels: int, image: bool) -> WanTransformer3DModel:
    seeded(index)
    extra = {"image_dim": IMAGE_DIM, "added_kv_proj_dim": HEADS * HEAD_DIM} if image else {}
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=in_channels,
        out_channels=Z_DIM, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, **extra,
    )


def vae() -> AutoencoderKLWan:
    seeded(2)
    return AutoencoderKLWan(base_dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                            temperal_downsample=[False, True, True], dropout=0.0)


def clip_vision() -> transformers.CLIPVisionModel:
    seeded(3)
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=IMAGE_DIM, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE, patch_size=7, projection_dim=16, hidden_act="gelu",
    ))


def finish(models: dict[str, torch.nn.Module]) -> None:
    for index, model in enumerate(models.values()):
        randomise_constant_parameters(model, 0, index)
        model.eval()


def build_i2v(folder: Path) -> Path:
    """Wan 2.1 I2V layout: CLIP image path + conditioning latents."""
    tokenizer = build_umt5_tokenizer()
    models = {"text_encoder": umt5(tokenizer), "transformer": dit(1, 2 * Z_DIM + 4, image=True), "vae": vae(),
              "image_encoder": clip_vision()}
    finish(models)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE_SIZE},
                                                crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE})
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, scheduler=UniPCMultistepScheduler(**SCHEDULER),
                                   image_processor=processor, **models)
    pipe.save_pretrained(folder)
    return folder


def build_two_experts(folder: Path, boundary_ratio: float, i2v: bool = False) -> Path:
    """Wan 2.2 A14B layout: two DiTs (different weights) switched at `boundary_ratio`; with `i2v`, the
    image-to-video variant (conditioning latents, no image encoder)."""
    tokenizer = build_umt5_tokenizer()
    in_channels = 2 * Z_DIM + 4 if i2v else Z_DIM
    models = {"text_encoder": umt5(tokenizer), "transformer": dit(1, in_channels, image=False), "vae": vae(),
              "transformer_2": dit(5, in_channels, image=False)}
    finish(models)
    cls = WanImageToVideoPipeline if i2v else WanPipeline
    pipe = cls(tokenizer=tokenizer, scheduler=UniPCMultistepScheduler(**SCHEDULER), boundary_ratio=boundary_ratio,
               **models)
    pipe.save_pretrained(folder)
    return folder
