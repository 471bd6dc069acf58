"""Build the noise corpus: garbage a natural-image VAE draws from broken latents, and clean pictures.

The items, their seeds and their half (train / test) come from references/flux/noise_corpus.py's `plan()`, a pure
function of fixed seeds, so the split is decided before anything is rendered or measured; the plan is committed
as references/noise_corpus/manifest.json and this script refuses to render a corpus whose plan differs from
it (pass --write-manifest after a deliberate change). Images are written as PNG (what a user would judge),
videos as uint8 .npy stacks (T, H, W, 3); beside every item a VAE drew, the normalised latents it decoded as
<name>.latent.npy (float32 (C, h, w), a video's (T, C, h, w)), for the latent check (harness/noise/latent_check.py):

    .venv/bin/python scripts/build_noise_corpus.py [--out out/noise-corpus] [--half train|test] [--limit N]
                                                   [--category NAME ...] [--corpus-seed N]

--corpus-seed draws a fresh corpus (new items; photographs and shipped graphics keep their halves): its plan is
committed as references/noise_corpus/manifest_seed<N>.json and it goes to out/noise-corpus-seed<N>; its test
half is a fresh held-out set. --small draws the small corpus (frames of 32-48 px a side, for the learned check
of small frames; manifest_small.json, out/noise-corpus-small).

Needs the photo VAE (references/checkpoints/photo-vae, scripts/train_photo_vae.py). About 5 minutes here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from references.common import shipped_images  # noqa: E402
from references.flux import noise_corpus  # noqa: E402
from references.flux.photo_vae import PHOTO_VAE_CHECKPOINT, PhotoVaeError, load_photo_vae  # noqa: E402

MANIFEST = ROOT / "references" / "noise_corpus" / "manifest.json"
EXIT_MISMATCH, EXIT_USAGE = 1, 2


def manifest_path(corpus_seed: int, small: bool = False) -> Path:
    """references/noise_corpus/manifest[_small][_seed<N>].json (the plain name for the default seed)."""
    suffix = ("_small" if small else "") + ("" if corpus_seed == noise_corpus.CORPUS_SEED else f"_seed{corpus_seed}")
    return MANIFEST.with_name(f"manifest{suffix}.json")


def default_out(corpus_seed: int, small: bool = False) -> Path:
    suffix = ("-small" if small else "") + ("" if corpus_seed == noise_corpus.CORPUS_SEED else f"-seed{corpus_seed}")
    return Path(f"out/noise-corpus{suffix}")


def manifest(items: list[noise_corpus.CorpusItem], corpus_seed: int = noise_corpus.CORPUS_SEED,
             small: bool = False) -> dict:
    """The committed record of the plan: seeds, sizes, the photo split and every item with its half."""
    split = shipped_images.photo_split()
    return {
        "corpus_seed": corpus_seed,
        **({"small": True} if small else {}),
        "photo_split_seed": shipped_images.SPLIT_SEED,
        "vae_held_out_photographs": list(split.held_out),
        "photo_halves": dict(sorted(noise_corpus.photo_halves().items())),
        "sizes": [list(s) for s in (noise_corpus.SMALL_SIZES if small else noise_corpus.SIZES)],
        "counts": {f"{label}/{half}": sum(i.label == label and i.half == half for i in items)
                   for label in ("clean", "garbage") for half in noise_corpus.HALVES},
        "items": [item.to_dict() for item in items],
    }


def write_item(path: Path, pixels: np.ndarray) -> None:
    """Atomic write of a PNG or .npy."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".npy":
        with open(tmp, "wb") as handle:
            np.save(handle, pixels, allow_pickle=False)
    else:
        Image.fromarray(pixels).save(tmp, format="PNG")
    os.replace(tmp, path)


def _vae_sha256() -> str:
    weights = PHOTO_VAE_CHECKPOINT / "diffusion_pytorch_model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="corpus folder (default out/noise-corpus, or "
                        "out/noise-corpus-seed<N> with --corpus-seed N)")
    parser.add_argument("--corpus-seed", type=int, default=noise_corpus.CORPUS_SEED,
                        help=f"plan seed (default {noise_corpus.CORPUS_SEED}; fresh held-out corpora: "
                             f"{', '.join(map(str, noise_corpus.FRESH_SEEDS))})")
    parser.add_argument("--small", action="store_true", help="the small corpus (32-48 px frames, no videos, "
                        "with digits): references/noise_corpus/manifest_small.json, out/noise-corpus-small")
    parser.add_argument("--half", choices=noise_corpus.HALVES, help="render one half only")
    parser.add_argument("--category", action="append", help="render only this category (repeatable)")
    parser.add_argument("--limit", type=int, help="render only the first N items of each category (quick look)")
    parser.add_argument("--write-manifest", action="store_true",
                        help=f"write the plan to {MANIFEST.relative_to(ROOT)} (after a deliberate change)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        print(f"build_noise_corpus.py: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return EXIT_USAGE

    import torch

    torch.set_num_threads(1)
    seed = args.corpus_seed
    out = args.out or default_out(seed, args.small)
    items = noise_corpus.plan(seed, args.small)
    planned = manifest(items, seed, args.small)
    committed = manifest_path(seed, args.small)
    if args.write_manifest:
        committed.parent.mkdir(parents=True, exist_ok=True)
        committed.write_text(json.dumps(planned, indent=1) + "\n")
        print(f"wrote {committed.relative_to(ROOT)} ({len(items)} items)")
    elif not committed.is_file():
        print(f"build_noise_corpus.py: no committed plan {committed.relative_to(ROOT)}; a new seed's plan is written "
              "with --write-manifest (and committed) before it is rendered", file=sys.stderr)
        return EXIT_MISMATCH
    elif json.loads(committed.read_text()) != planned:
        print(f"build_noise_corpus.py: the plan differs from {committed.relative_to(ROOT)}; the split must not "
              "change silently (rerun with --write-manifest after a deliberate change)", file=sys.stderr)
        return EXIT_MISMATCH
    try:
        vae = load_photo_vae()
    except PhotoVaeError as exc:
        print(f"build_noise_corpus.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    renderer = noise_corpus.Renderer(vae, seed)
    chosen, seen = [], {}
    for item in items:
        seen[item.category] = seen.get(item.category, 0) + 1
        wanted = args.category is None or item.category in args.category
        if wanted and (args.half is None or item.half == args.half) and (args.limit is None or
                                                                         seen[item.category] <= args.limit):
            chosen.append(item)
    start = time.perf_counter()
    for number, item in enumerate(chosen, 1):
        pixels, latents = renderer.render_with_latents(item)
        write_item(noise_corpus.item_path(out, item), pixels)
        if latents is not None:  # what the VAE decoded: the latent check judges it beside the image
            write_item(noise_corpus.latent_path(out, item), latents)
        if number % 25 == 0 or number == len(chosen):
            print(f"{number}/{len(chosen)} items ({time.perf_counter() - start:.0f} s)", flush=True)
    record = {"manifest": str(committed.relative_to(ROOT)), "vae_sha256": _vae_sha256(), "items": len(chosen),
              "seconds": round(time.perf_counter() - start, 1), "load_average_1m": os.getloadavg()[0]}
    (out / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {len(chosen)} items under {out} in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
