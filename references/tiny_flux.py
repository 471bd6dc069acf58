"""A tiny random-weight FLUX.1 checkpoint in the standard Diffusers folder format, built offline.

Parity needs a checkpoint both sides can load, with every stage of the real architecture (CLIP + T5 text
encoders, the MMDiT with guidance embedding, a 16-channel FLUX VAE, FLUX.1-dev's dynamic-shift scheduler) but
small enough to build and run on a CPU in about a second. Weights are random and a pure function of the seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Diffusers and transformers are imported where a checkpoint is built, not here: finding the cached checkpoint
# (`tiny_flux_checkpoint` once built) must not cost their import, nor load Diffusers into a process that only
# runs the native side (`diffparity golden verify`).

# Bump when the build recipe changes, so caches built by an older recipe are not reused.
BUILD_VERSION = 1
BUILD_INFO_FILE = "diffparity_build.json"

# FLUX.1-dev's scheduler/scheduler_config.json.
FLUX_DEV_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}


@dataclass(frozen=True)
class TinyFluxConfig:
    """Sizes of every component. The transformer's text widths follow the encoders (T5 d_model, CLIP hidden)."""

    clip_hidden: int = 32
    clip_layers: int = 2
    clip_heads: int = 4
    clip_intermediate: int = 37
    clip_projection_dim: int = 32

    t5_d_model: int = 32
    t5_d_kv: int = 8
    t5_d_ff: int = 64
    t5_layers: int = 2
    t5_heads: int = 4
    t5_relative_buckets: int = 8
    t5_relative_max_distance: int = 20

    dit_layers: int = 2
    dit_single_layers: int = 2
    dit_heads: int = 2
    dit_head_dim: int = 16
    dit_axes_dims_rope: tuple[int, int, int] = (4, 6, 6)
    dit_guidance_embeds: bool = True

    vae_block_out_channels: tuple[int, ...] = (8, 16, 16, 16)
    vae_layers_per_block: int = 1
    vae_latent_channels: int = 16
    vae_norm_groups: int = 4
    vae_scaling_factor: float = 0.3611
    vae_shift_factor: float = 0.1159

    scheduler: dict = field(default_factory=lambda: dict(FLUX_DEV_SCHEDULER), hash=False)

    def __post_init__(self) -> None:
        if sum(self.dit_axes_dims_rope) != self.dit_head_dim:
            raise ValueError(
                f"dit_axes_dims_rope {self.dit_axes_dims_rope} must sum to dit_head_dim {self.dit_head_dim}"
            )
        if any(c % self.vae_norm_groups for c in self.vae_block_out_channels):
            raise ValueError(f"vae_block_out_channels {self.vae_block_out_channels} must divide by vae_norm_groups")

    @classmethod
    def wide(cls) -> TinyFluxConfig:
        """A wider DiT for GPU runs: hidden 1024 as 8 heads x 128 with FLUX.1's RoPE axes (16, 56, 56)."""
        return cls(dit_heads=8, dit_head_dim=128, dit_axes_dims_rope=(16, 56, 56))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short stable hash of the config, for cache folder names."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def _reinit_zero_matrices(module: torch.nn.Module) -> list[str]:
    """Give all-zero weight matrices small random values, so no stage of a random model is silent.

    FLUX in Diffusers 0.42 has none (it keeps PyTorch's default init); the guard stays for other versions.
    """
    fixed = []
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2 and not param.any():
                param.normal_(0.0, param[0].numel() ** -0.5)
                fixed.append(name)
    return fixed


def _seeded(seed: int, index: int) -> None:
    """Seed the global RNG per component, so resizing one component leaves the others' weights unchanged."""
    torch.manual_seed(seed * 16 + index)


