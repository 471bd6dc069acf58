"""Train the flux-digits checkpoint: a text-conditioned FLUX.1-format model of scikit-learn's handwritten digits.

Why it exists: random-weight checkpoints give noise even when both sides agree, so the harness needs one small
model whose correct output is a real picture ("a handwritten digit 7" -> a 7). The result is a standard
Diffusers FluxPipeline folder (FluxTransformer2DModel, AutoencoderKL, CLIP + T5 with in-memory tokenizers,
FLUX.1-dev's flow-match scheduler) that both Diffusers and the native loader read.

Recipe (see `Recipe`): the two text encoders stay random but fixed (T5's per-token states carry the digit);
the VAE is trained first (MSE + KL on 32x32 digits -> 8x8x16 latents), its latent mean/std become
`shift_factor`/`scaling_factor`, then the transformer learns rectified flow on the normalised latents with
10% empty-prompt dropout (so true CFG with an empty negative prompt works), AdamW with warm-up and cosine
decay, and EMA weights are saved.

Deterministic: one CPU thread, `torch.use_deterministic_algorithms(True)`, every random draw from a
generator seeded from `--seed`. Two runs on one machine and torch build give bitwise-identical weights
(the sha256 of each weight file is in the build info, so a rerun can be checked against the shipped one).

    .venv/bin/python scripts/train_digits.py                     # rebuild references/checkpoints/flux-digits
    .venv/bin/python scripts/train_digits.py --out /tmp/d --dit-steps 20 --vae-steps 20   # quick determinism check
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from references.common.tiny_build import BUILD_INFO_FILE  # noqa: E402
from references.flux.components import FLUX_DEV_SCHEDULER, build_flux_components  # noqa: E402
from references.flux.digits import (  # noqa: E402
    DIGITS_CHECKPOINT,
    IMAGE_SIZE,
    MAX_SEQUENCE_LENGTH,
    NEGATIVE_PROMPT,
    digit_images,
    digit_prompt,
)

EXIT_USAGE = 2


@dataclass(frozen=True)
class Recipe:
    """Every number that decides the checkpoint; recorded whole in the build info."""

    seed: int = 0
    image_size: int = IMAGE_SIZE
    max_sequence_length: int = MAX_SEQUENCE_LENGTH

    # random, fixed text encoders (sizes as references/flux/tiny.py's defaults)
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

    # VAE: 32 px -> 8x8x16 latent (a VAE scale factor of 4)
    vae_block_out_channels: tuple[int, ...] = (16, 32, 32)
    vae_layers_per_block: int = 1
    vae_latent_channels: int = 16
    vae_norm_groups: int = 8
    vae_steps: int = 400
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-3  # times the KL per latent element, against the MSE per pixel

    # transformer: 2 double + 2 single blocks, 4 heads x 32
    dit_layers: int = 2
    dit_single_layers: int = 2
    dit_heads: int = 4
    dit_head_dim: int = 32
    dit_axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    dit_steps: int = 1500
    dit_batch: int = 64
    dit_lr: float = 1e-3
    dit_warmup: int = 100
    dit_weight_decay: float = 0.01
    dit_grad_clip: float = 1.0
    dit_cond_dropout: float = 0.1  # share of samples trained on the empty prompt (for true CFG)
    dit_ema_decay: float = 0.999
    dit_logit_normal_std: float = 1.0  # sigma = sigmoid(N(0, std)), as SD3/FLUX training


# --------------------------------------------------------------------------------------------------- build
def _generator(recipe: Recipe, index: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(recipe.seed * 16 + index)


def build_components(recipe: Recipe) -> dict:
    """All FluxPipeline components with initial weights: encoders stay like this, VAE and DiT get trained."""
    components = build_flux_components(recipe, recipe.seed, guidance_embeds=False, vae_sample_size=recipe.image_size,
                                       scheduler=FLUX_DEV_SCHEDULER)
    for name in ("text_encoder", "text_encoder_2"):
        components[name].eval().requires_grad_(False)
    return components


# ------------------------------------------------------------------------------------------------- helpers
def _batches(n: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches: a fresh permutation per epoch, drawn from `generator`."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch + 1, batch):
            yield order[start : start + batch]


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): FLUX's 2x2 patch tokens, channels ordered (C, dy, dx)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def _image_ids(grid: int) -> torch.Tensor:
    """(grid*grid, 3) position ids (0, row, col) of the packed image tokens, as FluxPipeline builds them."""
    rows = torch.arange(grid)[:, None].expand(grid, grid)
    cols = torch.arange(grid)[None, :].expand(grid, grid)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(grid * grid, 3).float()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- VAE
def train_vae(vae: torch.nn.Module, images: torch.Tensor, recipe: Recipe) -> dict[str, float]:
    """Fit the autoencoder on images in [-1, 1]; returns the last losses."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    generator = _generator(recipe, 10)
    batches = _batches(len(images), recipe.vae_batch, generator)
    mse = kl = torch.zeros(())
    for step in range(recipe.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, recipe.vae_steps, recipe.vae_lr, warmup=20)
        x = images[next(batches)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().sum() / posterior.mean.numel()  # KL per latent element
        loss = mse + recipe.vae_kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == recipe.vae_steps - 1:
            _log(f"vae step {step:4d}  mse {mse.item():.5f}  kl/elem {kl.item():.4f}")
    vae.eval()
    return {"mse": mse.item(), "kl_per_element": kl.item()}


@torch.no_grad()
def encode_dataset(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Posterior means (N, C, h, w) of every image: the transformer's training data before normalising."""
    return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(256)])


