"""Train the photo VAE: a FLUX-format AutoencoderKL (16 latent channels, 8x downsampling) on shipped photographs.

Why it exists: the noise detector must catch what a real VAE draws from broken latents (blotchy colour fields,
8-pixel block textures, smeared noise), and the digits model's VAE is too small and too smooth to draw that.
This one is trained on patches of the photographs that installed packages ship (references/common/shipped_images.py),
so that wrong latents decode the way they do in a real port: into structured garbage, not into noise.

Recipe (`Recipe`): four DownEncoderBlock2D / UpDecoderBlock2D levels of 16, 32, 64 and 128 channels, one ResNet
per level, mid-block attention, no quant convs (as FLUX.1's VAE); 64x64 patches cropped at random from the
training photographs at full, half and quarter size (anti-aliased), random horizontal flips; MSE + a small KL
per latent element; AdamW with warm-up and cosine decay. Then `shift_factor` / `scaling_factor` are the mean and
1/std of the latent means over a fixed set of training patches (FLUX's convention: z = (mean - shift) * scale).
Quality: PSNR of decode(encode mean) on held-out photographs (never seen in training): every non-overlapping
64x64 patch at full and half size, and a 256x256 centre crop of each.

Deterministic: one CPU thread, `torch.use_deterministic_algorithms(True)`, every draw from a seeded generator;
the sha256 of the weights is in the build info so a rerun can be checked against the shipped one.

    .venv/bin/python scripts/train_photo_vae.py                      # rebuild references/checkpoints/photo-vae
    .venv/bin/python scripts/train_photo_vae.py --out /tmp/v --steps 20   # quick determinism check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from references.common import shipped_images  # noqa: E402
from references.common.tiny_build import BUILD_INFO_FILE  # noqa: E402
from references.flux.photo_vae import PHOTO_VAE_CHECKPOINT, build_photo_vae  # noqa: E402

EXIT_USAGE = 2


@dataclass(frozen=True)
class Recipe:
    """Every number that decides the weights; recorded whole in the build info."""

    seed: int = 0
    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)
    layers_per_block: int = 1
    latent_channels: int = 16
    norm_groups: int = 8
    patch: int = 64
    scales: tuple[float, ...] = (1.0, 0.5, 0.25)
    steps: int = 1200
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 50
    kl_weight: float = 1e-4  # times the KL per latent element, against the MSE per pixel
    factor_patches: int = 512  # training patches whose latent means give shift_factor / scaling_factor


# ------------------------------------------------------------------------------------------------ data
def resized(image: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 -> float32 in [-1, 1], shrunk by `scale` with PIL's anti-aliased Lanczos filter."""
    from PIL import Image

    if scale != 1.0:
        h, w = image.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    return image.astype(np.float32) / 127.5 - 1.0


def photo_levels(names: tuple[str, ...], scales: tuple[float, ...], patch: int) -> list[torch.Tensor]:
    """Every (photograph, scale) at least one patch large, as (3, H, W) tensors in [-1, 1]."""
    levels = []
    for name in names:
        for scale in scales:
            array = resized(shipped_images.photo(name), scale)
            if min(array.shape[:2]) >= patch:
                levels.append(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))
    return levels


