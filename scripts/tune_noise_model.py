"""Choose the noise detector's tunable rules by cross-validation on the TRAIN half of the noise corpus and the
calibration set only (never the held-out half): the learned heads' abstention rule (how far outside the range
of its training garbage a frame may lie before a head abstains) with the threshold margin, and the ink
connectivity a plain-ground frame needs for `pixel_noise` to call it a drawing.

    .venv/bin/python scripts/tune_noise_model.py gather     # measure once: out/noise-tune/*.json (~5 min)
    .venv/bin/python scripts/tune_noise_model.py choose     # cross-validate every candidate, print the choice
    .venv/bin/python scripts/tune_noise_model.py choose --small   # the same for the small-frame model

`gather` measures, with the rule checks alone, every frame of the calibration set (scripts/calibrate_noise_detector.py)
and of Canny tracings of the train half's photographs (references/common/line_art.py's `edge_drawing`, several
sizes and seeds: fine textures traced into one-pixel curves), and reads the train half's statistics from
`scripts/train_noise_model.py`'s features.json (run it once with --measure-only). `choose` fits the heads in 5
grouped folds of the train half for every candidate (envelope rule x slack x margin), scores the held-out
folds (catches per garbage class, false alarms on clean) and the calibration set's pictures with a model fitted
on the whole train half, and picks the candidate with the best worst-class catch rate among those with no false
alarm anywhere; ties go to the stricter (smaller) envelope. For pixel_noise it prints the ink connectivity of
every drawing and degenerate frame the old rule flags and the threshold in the middle of the gap.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from harness.noise import image_stats  # noqa: E402
from harness.noise.detector import Thresholds, as_frame_stack, judge_frame, resolve_range, unit_planes  # noqa: E402

RULES_ONLY = Thresholds(learned_model=False, drawing_ink_connectivity=math.inf)  # pixel_noise as before the ink
#  exemption, whose threshold is chosen from what this measures
OUT = Path("out/noise-tune")
TRACING_SIZES = ((128, 128), (256, 256), (384, 512), (512, 512), (512, 384))
TRACING_SEEDS = 3


def frame_records(frames: Any, video: bool) -> list[dict[str, Any]]:
    """Every frame's rule outcome and statistics: fired rules, noise fraction, flat share, ink connectivity and
    (frames >= 32 px) the learned check's named statistics."""
    stack, _ = as_frame_stack(frames)
    resolved = resolve_range(stack, "auto")
    out = []
    for index, raw in enumerate(stack):
        nonfinite = float(np.mean(~np.isfinite(raw))) if raw.dtype.kind == "f" else 0.0
        planes = unit_planes(raw, resolved)
        verdict = judge_frame(index, planes, nonfinite, RULES_ONLY)
        stats = verdict.statistics
        out.append({"fired": [c.name for c in verdict.checks if c.fired], "side": int(min(planes.shape[1:])),
                    "noise_fraction": stats.get("noise_fraction"), "flat_share": stats.get("flat_share"),
                    "ink": image_stats.ink_connectivity(planes) if nonfinite == 0 else None,
                    "features": stats.get("features")})
        if not video:
            break
    return out


def gather_calibration() -> list[dict[str, Any]]:
    import calibrate_noise_detector as calibration

    rows = []
    start = time.perf_counter()
    for source in calibration.SOURCES:
        for sample in source(False):
            rows.append({"category": sample.category, "expect": sample.expect, "name": sample.name,
                         "video": sample.video, "frames": frame_records(sample.frames, sample.video)})
            if len(rows) % 200 == 0:
                print(f"calibration: {len(rows)} samples ({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def gather_tracings() -> list[dict[str, Any]]:
    """Canny tracings of every train-half photograph of the corpus (the held-out half's are never looked at)."""
    from references.common import line_art, shipped_images
    from references.flux.noise_corpus import photo_halves

    rows = []
    for name, half in sorted(photo_halves().items()):
        if half != "train":
            continue
        for seed in range(TRACING_SEEDS):
            rng = np.random.default_rng([7301, seed])
            for height, width in TRACING_SIZES:
                image = line_art.edge_drawing(shipped_images.photo(name), height, width, rng)
                rows.append({"category": "tracing", "expect": "picture", "name": f"{name}#{seed}@{height}x{width}",
                             "video": False, "frames": frame_records(image, False)})
    return rows


def gather(args: argparse.Namespace) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tracings = gather_tracings()
    (OUT / "tracings.json").write_text(json.dumps(tracings) + "\n")
    print(f"tracings: {len(tracings)} ({time.perf_counter() - start:.0f} s)", flush=True)
    calibration = gather_calibration()
    (OUT / "calibration.json").write_text(json.dumps(calibration) + "\n")
    print(f"calibration: {len(calibration)} samples; {time.perf_counter() - start:.0f} s, "
          f"load {os.getloadavg()[0]:.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("gather", help="measure the calibration set and train-half tracings once")
    choose_parser = sub.add_parser("choose", help="cross-validate the candidates on what gather measured")
    choose_parser.add_argument("--small", action="store_true", help="for the small-frame model (32-63 px): the "
                               "small corpus's train half (train_noise_model.py --small) and calibration frames "
                               "of that size")
    args = parser.parse_args(argv)
    if args.command == "gather":
        return gather(args)
    from tune_noise_choice import choose

    return choose(OUT, small=args.small)


if __name__ == "__main__":
    sys.exit(main())
