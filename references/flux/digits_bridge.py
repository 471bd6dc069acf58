"""Decode the digits model's latents with the photo VAE: the realistic path for judging its broken outputs.

The flux-digits VAE is tiny and smooth: whatever latents a broken pipeline hands it, it draws a soft blob, so
image statistics see a picture. A real port decodes with a natural-image VAE, which turns wrong latents into
structured garbage. This module puts the photo VAE (references/flux/photo_vae.py) behind the digits DiT:

- the *bridge* is a 1x1 linear map (16 x 16 and a bias, least squares) from the digits VAE's normalised latents
  to the photo VAE's normalised latents of the same digits (32 px for the one, upsampled to 64 px for the other:
  both are 8x8x16), so a correct digits latent decodes, through the photo VAE, to that digit at 64 px;
- `photo_vae_mutate` is a native-pipeline mutation: the decoding stage gets the photo VAE (the native
  AutoencoderKL, loaded from references/checkpoints/photo-vae) and the bridge after the unpacking, and then any
  fault is applied on top, so decode-stage faults (scale/shift, bf16, norm eps) act on the photo VAE and its
  factors, as they would in a real port.

The fit encodes all 1,797 digits with both VAEs (~11 s of CPU); its result is stored under
$DIFFPARITY_CACHE/digits_bridge/, keyed by both VAEs' files and the fitting code, so a later process reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

PHOTO_SIZE = 64  # the digits upsampled to this size give the photo VAE the digits model's 8x8 latent grid


@lru_cache(maxsize=1)
def fit_bridge() -> tuple[torch.Tensor, torch.Tensor, float]:
    """(W (16, 16), b (16,), R^2) of `fit_bridge_uncached`, read from the cache when its key matches."""
    from harness.files import write_json_atomic
    from native_models.tokenizer_cache import cache_root

    path = cache_root() / "digits_bridge" / f"{bridge_key()}.json"
    try:
        stored = json.loads(path.read_text())
        return torch.tensor(stored["weight"]), torch.tensor(stored["bias"]), float(stored["r2"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not stored yet, or unreadable: fit again and store
    weight, bias, r2 = fit_bridge_uncached()
    with contextlib.suppress(OSError):  # a read-only cache: the fit stands for this process
        write_json_atomic(path, {"weight": weight.tolist(), "bias": bias.tolist(), "r2": r2})
    return weight, bias, r2


def bridge_key() -> str:
    """A digest of what the fit reads (both VAE folders' files), of the fitting code itself and of the torch
    version that ran it (its kernels round differently from release to release)."""
    from references.flux.digits import DIGITS_CHECKPOINT
    from references.flux.photo_vae import PHOTO_VAE_CHECKPOINT

    digest = hashlib.sha256(inspect.getsource(fit_bridge_uncached).encode())
    digest.update(f"{PHOTO_SIZE} {torch.__version__}".encode())
    for folder in (DIGITS_CHECKPOINT / "vae", PHOTO_VAE_CHECKPOINT):
        for file in sorted(p for p in Path(folder).iterdir() if p.is_file()):
            digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()[:24]


def fit_bridge_uncached() -> tuple[torch.Tensor, torch.Tensor, float]:
    """(W (16, 16), b (16,), R^2): photo latent ~= W @ digits latent + b per latent pixel, fitted on all 1,797
    digits (posterior means, each VAE's own normalisation); R^2 is the share of the photo latents' variance
    explained."""
    from diffusers import AutoencoderKL

    from references.flux.digits import DIGITS_CHECKPOINT, digit_images
    from references.flux.photo_vae import encode_normalised, load_photo_vae

    images, _ = digit_images(32)  # (N, 1, 32, 32) in [0, 1]
    digits_vae = AutoencoderKL.from_pretrained(DIGITS_CHECKPOINT / "vae").eval()
    photo_vae = load_photo_vae()
    with torch.no_grad():
        rgb = images.expand(-1, 3, -1, -1) * 2 - 1
        z_digits = torch.cat([encode_normalised(digits_vae, chunk) for chunk in rgb.split(256)])
        big = F.interpolate(images, size=(PHOTO_SIZE, PHOTO_SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
        z_photo = torch.cat([encode_normalised(photo_vae, chunk) for chunk in (big.expand(-1, 3, -1, -1) * 2 - 1)
                             .split(128)])
    x = z_digits.permute(0, 2, 3, 1).reshape(-1, 16).double()  # (N*64, 16)
    y = z_photo.permute(0, 2, 3, 1).reshape(-1, 16).double()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # (N*64, 17)
    solution = torch.linalg.lstsq(design, y).solution  # (17, 16)
    residual = y - design @ solution
    r2 = 1.0 - float((residual**2).sum() / ((y - y.mean(0)) ** 2).sum())
    return solution[:16].T.float().contiguous(), solution[16].float().contiguous(), r2


def bridge(latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, h, w) digits-normalised latents -> (B, 16, h, w) photo-normalised latents."""
    weight, bias, _ = fit_bridge()
    return torch.einsum("oc,bchw->bohw", weight.to(latents.dtype), latents) + bias.to(latents.dtype)[None, :, None,
                                                                                                        None]


def photo_vae_mutate(fault_apply: Callable[[Any], None] | None = None) -> Callable[[Any], None]:
    """A `run_native(mutate=...)` that decodes with the photo VAE through the bridge, then applies `fault_apply`."""

    def mutate(pipeline: Any) -> None:
        from harness.run.forcing import find_stage
        from native_models.loader import load_component
        from native_models.models.autoencoder_kl import AutoencoderKL
        from native_models.stages.decoding import DecodingStage
        from references.flux.photo_vae import PHOTO_VAE_CHECKPOINT

        stage = find_stage(pipeline, DecodingStage)
        weight = next(stage.vae.parameters())
        stage.vae = load_component(AutoencoderKL, PHOTO_VAE_CHECKPOINT, dtype=weight.dtype, device=weight.device)
        unpack = stage.config.post_denoising_loop

        def bridged(latents: torch.Tensor, batch: Any) -> torch.Tensor:
            return bridge(unpack(latents, batch))

        stage.config.post_denoising_loop = bridged  # instance attribute, as the faults wrap methods
        if fault_apply is not None:
            fault_apply(pipeline)

    return mutate