def random_patches(levels: list[torch.Tensor], patch: int, batch: int,
                   generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless (B, 3, patch, patch) batches: a level drawn uniformly, a random crop, a random horizontal flip."""
    while True:
        crops = []
        for _ in range(batch):
            level = levels[int(torch.randint(len(levels), (1,), generator=generator))]
            _, h, w = level.shape
            top = int(torch.randint(h - patch + 1, (1,), generator=generator))
            left = int(torch.randint(w - patch + 1, (1,), generator=generator))
            crop = level[:, top : top + patch, left : left + patch]
            if bool(torch.rand(1, generator=generator) < 0.5):
                crop = crop.flip(-1)
            crops.append(crop)
        yield torch.stack(crops)


def grid_patches(levels: list[torch.Tensor], patch: int) -> torch.Tensor:
    """Every non-overlapping patch of every level: (N, 3, patch, patch)."""
    out = []
    for level in levels:
        _, h, w = level.shape
        for top in range(0, h - patch + 1, patch):
            for left in range(0, w - patch + 1, patch):
                out.append(level[:, top : top + patch, left : left + patch])
    return torch.stack(out)


# ------------------------------------------------------------------------------------------- training
def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_vae(vae: torch.nn.Module, levels: list[torch.Tensor], recipe: Recipe) -> dict[str, float]:
    """Fit the autoencoder on random patches; returns the mean losses of the last 100 steps."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.lr)
    generator = torch.Generator().manual_seed(recipe.seed * 16 + 10)
    batches = random_patches(levels, recipe.patch, recipe.batch, generator)
    recent: list[tuple[float, float]] = []
    start = time.perf_counter()
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, recipe.steps, recipe.lr, recipe.warmup)
        x = next(batches)  # (B, 3, P, P)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().sum() / posterior.mean.numel()
        loss = mse + recipe.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent = (recent + [(mse.item(), kl.item())])[-100:]
        if step % 50 == 0 or step == recipe.steps - 1:
            mean_mse = sum(m for m, _ in recent) / len(recent)
            _log(f"vae step {step:4d}/{recipe.steps}  mse {mean_mse:.5f} (PSNR {psnr_of_mse(mean_mse):.2f} dB)  "
                 f"kl/elem {kl.item():.3f}  {time.perf_counter() - start:.0f} s  "
                 f"load {os.getloadavg()[0]:.1f}")
    vae.eval()
    return {"mse_last_100": sum(m for m, _ in recent) / len(recent),
            "kl_per_element_last_100": sum(k for _, k in recent) / len(recent)}


def psnr_of_mse(mse_pm1: float) -> float:
    """PSNR in dB of images in [0, 1], from the MSE measured in [-1, 1] (4x the [0, 1] MSE)."""
    return 10.0 * math.log10(1.0 / max(mse_pm1 / 4.0, 1e-12))


