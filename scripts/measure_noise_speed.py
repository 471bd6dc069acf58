"""Time `diffparity noise` on 100 PNG files of 512x512 RGB, process start included (the README's speed figure).

The files: 60 crops of the shipped photographs, 20 PIL drawings (references/common/line_art.py) and 20 uniform-noise
frames, written to a temporary folder; the CLI judges them in one process, `--repeat` times; wall and CPU time
of each run and the 1-minute load average are printed (the machine is shared: say the load with the figure).

    .venv/bin/python scripts/measure_noise_speed.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from references.common import line_art, shipped_images  # noqa: E402

SIDE = 512


def write_inputs(folder: Path) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    names = shipped_images.photo_names()
    images = [shipped_images.random_crop(shipped_images.photo(names[i % len(names)]), SIDE, SIDE, rng)
              for i in range(60)]
    drawers = list(line_art.DRAWERS.values())
    images += [drawers[i % len(drawers)](rng, SIDE, SIDE) for i in range(20)]
    images += [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(20)]
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_inputs(Path(tmp))
        command = [sys.executable, "-m", "harness.cli", "noise", *map(str, paths)]
        for run in range(args.repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            flagged = sum(" flagged " in line for line in result.stdout.splitlines())
            print(f"run {run + 1}: {len(paths)} files in {wall:.2f} s wall, {cpu:.2f} s CPU (exit {result.returncode}, "
                  f"{flagged} flagged); load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
