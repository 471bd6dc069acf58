"""A tiny random-weight Qwen-Image checkpoint in the standard Diffusers folder format, built offline.

Every stage of the real architecture, small: a Qwen2.5-VL text encoder (2 decoder layers, grouped-query attention
with 4 query heads on 2 key/value heads, multimodal rotary sections, a one-block vision tower the text path never
runs; bos/eos/pad ids inside `text_config`, where transformers 5 reads them), a byte-level BPE `Qwen2Tokenizer` whose
vocabulary holds every word of QwenImagePipeline's prompt template as one token, so the template is exactly the 34
tokens the pipeline drops (field notes section 3) and the prompt starts at token 34; the dual-stream DiT (2 blocks,
4 heads of 16: TP 2 x Ulysses 2 split them), the causal 3D VAE with Qwen-Image's (Wan 2.1's) latent statistics, and
a flow-matching Euler scheduler with dynamic shifting and a terminal shift. Every parameter is random and none is
constant (references/common/tiny_build.py). A pure function of the seed; the tokenizer pads on the left (see
`TinyQwenImageConfig.padding_side`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from references.common.tiny_build import (
    build_once,
    config_checkpoint_dir,
    config_digest,
    finish_random_component,
    save_checkpoint,
    seed_component,
)
from references.common.tokenizers import (
    QWEN_ENDOFTEXT,
    QWEN_IM_END,
    QWEN_IMAGE_TEMPLATE_WORDS,
    build_qwen_tokenizer,
    qwen_words,
)

# Bump when the build recipe changes, so caches built by an older recipe are not reused.
# 2: randomised norm values computed in float64 (the same bytes on every x86-64 machine).
BUILD_VERSION = 2

# Modelled on Qwen/Qwen-Image's scheduler/scheduler_config.json (dynamic exponential shift between 256 and 8192
# tokens, terminal sigma 0.02); the notes could not read the published file offline, so these are the documented
# values, not a copy. What matters for parity is that both sides read the same file.
QWEN_IMAGE_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}


@dataclass(frozen=True)
class TinyQwenImageConfig:
    """Sizes of every component; the DiT's joint_attention_dim follows the text width, its input the VAE's z_dim."""

    text_hidden: int = 64
    text_intermediate: int = 96
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2  # grouped-query attention: 2 query heads per key/value head
    text_mrope_section: tuple[int, int, int] = (2, 3, 3)  # rotary pairs per (temporal, height, width) row
    text_rope_theta: float = 1000000.0  # Qwen2.5-VL's
    # Left: with prompts of different lengths in one call the shorter ones get leading padding, which their
    # real tokens would see without the attention mask (right padding hides a dropped mask behind causality).
    padding_side: str = "left"

    dit_layers: int = 2
    dit_heads: int = 4
    dit_head_dim: int = 16
    dit_axes_dims_rope: tuple[int, int, int] = (4, 6, 6)

    vae_base_dim: int = 8
    vae_z_dim: int = 16
    vae_dim_mult: tuple[int, ...] = (1, 2, 2, 2)
    vae_num_res_blocks: int = 1
    vae_temperal_downsample: tuple[bool, ...] = (False, True, True)

    scheduler: dict = field(default_factory=lambda: dict(QWEN_IMAGE_SCHEDULER), hash=False)

    def __post_init__(self) -> None:
        if sum(self.dit_axes_dims_rope) != self.dit_head_dim:
            raise ValueError(f"dit_axes_dims_rope {self.dit_axes_dims_rope} must sum to dit_head_dim "
                             f"{self.dit_head_dim}")
        head_dim = self.text_hidden // self.text_heads
        if 2 * sum(self.text_mrope_section) != head_dim:
            raise ValueError(f"text_mrope_section {self.text_mrope_section} must cover head_dim / 2 = {head_dim // 2}")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** len(self.vae_temperal_downsample)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return config_digest(self.to_dict())


def _build_components(seed: int, config: TinyQwenImageConfig) -> dict:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = build_qwen_tokenizer(qwen_words(QWEN_IMAGE_TEMPLATE_WORDS), padding_side=config.padding_side)
    bos_id = eos_pad = tokenizer.convert_tokens_to_ids(QWEN_ENDOFTEXT)
    eos_id = tokenizer.convert_tokens_to_ids(QWEN_IM_END)

    seed_component(seed, 0)
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": config.text_hidden,
        "intermediate_size": config.text_intermediate,
        "num_hidden_layers": config.text_layers,
        "num_attention_heads": config.text_heads,
        "num_key_value_heads": config.text_kv_heads,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "mrope_section": list(config.text_mrope_section),
                            "rope_theta": config.text_rope_theta},
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_pad,
    }
    vision_config = {"depth": 1, "hidden_size": 16, "num_heads": 2, "out_hidden_size": config.text_hidden,
                     "intermediate_size": 16}
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config)
    )

    seed_component(seed, 1)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * config.vae_z_dim,
        out_channels=config.vae_z_dim,
        num_layers=config.dit_layers,
        attention_head_dim=config.dit_head_dim,
        num_attention_heads=config.dit_heads,
        joint_attention_dim=config.text_hidden,
        guidance_embeds=False,
        axes_dims_rope=tuple(config.dit_axes_dims_rope),
    )

    seed_component(seed, 2)
    vae = AutoencoderKLQwenImage(
        base_dim=config.vae_base_dim,
        z_dim=config.vae_z_dim,
        dim_mult=list(config.vae_dim_mult),
        num_res_blocks=config.vae_num_res_blocks,
        attn_scales=[],
        temperal_downsample=list(config.vae_temperal_downsample),
        dropout=0.0,
    )  # Qwen-Image's latents_mean / latents_std are the class defaults (Wan 2.1's statistics)

    for index, model in enumerate((text_encoder, transformer, vae)):
        finish_random_component(model, seed, index)

    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(**config.scheduler),
    }


def build_tiny_qwenimage(out_dir: Path, seed: int = 0, config: TinyQwenImageConfig | None = None) -> Path:
    """Write a complete QwenImagePipeline folder (fp32 safetensors) with random weights determined by `seed`.

    The global torch RNG is left as it was: seeding happens inside a forked RNG state."""
    from diffusers import QwenImagePipeline

    config = config or TinyQwenImageConfig()
    with torch.random.fork_rng(devices=[]):
        pipe = QwenImagePipeline(**_build_components(seed, config))
    return save_checkpoint(pipe, out_dir, BUILD_VERSION, seed, config.to_dict())


def checkpoint_dir(seed: int = 0, config: TinyQwenImageConfig | None = None) -> Path:
    """The cache folder for `seed` and `config` (the default config's name carries no config hash)."""
    return config_checkpoint_dir("qwenimage", BUILD_VERSION, seed, config, TinyQwenImageConfig())


def tiny_qwenimage_checkpoint(seed: int = 0, config: TinyQwenImageConfig | None = None) -> Path:
    """Path of the cached tiny checkpoint for `seed` (and `config`), built once on first use (atomically)."""
    return build_once(checkpoint_dir(seed, config),
                      lambda folder: build_tiny_qwenimage(folder, seed=seed, config=config))
