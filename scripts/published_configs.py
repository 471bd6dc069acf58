"""Build a published-config folder of any size, then (optionally) run it as a user would.

The slow test tests/test_published_configs.py builds FLUX.1-dev, FLUX.1-schnell and Wan 2.1 T2V 1.3B folders with
one layer per stack; this script builds the larger ones (more layers up to the real counts, the public shard
sizes) with the same builders (references/flux/published.py, references/wan/published.py), saved by Diffusers
itself in bf16. Random weights: the build record says so, so `run --expect auto` expects noise.

    python scripts/published_configs.py flux-dev DIR [--double 19 --single 38 --t5-layers 24 --clip-layers 12]
    python scripts/published_configs.py flux-schnell DIR [same options]
    python scripts/published_configs.py wan-1.3b DIR [--dit-layers 30 --umt5-layers 24]
    ... [--shard 5GB] [--run -- RUN_FLAGS]     (--run: then `diffparity run --model DIR RUN_FLAGS`)

Real layer counts: FLUX.1 19 double + 38 single blocks, T5-XXL 24, CLIP-L 12; Wan 2.1 1.3B 30 DiT blocks, UMT5-XXL
24. Memory: about 2 bytes per parameter to build, 4 per parameter per side for an fp32 run (FLUX.1-dev in full:
12B + 4.8B parameters, so ~67 GiB per side in fp32: use --dtype bf16 or fewer layers on a small machine).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    raw = sys.argv[1:]
    split = raw.index("--") if "--" in raw else len(raw)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=["flux-dev", "flux-schnell", "wan-1.3b"])
    parser.add_argument("out", type=Path, help="the folder to create (must not exist)")
    parser.add_argument("--double", type=int, default=2, help="FLUX double-stream blocks (real: 19)")
    parser.add_argument("--single", type=int, default=2, help="FLUX single-stream blocks (real: 38)")
    parser.add_argument("--t5-layers", type=int, default=2, help="T5-XXL encoder layers (real: 24)")
    parser.add_argument("--clip-layers", type=int, default=12, help="CLIP-L text layers (real: 12)")
    parser.add_argument("--dit-layers", type=int, default=2, help="Wan DiT blocks (1.3B: 30)")
    parser.add_argument("--umt5-layers", type=int, default=2, help="UMT5-XXL encoder layers (real: 24)")
    parser.add_argument("--shard", default="5GB", help="max_shard_size (default 5GB, as the public repositories)")
    parser.add_argument("--run", action="store_true", help="then run `diffparity run --model OUT` with the flags "
                                                           "after `--`")
    args = parser.parse_args(raw[:split])
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    start = time.perf_counter()
    if args.variant == "wan-1.3b":
        from references.wan.published import build_published_wan

        build_published_wan(args.out, dit_layers=args.dit_layers, umt5_layers=args.umt5_layers, shard=args.shard)
    else:
        from references.flux.published import build_published_flux

        build_published_flux(args.out, args.variant, double=args.double, single=args.single,
                             t5_layers=args.t5_layers, clip_layers=args.clip_layers, shard=args.shard)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"built {args.out} ({size / 1024**3:.2f} GiB) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    command = [str(Path(sys.executable).with_name("diffparity")), "run", "--model", str(args.out), *raw[split + 1:]]
    if not args.run:
        print(" ".join(command))
        return 0
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
