"""The photo VAE: a small FLUX-format AutoencoderKL trained on shipped photographs (scripts/train_photo_vae.py).

It decodes latents the way a real port's VAE does, so the noise corpus (scripts/build_noise_corpus.py) can show
the detector what broken latents look like after a natural-image decoder. FLUX.1's layout: 16 latent channels,
8x downsampling (four levels), mid-block attention, no quant convs, `z = (mean - shift_factor) * scaling_factor`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

PHOTO_VAE_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "photo-vae"


class PhotoVaeError(ValueError):
    """The photo VAE folder is missing or unreadable; the message says how to rebuild it."""


def build_photo_vae(seed: int, block_out_channels: tuple[int, ...], layers_per_block: int, latent_channels: int,
                    norm_groups: int, sample_size: int) -> Any:
    """An AutoencoderKL with FLUX.1's layout at the given widths; initial weights from torch's RNG seeded by `seed`."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed * 16 + 3)
    depth = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_groups,
        sample_size=sample_size,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
    )


@lru_cache(maxsize=2)
def load_photo_vae(folder: Path = PHOTO_VAE_CHECKPOINT) -> Any:
    """The trained VAE (eval mode, no gradients), read once per process."""
    from diffusers import AutoencoderKL

    if not (folder / "config.json").is_file():
        raise PhotoVaeError(f"{folder}: no trained photo VAE; build it with scripts/train_photo_vae.py")
    vae = AutoencoderKL.from_pretrained(folder)
    return vae.eval().requires_grad_(False)


def vae_factors(vae: Any) -> tuple[float, float]:
    """(shift_factor, scaling_factor) of a FLUX-format VAE config."""
    return float(vae.config.shift_factor), float(vae.config.scaling_factor)


@torch.no_grad()
def encode_normalised(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> (B, 16, H/8, W/8) normalised latents (posterior means), as a DiT sees them."""
    shift, scale = vae_factors(vae)
    return (vae.encode(images).latent_dist.mean - shift) * scale


@torch.no_grad()
def decode_raw(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, h, w) latents in the VAE's own (denormalised) space -> (B, 3, 8h, 8w) images in [0, 1], clipped
    as a PNG encoder would."""
    return (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)


def denormalise(latents: torch.Tensor, vae: Any) -> torch.Tensor:
    """What a correct pipeline does before decoding: z / scaling_factor + shift_factor."""
    shift, scale = vae_factors(vae)
    return latents / scale + shift