@torch.no_grad()
def latent_factors(vae: torch.nn.Module, levels: list[torch.Tensor], recipe: Recipe) -> tuple[float, float]:
    """(shift, scale): mean and 1/std of the posterior means of `factor_patches` fixed random training patches."""
    generator = torch.Generator().manual_seed(recipe.seed * 16 + 11)
    batches = random_patches(levels, recipe.patch, 64, generator)
    means = torch.cat([vae.encode(next(batches)).latent_dist.mean for _ in range(recipe.factor_patches // 64)])
    return means.mean().item(), 1.0 / means.std().item()


@torch.no_grad()
def reconstruction_psnr(vae: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, images in [0, 1], decode of the posterior mean, clipped) over (N, 3, H, W) images in [-1, 1]:
    of the pooled MSE, and the median and worst of the per-image PSNRs."""
    errors = []
    for chunk in images.split(32):
        recon = vae.decode(vae.encode(chunk).latent_dist.mean).sample.clamp(-1, 1)
        errors.append(((recon - chunk) ** 2).mean(dim=(1, 2, 3)))
    per_image = torch.cat(errors)
    values = [psnr_of_mse(float(m)) for m in per_image]
    return {"pooled_psnr_db": round(psnr_of_mse(float(per_image.mean())), 2),
            "median_psnr_db": round(float(np.median(values)), 2), "worst_psnr_db": round(min(values), 2),
            "count": len(values)}


def quality(vae: torch.nn.Module, split: shipped_images.PhotoSplit, recipe: Recipe) -> dict[str, dict]:
    """Reconstruction PSNR on held-out photographs (patches and 256 px centre crops) and on training patches."""
    held = photo_levels(split.held_out, (1.0, 0.5), recipe.patch)
    centre = []
    for name in split.held_out:
        image = torch.from_numpy(resized(shipped_images.photo(name), 1.0).transpose(2, 0, 1).copy())
        _, h, w = image.shape
        size = min(256, h, w) // 8 * 8
        top, left = (h - size) // 2, (w - size) // 2
        if size == 256:
            centre.append(image[:, top : top + size, left : left + size])
    train = photo_levels(split.train, (1.0, 0.5), recipe.patch)
    return {
        "held_out_patches_64px": reconstruction_psnr(vae, grid_patches(held, recipe.patch)),
        "held_out_centre_crops_256px": reconstruction_psnr(vae, torch.stack(centre)),
        "training_patches_64px": reconstruction_psnr(vae, grid_patches(train, recipe.patch)[::4]),
    }


# ----------------------------------------------------------------------------------------------- output
def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _replace_folder(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train(recipe: Recipe, out: Path) -> dict:
    """Train, measure and write the VAE folder to `out` atomically; returns the build info."""
    import diffusers

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    load_start = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    split = shipped_images.photo_split()
    levels = photo_levels(split.train, recipe.scales, recipe.patch)
    vae = build_photo_vae(recipe.seed, recipe.block_out_channels, recipe.layers_per_block, recipe.latent_channels,
                          recipe.norm_groups, recipe.patch)
    losses = train_vae(vae, levels, recipe)
    trained, cpu_trained = time.perf_counter(), time.process_time()
    load_trained = os.getloadavg()
    vae.requires_grad_(False)
    shift, scale = latent_factors(vae, levels, recipe)
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    measured = quality(vae, split, recipe)
    _log(f"latents: shift {shift:.4f} scale {scale:.4f}; quality {json.dumps(measured)}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)
        vae.save_pretrained(tmp, safe_serialization=True)
        info = {
            "name": "photo-vae",
            "script": "scripts/train_photo_vae.py",
            "command": " ".join(["scripts/train_photo_vae.py", *sys.argv[1:]]),
            "recipe": dataclasses.asdict(recipe),
            "data": {
                "training_photographs": list(split.train),
                "held_out_photographs": list(split.held_out),
                "split_seed": shipped_images.SPLIT_SEED,
                "source": "scikit-image data files and scikit-learn sample images shipped in the installed "
                          "packages (references/common/shipped_images.py)",
                "preprocessing": "grey replicated to RGB, shrunk by each of the recipe's scales (PIL Lanczos), "
                                 "[-1, 1]",
            },
            "vae_latents": {"shift_factor": shift, "scaling_factor": scale},
            "losses": losses,
            "quality": measured,
            "parameters": sum(p.numel() for p in vae.parameters()),
            "determinism": "torch.set_num_threads(1), torch.use_deterministic_algorithms(True), "
                           "generators seeded seed*16+index",
            "time_s": {"training": round(trained - start, 1), "total": round(time.perf_counter() - start, 1),
                       "training_cpu": round(cpu_trained - cpu_start, 1)},
            "load_average_1m": {"start": round(load_start[0], 2), "after_training": round(load_trained[0], 2)},
            "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "arch": platform.machine()},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "diffusers": diffusers.__version__, "numpy": np.__version__},
            "sha256": {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*.safetensors"))},
        }
        (tmp / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors writes owner-only files; the checkpoint is shared
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PHOTO_VAE_CHECKPOINT,
                        help="output folder (default references/checkpoints/photo-vae)")
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    args = parser.parse_args(argv)
    if args.seed < 0 or args.steps < 1:
        parser.exit(EXIT_USAGE, f"train_photo_vae.py: --seed must be >= 0 and --steps >= 1, got {args.seed}, "
                                f"{args.steps}\n")
    info = train(Recipe(seed=args.seed, steps=args.steps), args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    _log(f"wrote {args.out} ({size / 1e6:.2f} MB) in {info['time_s']['total']:.0f} s (training "
         f"{info['time_s']['training']:.0f} s wall, {info['time_s']['training_cpu']:.0f} s CPU); load average "
         f"{info['load_average_1m']['start']} -> "
         f"{info['load_average_1m']['after_training']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