def _build_components(seed: int, config: TinyFluxConfig) -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from references.tokenizers import CLIP_MAX_LENGTH, build_clip_tokenizer, build_t5_tokenizer

    clip_tokenizer = build_clip_tokenizer()
    t5_tokenizer = build_t5_tokenizer()

    _seeded(seed, 0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=config.clip_hidden,
            intermediate_size=config.clip_intermediate,
            projection_dim=config.clip_projection_dim,
            num_hidden_layers=config.clip_layers,
            num_attention_heads=config.clip_heads,
            max_position_embeddings=CLIP_MAX_LENGTH,
            hidden_act="quick_gelu",
            # Must be the tokenizer's ids: with eos_token_id == 2 CLIP pools by the legacy argmax rule.
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
        )
    )

    _seeded(seed, 1)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=config.t5_d_model,
            d_kv=config.t5_d_kv,
            d_ff=config.t5_d_ff,
            num_layers=config.t5_layers,
            num_heads=config.t5_heads,
            relative_attention_num_buckets=config.t5_relative_buckets,
            relative_attention_max_distance=config.t5_relative_max_distance,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            tie_word_embeddings=False,
            pad_token_id=t5_tokenizer.pad_token_id,
            eos_token_id=t5_tokenizer.eos_token_id,
            decoder_start_token_id=t5_tokenizer.pad_token_id,
        )
    )

    _seeded(seed, 2)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * config.vae_latent_channels,
        num_layers=config.dit_layers,
        num_single_layers=config.dit_single_layers,
        attention_head_dim=config.dit_head_dim,
        num_attention_heads=config.dit_heads,
        joint_attention_dim=config.t5_d_model,
        pooled_projection_dim=config.clip_hidden,
        guidance_embeds=config.dit_guidance_embeds,
        axes_dims_rope=tuple(config.dit_axes_dims_rope),
    )

    _seeded(seed, 3)
    depth = len(config.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        block_out_channels=tuple(config.vae_block_out_channels),
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.vae_latent_channels,
        norm_num_groups=config.vae_norm_groups,
        sample_size=32 * config.vae_scale_factor,
        scaling_factor=config.vae_scaling_factor,
        shift_factor=config.vae_shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )

    for model in (text_encoder, text_encoder_2, transformer, vae):
        _reinit_zero_matrices(model)
        model.eval()

    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**config.scheduler),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": t5_tokenizer,
        "transformer": transformer,
    }


def build_tiny_flux(out_dir: Path, seed: int = 0, config: TinyFluxConfig | None = None) -> Path:
    """Write a complete FluxPipeline folder (fp32 safetensors) with random weights determined by `seed`.

    The global torch RNG is left as it was: seeding happens inside a forked RNG state.
    """
    import diffusers
    import transformers
    from diffusers import FluxPipeline

    config = config or TinyFluxConfig()
    out_dir = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        pipe = FluxPipeline(**_build_components(seed, config))
    pipe.save_pretrained(out_dir, safe_serialization=True)
    info = {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "config": config.to_dict(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    (out_dir / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out_dir


def cache_root() -> Path:
    """Where built checkpoints live: $DIFFPARITY_CACHE, else ~/.cache/diffparity."""
    return Path(os.environ.get("DIFFPARITY_CACHE") or "~/.cache/diffparity").expanduser()


def checkpoint_dir(seed: int = 0, config: TinyFluxConfig | None = None) -> Path:
    """The cache folder for `seed` and `config` (the default config's name carries no config hash)."""
    name = f"flux-tiny-v{BUILD_VERSION}-seed{seed}"
    if config is not None and config != TinyFluxConfig():
        name += f"-{config.digest()}"
    return cache_root() / "checkpoints" / name


def tiny_flux_checkpoint(seed: int = 0, config: TinyFluxConfig | None = None) -> Path:
    """Path of the cached tiny checkpoint for `seed` (and `config`), building it on first use.

    Builds into a temporary sibling folder and renames it into place, so concurrent callers (pytest-xdist
    workers) see either no folder or a complete one; a loser of the race discards its own copy.
    """
    final = checkpoint_dir(seed, config)
    name = final.name
    if (final / "model_index.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        build_tiny_flux(tmp, seed=seed, config=config)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "model_index.json").is_file():
                raise RuntimeError(f"cannot create {final}: it exists but is not a checkpoint; delete it") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
