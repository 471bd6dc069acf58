"""Study the image detector's false alarms on fine textures at 64 px and zoom-video frames (issue 16), on TRAIN data
only: would a refit with more clean examples of them (more train halves, clean video frames, fine textures made
from the train half's photographs) remove them without losing catches?

    .venv/bin/python scripts/build_noise_corpus.py --half train                       # and --corpus-seed 46016, 56016
    .venv/bin/python scripts/study_image_false_alarms.py [--seen 66016 96016]

Measures, with the rule checks alone (as scripts/train_noise_model.py does), every image and every frame of the
clean videos of the train halves of corpus seeds 16016, 46016 and 56016, and a texture set drawn here from the
train half's photographs only (crops of 128-384 px shrunk to 64 px, as they are and through the photo VAE; 128 px
zoom frames through the VAE). Reports the shipped model's false alarms there, and for each candidate training set a
5-fold cross-validation repeated over 5 fold seeds, grouped by photograph (a held-out fold holds photographs its
model never saw, as a fresh test half does), with the shipped choices (C, margin, envelope). `--seen` lists which
clean items of those already-judged test halves (rendered with build_noise_corpus.py --half test) each candidate
would flag: a diagnostic, never a reason to pick a threshold. Writes out/noise-study/report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from build_noise_corpus import default_out, manifest_path  # noqa: E402
from train_noise_model import RULES_ONLY, fit_arrays  # noqa: E402

from harness.cli.commands.noise import read_frames  # noqa: E402
from harness.noise.detector import detect_noise  # noqa: E402
from harness.noise.features import FEATURE_NAMES  # noqa: E402
from harness.noise.learned import load_model  # noqa: E402
from references.flux.noise_corpus import CORPUS_SEED, CorpusItem, item_path, photo_halves  # noqa: E402

TRAIN_SEEDS = (CORPUS_SEED, 46016, 56016)
TEXTURE_SEED = 76016  # the texture set's crops
TEXTURE_CROPS = (128, 192, 256, 384)  # shrunk to 64x64 (a fine texture at 8x8 latent cells)
GARBAGE_CLASSES = ("pure_noise", "half_denoised", "packing", "wrong_denoiser")
FOLD_SEEDS = (CORPUS_SEED, 1, 2, 3, 4)
OUT = Path("out/noise-study")


def _row(pixels: np.ndarray, **meta: Any) -> dict[str, Any]:
    verdict = detect_noise(pixels, video=False, thresholds=RULES_ONLY)
    return {**meta, "features": verdict.statistics.get("features")}


def corpus_rows(seed: int, half: str, clean_only: bool = False) -> list[dict[str, Any]]:
    """Images (and clean videos' frames) of one rendered corpus half that the large model judges (>= 64 px)."""
    folder = default_out(seed)
    rows = []
    for item in json.loads(manifest_path(seed).read_text())["items"]:
        if item["half"] != half or item["label"] == "either" or (clean_only and item["label"] != "clean"):
            continue
        if item["label"] == "garbage" and item["frames"] > 1:  # garbage videos are judged as videos, not frames
            continue
        path = item_path(folder, CorpusItem(**item))
        if not path.is_file():
            raise SystemExit(f"study_image_false_alarms.py: {path} missing; render it with "
                             f"scripts/build_noise_corpus.py --corpus-seed {seed} --half {half}")
        frames, video = read_frames(path)
        meta = {k: item[k] for k in ("name", "label", "category", "group", "height", "width")} | {"seed": seed}
        for k, frame in enumerate(frames if video else [frames]):
            rows.append(_row(frame, **meta, frame=k if video else -1))
    return [r for r in rows if r["features"] is not None and min(r["height"], r["width"]) >= 64]


def texture_frames() -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray | None]]:
    """Clean frames from the train half's photographs only: fine textures at 64 px (as they are and through the
    VAE) and 128 px zoom frames through the VAE; each with its meta and the normalised latents the VAE decoded
    ((C, h, w), None for a photo crop as it is)."""
    import torch
    from PIL import Image

    from references.common import shipped_images
    from references.flux.noise_corpus import Renderer
    from references.flux.photo_vae import load_photo_vae

    torch.set_num_threads(1)
    renderer = Renderer(load_photo_vae(), TEXTURE_SEED)
    photos = sorted(n for n, h in photo_halves().items() if h == "train")

    def shrink(image: np.ndarray, side: int) -> np.ndarray:
        return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((side, side), Image.Resampling.LANCZOS))

    def through_vae(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        latents = renderer.encode(image)  # (1, C, h, w), normalised
        return renderer.decode_normalised(latents)[0], latents[0].float().numpy()

    for number, name in enumerate(photos):
        rng = np.random.default_rng([TEXTURE_SEED, number])
        photo = shipped_images.photo(name)
        meta = {"label": "clean", "group": f"photo:{name}", "seed": TEXTURE_SEED, "frame": -1}
        for crop_side in TEXTURE_CROPS:
            for j in range(2):
                small = shrink(shipped_images.random_crop(photo, crop_side, crop_side, rng), 64)
                yield ({**meta, "name": f"tex64/{name}/{crop_side}/{j}", "category": "texture_photo", "height": 64,
                        "width": 64}, small, None)
                decoded, latents = through_vae(small)
                yield ({**meta, "height": 64, "width": 64, "name": f"tex64rec/{name}/{crop_side}/{j}",
                        "category": "texture_recon"}, decoded, latents)
        for j in range(2):
            big = shipped_images.random_crop(photo, 256, 256, rng)
            for k in (0, 3, 7):  # as the corpus's zoom videos: a 256 - 8k crop shrunk to 128
                decoded, latents = through_vae(shrink(big[4 * k : 256 - 4 * k, 4 * k : 256 - 4 * k], 128))
                yield ({**meta, "height": 128, "width": 128, "name": f"zoom128/{name}/{j}/{k}",
                        "category": "texture_zoom"}, decoded, latents)


def texture_rows() -> list[dict[str, Any]]:
    """The texture set's frames (`texture_frames`) with their statistics."""
    return [_row(pixels, **meta) for meta, pixels, _ in texture_frames()]


def arrays(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[r["features"][f] for f in FEATURE_NAMES] for r in rows], dtype=np.float64)
    return x, np.array([r["category"] if r["label"] == "garbage" else "" for r in rows])


