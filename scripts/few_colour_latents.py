"""The latent check on drawings through the photo VAE, with and without its few-colour guard (issue 16).

Draws line_art's drawings (flat-colour graphics, silhouettes, text, QR-like patterns, line drawings) from seeds
outside every noise corpus (910000 + i), encodes them with the photo VAE, and judges their latents, and the same
latents with the channels reversed and randomly permuted, with the check as shipped and with the guard off
(`few_colour_share` above 1). Prints flagged counts per drawer and the ranges of the guard's statistics over the
drawings the unguarded check flags (docs/noise-learned-check.md, "The few-colour guard"):

    .venv/bin/python scripts/few_colour_latents.py [--count 200]

About 40 s here for 200 of each drawer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness.noise.latent_check import LatentThresholds, judge_latents  # noqa: E402
from references.common import line_art  # noqa: E402
from references.common.latent_signature import latent_signature  # noqa: E402
from references.flux import noise_corpus  # noqa: E402
from references.flux.photo_vae import PHOTO_VAE_CHECKPOINT, encode_normalised, load_photo_vae  # noqa: E402

DRAWERS = ("flat_graphic", "silhouette", "text", "qr_like", "line_drawing")
SIZES = ((64, 64), (96, 128), (128, 128), (192, 256), (256, 256))
FIRST_SEED = 910000  # the corpora's items use their own seeds; these are not among them
UNGUARDED = LatentThresholds(few_colour_share=1.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="drawings per drawer (default 200)")
    args = parser.parse_args(argv)
    if args.count < 1:
        print(f"few_colour_latents.py: --count must be >= 1, got {args.count}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    signature, vae = latent_signature(PHOTO_VAE_CHECKPOINT), load_photo_vae()
    counts: Counter[tuple[str, str, str]] = Counter()
    unguarded_flagged: list[dict[str, float]] = []
    start = time.perf_counter()
    for drawer in DRAWERS:
        for i in range(args.count):
            rng = np.random.default_rng(FIRST_SEED + i)
            drawing = line_art.DRAWERS[drawer](rng, *SIZES[i % len(SIZES)])
            with torch.no_grad():
                z = encode_normalised(vae, noise_corpus._image_tensor(drawing))[0].double().numpy()
            for variant, latent in (("as drawn", z), ("reversed", z[::-1]), ("permuted", z[rng.permutation(16)])):
                guarded, unguarded = judge_latents(latent, signature), judge_latents(latent, signature, UNGUARDED)
                counts[(drawer, variant, "guard")] += guarded.flagged
                counts[(drawer, variant, "no guard")] += unguarded.flagged
                counts[(drawer, variant, "abstained")] += guarded.abstained is not None
                if variant == "as drawn" and unguarded.flagged:
                    unguarded_flagged.append({**unguarded.statistics, "fired": "+".join(unguarded.fired)})
    print(f"{args.count} drawings per drawer in {time.perf_counter() - start:.0f} s (load {os.getloadavg()[0]:.1f})")
    print("| drawer | latents | flagged without the guard | flagged with it | abstained |\n|---|---|---|---|---|")
    for drawer in DRAWERS:
        for variant in ("as drawn", "reversed", "permuted"):
            print(f"| {drawer} | {variant} | {counts[(drawer, variant, 'no guard')]}/{args.count} | "
                  f"{counts[(drawer, variant, 'guard')]}/{args.count} | {counts[(drawer, variant, 'abstained')]} |")
    if unguarded_flagged:
        print(f"\nas drawn, flagged without the guard: {len(unguarded_flagged)} "
              f"({dict(Counter(s['fired'] for s in unguarded_flagged))})")
        for name in ("pattern_alignment", "relabelling_gain", "leading_share", "leading_direction_fit"):
            values = [s[name] for s in unguarded_flagged]
            print(f"  {name}: {min(values):.2f} to {max(values):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
