"""Build a random-weight checkpoint at a real DiT width with few blocks, for `diffparity bench --model` on a CPU.

    .venv/bin/python scripts/build_wide_checkpoint.py flux OUT [--double 1] [--single 1]
    .venv/bin/python scripts/build_wide_checkpoint.py wan OUT [--layers 2]

flux: FLUX.1-dev's DiT width (3072 = 24 heads x 128, RoPE axes 16/56/56, guidance embedding); wan: Wan 2.1 1.3B's
(1536 = 12 heads x 128, ffn 8960, freq 256). The text encoders and VAE stay the tiny ones (references/*/tiny.py),
so the DiT's share of a bench is at real width; an encoder or VAE at real width is what scripts/measure_load.py
builds (GBs). Weights are deterministic from seed 0.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=("flux", "wan"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--double", type=int, default=1, help="FLUX double-stream blocks (FLUX.1-dev: 19)")
    parser.add_argument("--single", type=int, default=1, help="FLUX single-stream blocks (FLUX.1-dev: 38)")
    parser.add_argument("--layers", type=int, default=2, help="Wan DiT layers (Wan 2.1 1.3B: 30)")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.family == "flux":
        from references.flux.tiny import TinyFluxConfig, build_tiny_flux

        build_tiny_flux(args.out, 0, TinyFluxConfig(dit_heads=24, dit_head_dim=128, dit_axes_dims_rope=(16, 56, 56),
                                                    dit_layers=args.double, dit_single_layers=args.single))
    else:
        from references.wan.tiny import TinyWanConfig, build_tiny_wan

        build_tiny_wan(args.out, 0, TinyWanConfig(dit_layers=args.layers, dit_heads=12, dit_head_dim=128,
                                                  dit_ffn_dim=8960, dit_freq_dim=256))
    print(f"built {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