@torch.no_grad()
def reconstruction_mse(vae: torch.nn.Module, images: torch.Tensor, latents: torch.Tensor) -> float:
    recon = torch.cat([vae.decode(chunk).sample for chunk in latents.split(256)])
    return F.mse_loss(recon, images).item()


# ------------------------------------------------------------------------------------------- transformer
@torch.no_grad()
def encode_prompts(pipe: object, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 states (11, L, D) and CLIP pooled vectors (11, D'): rows 0-9 the digits, row 10 the empty prompt.

    Encoded one prompt at a time through FluxPipeline.encode_prompt itself, exactly as sampling will see them.
    """
    prompts = [digit_prompt(d) for d in range(10)] + [NEGATIVE_PROMPT]
    tokens, pooled = [], []
    for prompt in prompts:
        t5, clip, _ = pipe.encode_prompt(  # type: ignore[attr-defined]
            prompt=prompt, prompt_2=None, max_sequence_length=recipe.max_sequence_length
        )
        tokens.append(t5)
        pooled.append(clip)
    return torch.cat(tokens), torch.cat(pooled)


def train_transformer(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    labels: torch.Tensor,
    text: tuple[torch.Tensor, torch.Tensor],
    recipe: Recipe,
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Rectified flow on normalised latents (N, C, h, w): x_t = (1-s) x0 + s noise, target noise - x0.

    Returns the EMA copy (what gets saved) and the mean loss of the last 100 steps.
    """
    prompt_tokens, prompt_pooled = text
    empty = len(prompt_tokens) - 1
    grid = latents.shape[-1] // 2
    img_ids = _image_ids(grid)
    txt_ids = torch.zeros(recipe.max_sequence_length, 3)
    transformer.train()
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=recipe.dit_lr, weight_decay=recipe.dit_weight_decay)
    generator = _generator(recipe, 20)
    batches = _batches(len(latents), recipe.dit_batch, generator)
    recent: list[float] = []
    for step in range(recipe.dit_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, recipe.dit_steps, recipe.dit_lr, recipe.dit_warmup)
        index = next(batches)
        x0 = latents[index]
        cond = labels[index].clone()
        cond[torch.rand(len(index), generator=generator) < recipe.dit_cond_dropout] = empty
        sigma = torch.sigmoid(torch.randn(len(index), generator=generator) * recipe.dit_logit_normal_std)
        noise = torch.randn(x0.shape, generator=generator)
        s = sigma[:, None, None, None]
        x_t = (1.0 - s) * x0 + s * noise
        prediction = transformer(
            hidden_states=_pack(x_t),
            encoder_hidden_states=prompt_tokens[cond],
            pooled_projections=prompt_pooled[cond],
            timestep=sigma,  # FluxPipeline passes t/1000 = sigma; the model scales by 1000 itself
            img_ids=img_ids,
            txt_ids=txt_ids,
            return_dict=False,
        )[0]
        loss = F.mse_loss(prediction, _pack(noise - x0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), recipe.dit_grad_clip)
        optimizer.step()
        decay = min(recipe.dit_ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), transformer.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - decay)
        recent = (recent + [loss.item()])[-100:]
        if step % 100 == 0 or step == recipe.dit_steps - 1:
            _log(f"dit step {step:4d}  loss {loss.item():.4f}  (mean of last {len(recent)}: "
                 f"{sum(recent) / len(recent):.4f})")
    return ema, {"flow_loss_last_100": sum(recent) / len(recent)}