def group_of(row: dict[str, Any]) -> str:
    """Photograph groups span the halves (one photograph, one fold); other groups are per seed."""
    group = row["group"]
    return group if group.startswith(("photo:", "graphic:")) else f"{row['seed']}:{group}"


def cross_validate(rows: list[dict[str, Any]], folds: int = 5) -> dict[str, Any]:
    x, category = arrays(rows)
    groups = sorted({group_of(r) for r in rows})
    caught_total = {c: 0 for c in GARBAGE_CLASSES}
    alarms = []
    for fold_seed in FOLD_SEEDS:
        order = np.random.default_rng(fold_seed).permutation(len(groups))
        fold = {groups[i]: rank % folds for rank, i in enumerate(order)}
        fold_of = np.array([fold[group_of(r)] for r in rows])
        caught = np.zeros(len(rows), dtype=bool)
        for k in range(folds):
            model = fit_arrays(x[fold_of != k], category[fold_of != k])
            caught[fold_of == k] = [model.fires(v) for v in x[fold_of == k]]
        for c in GARBAGE_CLASSES:
            caught_total[c] += int(caught[category == c].sum())
        alarms += [f"{rows[i]['seed']}:{rows[i]['name']}" + (f"#{rows[i]['frame']}" if rows[i]["frame"] >= 0 else "")
                   + f" ({rows[i]['height']}x{rows[i]['width']})" for i in np.flatnonzero(caught & (category == ""))]
    clean = int((category == "").sum())
    return {"catch": {c: round(caught_total[c] / (int((category == c).sum()) * len(FOLD_SEEDS)), 3)
                      for c in GARBAGE_CLASSES},
            "false_alarms": len(alarms), "clean_judged": clean * len(FOLD_SEEDS), "alarm_examples": alarms[:12]}


def flagged(model: Any, rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        fired = [s for s in model.score(r["features"]) if s.fired]
        if r["label"] == "clean" and fired:
            s = max(fired, key=lambda s: s.logit - s.threshold)
            frame = f"#{r['frame']}" if r["frame"] >= 0 else ""
            out.append(f"{r['seed']}:{r['name']}{frame} ({r['height']}x{r['width']}): {s.head} {s.logit:+.2f} "
                       f">= {s.threshold:+.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seen", type=int, nargs="*", default=[], help="already-judged fresh seeds whose rendered "
                        "test halves' clean items are listed per candidate (diagnostic only)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    halves = {seed: corpus_rows(seed, "train") for seed in TRAIN_SEEDS}
    textures = texture_rows()
    seen = [r for seed in args.seen for r in corpus_rows(seed, "test", clean_only=True)]
    print(f"measured {sum(map(len, halves.values()))} train-half frames, {len(textures)} texture frames, "
          f"{len(seen)} seen clean frames ({time.perf_counter() - start:.0f} s)", flush=True)
    shipped = load_model()
    report: dict[str, Any] = {"shipped_model_false_alarms": {
        f"train half {seed}{' (its training half)' if seed == CORPUS_SEED else ''}": flagged(shipped, rows)
        for seed, rows in halves.items()} | {"texture set": flagged(shipped, textures), "seen": flagged(shipped, seen)}}
    images = {seed: [r for r in rows if r["frame"] < 0] for seed, rows in halves.items()}
    candidates = {
        "shipped data (16016 images)": images[CORPUS_SEED],
        "16016 + clean video frames": halves[CORPUS_SEED],
        "3 train halves, images": [r for rows in images.values() for r in rows],
        "3 train halves + clean video frames": [r for rows in halves.values() for r in rows],
        "16016 + texture set": images[CORPUS_SEED] + textures,
        "3 train halves + frames + texture set": [r for rows in halves.values() for r in rows] + textures,
    }
    report["candidates"] = {}
    for name, rows in candidates.items():
        x, category = arrays(rows)
        model = fit_arrays(x, category)
        result = {"images": len(rows), "thresholds": {h.name: round(h.threshold, 2) for h in model.heads},
                  **cross_validate(rows), "seen_flagged": flagged(model, seen)}
        report["candidates"][name] = result
        print(f"{name}: {len(rows)} frames, thresholds {result['thresholds']}, CV catch {result['catch']}, "
              f"CV false alarms {result['false_alarms']} of {result['clean_judged']} "
              f"{result['alarm_examples'][:4]}; seen flagged {len(result['seen_flagged'])}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    for what, names in report["shipped_model_false_alarms"].items():
        print(f"shipped model, {what}: {len(names)} flagged {names[:8]}")
    print(f"{time.perf_counter() - start:.0f} s (load {os.getloadavg()[0]:.1f}); {OUT / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
