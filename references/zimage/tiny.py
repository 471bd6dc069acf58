"""A tiny random-weight Z-Image checkpoint in the standard Diffusers folder format, built offline.

Every stage of the real architecture, small: a Qwen3 text encoder (`Qwen3Model`, 3 decoder layers of which the
pipeline's second-to-last hidden state uses 2; per-head q/k RMSNorm, grouped-query attention with 4 query heads on
2 key/value heads, tied embeddings), a byte-level BPE `Qwen2Tokenizer` with a Qwen3-style chat template (the
pipeline wraps every prompt in it), the single-stream DiT (1 noise and 1 context refiner, 2 main layers, 4 heads
of 16; its learned pad tokens, which Diffusers leaves at zero, get random values like every other constant
parameter), the FLUX-style AutoencoderKL (16 latent channels, no quant convs, FLUX.1's scaling and shift factors,
x8), and a flow-matching Euler scheduler with a static shift of 3 (Z-Image-Turbo's kind). A pure function of the
seed; the tokenizer pads on the left (see `TinyZImageConfig.padding_side`).
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
    QWEN_CHAT_WORDS,
    QWEN_ENDOFTEXT,
    QWEN_IM_END,
    build_qwen_tokenizer,
    qwen_words,
)

# Bump when the build recipe changes, so caches built by an older recipe are not reused.
# 2: randomised norm values computed in float64 (the same bytes on every x86-64 machine).
BUILD_VERSION = 2

# Modelled on Tongyi-MAI/Z-Image-Turbo's scheduler_config.json (static shift 3, no dynamic shifting); ZImagePipeline
# still computes mu, which a static scheduler ignores.
ZIMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
FLUX_VAE_SCALING_FACTOR = 0.3611  # FLUX.1's VAE, which Z-Image uses
FLUX_VAE_SHIFT_FACTOR = 0.1159


@dataclass(frozen=True)
class TinyZImageConfig:
    """Sizes of every component; the DiT's cap_feat_dim follows the text width, its channels the VAE's latents."""

    text_hidden: int = 64
    text_intermediate: int = 96
    text_layers: int = 3
    text_heads: int = 4
    text_kv_heads: int = 2
    text_head_dim: int = 16
    text_rope_theta: float = 1000000.0  # Qwen3-4B's
    # Left: ZImagePipeline pads every prompt to max_sequence_length, so with left padding every real token would
    # see the padding if the attention mask were dropped (right padding hides that behind causality).
    padding_side: str = "left"

    dit_dim: int = 64
    dit_heads: int = 4
    dit_layers: int = 2
    dit_refiner_layers: int = 1
    dit_axes_dims: tuple[int, int, int] = (4, 6, 6)
    dit_axes_lens: tuple[int, int, int] = (1536, 512, 512)

    vae_block_out_channels: tuple[int, ...] = (8, 16, 16, 16)
    vae_latent_channels: int = 16
    vae_norm_groups: int = 4

    scheduler: dict = field(default_factory=lambda: dict(ZIMAGE_SCHEDULER), hash=False)

    def __post_init__(self) -> None:
        if sum(self.dit_axes_dims) != self.dit_dim // self.dit_heads:
            raise ValueError(f"dit_axes_dims {self.dit_axes_dims} must sum to the head dim "
                             f"{self.dit_dim // self.dit_heads}")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return config_digest(self.to_dict())


def _build_components(seed: int, config: TinyZImageConfig) -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = build_qwen_tokenizer(qwen_words(QWEN_CHAT_WORDS), padding_side=config.padding_side)
    pad_id = tokenizer.convert_tokens_to_ids(QWEN_ENDOFTEXT)

    seed_component(seed, 0)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden, intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_kv_heads, head_dim=config.text_head_dim, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": config.text_rope_theta}, tie_word_embeddings=True,
        bos_token_id=pad_id, eos_token_id=tokenizer.convert_tokens_to_ids(QWEN_IM_END), pad_token_id=pad_id,
    ))  # fmt: skip

    seed_component(seed, 1)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=config.vae_latent_channels, dim=config.dit_dim,
        n_layers=config.dit_layers, n_refiner_layers=config.dit_refiner_layers, n_heads=config.dit_heads,
        n_kv_heads=config.dit_heads, norm_eps=1e-5, qk_norm=True, cap_feat_dim=config.text_hidden,
        rope_theta=256.0, t_scale=1000.0, axes_dims=list(config.dit_axes_dims), axes_lens=list(config.dit_axes_lens),
    )  # fmt: skip

    seed_component(seed, 2)
    depth = len(config.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth, block_out_channels=tuple(config.vae_block_out_channels),
        layers_per_block=1, latent_channels=config.vae_latent_channels, norm_num_groups=config.vae_norm_groups,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=FLUX_VAE_SCALING_FACTOR,
        shift_factor=FLUX_VAE_SHIFT_FACTOR,
    )  # fmt: skip

    for index, model in enumerate((text_encoder, transformer, vae)):
        finish_random_component(model, seed, index)

    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(**config.scheduler),
    }


def build_tiny_zimage(out_dir: Path, seed: int = 0, config: TinyZImageConfig | None = None) -> Path:
    """Write a complete ZImagePipeline folder (fp32 safetensors) with random weights determined by `seed`.

    The global torch RNG is left as it was: seeding happens inside a forked RNG state."""
    from diffusers import ZImagePipeline

    config = config or TinyZImageConfig()
    with torch.random.fork_rng(devices=[]):
        pipe = ZImagePipeline(**_build_components(seed, config))
    return save_checkpoint(pipe, out_dir, BUILD_VERSION, seed, config.to_dict())


def checkpoint_dir(seed: int = 0, config: TinyZImageConfig | None = None) -> Path:
    """The cache folder for `seed` and `config` (the default config's name carries no config hash)."""
    return config_checkpoint_dir("zimage", BUILD_VERSION, seed, config, TinyZImageConfig())


def tiny_zimage_checkpoint(seed: int = 0, config: TinyZImageConfig | None = None) -> Path:
    """Path of the cached tiny checkpoint for `seed` (and `config`), built once on first use (atomically)."""
    return build_once(checkpoint_dir(seed, config), lambda folder: build_tiny_zimage(folder, seed=seed, config=config))
