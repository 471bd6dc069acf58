"""A VAE's latent signature (harness/noise/latent_stats.py), measured by encoding pictures the packages ship.

The latent check compares a run's latents with what *this* VAE gives a picture, so the signature is computed from
the VAE itself: fixed crops of shipped photographs (references/common/shipped_images.py) at three latent sizes,
encoded with the VAE's encoder (Diffusers' AutoencoderKL: the native side has a decoder only), posterior means
normalised with the VAE's own shift and scaling factors. Deterministic (fixed crops, one thread, no sampling)
and cached under $DIFFPARITY_CACHE/latent-signatures/ by the sha256 of the VAE's weights, so a second run reads
a small JSON; the project's own VAEs have theirs shipped in references/latent_signatures/ (scripts/
ship_latent_signatures.py writes them).

Photographs: the noise corpus's training-half photographs (references/flux/noise_corpus.py, corpus seed 16016),
listed here, so that its held-out half judges photographs the signature never saw.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness.noise.latent_stats import LatentSignature, build_signature

SIGNATURE_PHOTOS = ("brick", "cell", "chelsea", "coffee", "coins", "hubble_deep_field", "microaneurysms",
                    "motorcycle_left", "retina", "rocket", "text")  # the corpus's train half (the stereo twin left out)
LATENT_SIDES = (8, 16, 32)  # crops whose latents are 8x8, 16x16 and 32x32 positions
CROPS_PER_SIZE = 2  # per photograph
SIGNATURE_SEED = 17016
SHIPPED = Path(__file__).resolve().parents[1] / "latent_signatures"


class SignatureError(ValueError):
    """No VAE to measure (missing folder or weights) or one this module cannot encode with."""


def vae_weights_sha256(vae_folder: Path) -> str:
    """sha256 over the VAE folder's safetensors files (names and bytes), its weight identity."""
    files = sorted(Path(vae_folder).glob("*.safetensors"))
    if not files:
        raise SignatureError(f"{vae_folder}: no .safetensors weights to measure a latent signature from")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def signature_path(sha256: str) -> Path:
    """$DIFFPARITY_CACHE/latent-signatures/<sha256[:32]>.json"""
    from native_models.tokenizer_cache import cache_root

    return cache_root() / "latent-signatures" / f"{sha256[:32]}.json"


def signature_crops(downsample: int) -> list[tuple[str, np.ndarray]]:
    """The fixed crops encoded: (label, (H, W, 3) uint8), sides chosen so that latents have LATENT_SIDES."""
    from references.common import shipped_images

    crops = []
    for index, name in enumerate(SIGNATURE_PHOTOS):
        rng = np.random.default_rng([SIGNATURE_SEED, index])
        for side in LATENT_SIDES:
            for _ in range(CROPS_PER_SIZE):
                pixels = side * downsample
                crops.append((f"{name}@{pixels}", shipped_images.random_crop(shipped_images.photo(name), pixels,
                                                                            pixels, rng)))
    return crops


def measure_signature(vae_folder: Path, crops: Callable[[int], list[tuple[str, np.ndarray]]] = signature_crops
                      ) -> LatentSignature:
    """Encode the crops with the VAE in `vae_folder` (Diffusers AutoencoderKL, FLUX layout) and build its signature."""
    import torch
    from diffusers import AutoencoderKL

    vae_folder = Path(vae_folder)
    if not (vae_folder / "config.json").is_file():
        raise SignatureError(f"{vae_folder}: no VAE config.json to measure a latent signature from")
    sha256 = vae_weights_sha256(vae_folder)
    vae = AutoencoderKL.from_pretrained(vae_folder).eval().requires_grad_(False)
    shift = float(vae.config.shift_factor or 0.0)
    scale = float(vae.config.scaling_factor or 1.0)
    downsample = 2 ** (len(vae.config.block_out_channels) - 1)
    latents, labels = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for label, image in crops(downsample):
            pixels = torch.from_numpy(image.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0)[None]
            z = (vae.encode(pixels).latent_dist.mean - shift) * scale  # (1, C, h, w), normalised
            latents.append(z[0].double().numpy())
            labels.append(label)
    identity = {"sha256": sha256, "shift_factor": shift, "scaling_factor": scale, "downsample": downsample,
                "channels": int(vae.config.latent_channels), "seconds": round(time.perf_counter() - start, 1)}
    return build_signature(latents, labels, identity)


def shipped_signature_path(sha256: str) -> Path:
    """references/latent_signatures/<sha256[:32]>.json: signatures shipped for the project's own VAEs (the photo
    VAE, flux-digits'), so a native-only run (golden verify) never imports Diffusers to measure one."""
    return SHIPPED / f"{sha256[:32]}.json"


def latent_signature(vae_folder: Path, refresh: bool = False) -> LatentSignature:
    """The VAE's signature: shipped, or read from the cache when its weights were measured before, else measured
    (Diffusers' encoder) and cached."""
    sha256 = vae_weights_sha256(Path(vae_folder))
    path = signature_path(sha256)
    for known in (shipped_signature_path(sha256), path):
        if known.is_file() and not refresh:
            return LatentSignature.from_dict(json.loads(known.read_text()))
    signature = measure_signature(vae_folder)
    from harness.files import write_json_atomic

    write_json_atomic(path, signature.to_dict())
    return signature


def describe(signature: LatentSignature) -> dict[str, Any]:
    """A short summary (for logs): what was encoded and how long it took."""
    return {"photos": len(signature.photos), "channels": signature.channels, **signature.vae}
