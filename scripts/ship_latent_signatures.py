"""Measure and ship the latent signatures of the project's own VAEs (references/latent_signatures/<sha>.json).

The photo VAE (references/checkpoints/photo-vae) and flux-digits' VAE (references/checkpoints/flux-digits/vae):
with their signatures shipped, `golden verify flux-digits` reads a JSON instead of importing Diffusers to encode
the signature photographs. Rerun after retraining either VAE (its weights' sha256 names the file).

    .venv/bin/python scripts/ship_latent_signatures.py [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from references.common.latent_signature import (  # noqa: E402
    SHIPPED,
    measure_signature,
    shipped_signature_path,
    vae_weights_sha256,
)

VAES = (ROOT / "references" / "checkpoints" / "photo-vae", ROOT / "references" / "checkpoints" / "flux-digits" / "vae")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="measure again and compare with the shipped files")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    SHIPPED.mkdir(parents=True, exist_ok=True)
    differing = 0
    for folder in VAES:
        signature = measure_signature(folder).to_dict()
        path = shipped_signature_path(vae_weights_sha256(folder))
        signature["vae"].pop("seconds", None)  # a timing, not part of what is shipped
        text = json.dumps(signature, indent=None) + "\n"
        if args.check:
            same = path.is_file() and json.loads(path.read_text()) == json.loads(text)
            differing += not same
            print(f"{folder.relative_to(ROOT)}: {'same as' if same else 'DIFFERS from'} {path.relative_to(ROOT)}")
        else:
            path.write_text(text)
            print(f"{folder.relative_to(ROOT)}: wrote {path.relative_to(ROOT)} ({len(text)} bytes)")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