# ------------------------------------------------------------------------------------------------- output
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every safetensors file, keyed by its path inside the folder."""
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*.safetensors"))}


def _versions() -> dict[str, str]:
    import diffusers
    import numpy
    import sklearn
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
    }


def _replace_folder(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; an older checkpoint there is swapped out, then deleted."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train(recipe: Recipe, out: Path) -> dict:
    """Train everything and write the pipeline folder to `out` atomically; returns the build info."""
    from diffusers import FluxPipeline

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    load_start = os.getloadavg()
    start = time.perf_counter()

    components = build_components(recipe)
    pipe = FluxPipeline(**components)
    images01, labels = digit_images(recipe.image_size)
    images = images01.expand(-1, 3, -1, -1).contiguous() * 2.0 - 1.0  # (N, 3, H, W) in [-1, 1]

    vae = components["vae"]
    vae_losses = train_vae(vae, images, recipe)
    vae.requires_grad_(False)
    means = encode_dataset(vae, images)
    shift = means.mean().item()
    scale = 1.0 / means.std().item()
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    vae_losses["reconstruction_mse_of_means"] = reconstruction_mse(vae, images, means)
    _log(f"vae latents: shift {shift:.4f}  scale {scale:.4f}  mse(decode(mean)) "
         f"{vae_losses['reconstruction_mse_of_means']:.5f}")
    vae_done = time.perf_counter()

    text = encode_prompts(pipe, recipe)
    normalised = (means - shift) * scale
    ema, dit_losses = train_transformer(components["transformer"], normalised, labels, text, recipe)
    dit_done = time.perf_counter()
    load_end = os.getloadavg()

    pipe = FluxPipeline(**{**components, "transformer": ema})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)
        pipe.save_pretrained(tmp, safe_serialization=True)
        info = {
            "name": "flux-digits",
            "script": "scripts/train_digits.py",
            "command": " ".join(["scripts/train_digits.py", *sys.argv[1:]]),
            "recipe": dataclasses.asdict(recipe),
            "data": {
                "source": "sklearn.datasets.load_digits (1,797 8x8 images, 0..16)",
                "preprocessing": f"/16, bicubic to {recipe.image_size}x{recipe.image_size} "
                "(align_corners=False), clamped to [0,1], 3 channels, scaled to [-1,1]",
                "count": len(labels),
            },
            "prompts": {
                "template": digit_prompt(7).replace("7", "{digit}"),
                "negative": NEGATIVE_PROMPT,
                "max_sequence_length": recipe.max_sequence_length,
            },
            "vae_latents": {"shift_factor": shift, "scaling_factor": scale},
            "losses": {"vae": vae_losses, "transformer": dit_losses},
            "parameters": {
                name: sum(p.numel() for p in components[name].parameters())
                for name in ("transformer", "vae", "text_encoder", "text_encoder_2")
            },
            "determinism": "torch.set_num_threads(1), torch.use_deterministic_algorithms(True), "
            "generators seeded seed*16+index",
            "time_s": {
                "vae": round(vae_done - start, 1),
                "transformer": round(dit_done - vae_done, 1),
                "total": round(dit_done - start, 1),
            },
            "load_average_1m": {"start": round(load_start[0], 2), "end": round(load_end[0], 2)},
            "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "arch": platform.machine()},
            "versions": _versions(),
            "sha256": weight_hashes(tmp),
        }
        (tmp / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DIGITS_CHECKPOINT,
                        help="output folder (default references/checkpoints/flux-digits)")
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--vae-steps", type=int, default=Recipe.vae_steps)
    parser.add_argument("--dit-steps", type=int, default=Recipe.dit_steps)
    args = parser.parse_args(argv)
    for name in ("seed", "vae_steps", "dit_steps"):
        if getattr(args, name) < 0:
            parser.exit(EXIT_USAGE, f"train_digits.py: --{name.replace('_', '-')} must be >= 0, got "
                        f"{getattr(args, name)}\n")
    return Recipe(seed=args.seed, vae_steps=args.vae_steps, dit_steps=args.dit_steps), args.out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    recipe, out = parse_args(argv)
    from references.common.reference_pipeline import quiet_libraries

    quiet_libraries()
    info = train(recipe, out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    _log(f"wrote {out} ({size / 1e6:.2f} MB) in {info['time_s']['total']:.0f} s; "
         f"load average {info['load_average_1m']['start']} -> {info['load_average_1m']['end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
