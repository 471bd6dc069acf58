"""Would the latents overrule the image detector's `noise_latents` head well? Measured on TRAIN data only (issue 16).

    .venv/bin/python scripts/build_noise_corpus.py --half train     # and --corpus-seed 46016, 56016
    .venv/bin/python scripts/study_latent_overrule.py

For every item of the train halves of corpus seeds 16016, 46016 and 56016 (every category, scale_shift and videos
included) and the texture set drawn from their train photographs (scripts/study_image_false_alarms.py
`texture_frames`: fine textures at 64 px and 128 px zoom frames through the photo VAE), judges the image with the
image detector and its latents with the latent check, and reports:

- every clean item the image detector flags: is the flag the `noise_latents` head's alone, and what do its latents
  show (latent verdict, pattern_alignment): would it be overruled at a given line?
- every garbage item the image detector catches by that head alone while the latent check passes it: its
  pattern_alignment, i.e. the line above which it would be lost.

The rule itself is harness/noise/overrule.py; this script evaluates it with its pattern_alignment line swept, so
the line is chosen from these figures (nearest clean and garbage values) and nothing else. Writes
out/noise-study/latent-overrule.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from build_noise_corpus import default_out, manifest_path  # noqa: E402
from study_image_false_alarms import TRAIN_SEEDS, texture_frames  # noqa: E402

from harness.cli.commands.noise import read_frames  # noqa: E402
from harness.noise.detector import detect_noise  # noqa: E402
from harness.noise.latent_check import judge_latents  # noqa: E402
from harness.noise.overrule import DEFAULT_OVERRULE_THRESHOLDS, learned_head_only, overrule  # noqa: E402
from references.common.latent_signature import latent_signature  # noqa: E402
from references.flux.noise_corpus import CorpusItem, item_path, latent_path  # noqa: E402
from references.flux.photo_vae import PHOTO_VAE_CHECKPOINT  # noqa: E402

OUT = Path("out/noise-study")
SWEEP = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def judged(meta: dict[str, Any], pixels: np.ndarray, video: bool, latents: np.ndarray | None,
           signature: Any) -> dict[str, Any]:
    """One item's image verdict, latent verdict, and what the overrule rule sees in them."""
    image = detect_noise(pixels, video=video).to_dict()
    row = {**meta, "image": image["verdict"] == "flagged", "image_fired": image["fired"],
           "image_reason": image["reason"], "head_only": learned_head_only(image)}
    heads = ((image.get("statistics") or {}).get("model") or {}).get("heads") or {}
    row["heads_fired"] = [name for name, head in heads.items() if head.get("fired")]
    if latents is None:
        row.update(latent=None)
        return row
    verdict = judge_latents(latents, signature)
    row.update(latent="flagged" if verdict.flagged else ("abstained" if verdict.abstained else "ok"),
               latent_fired=verdict.fired, latents=verdict.latents,
               pattern_alignment=verdict.statistics.get("pattern_alignment"),
               detail_alignment=verdict.statistics.get("detail_alignment"))
    row["overruled_at"] = {line: overrule(image, verdict.to_dict(), replace(DEFAULT_OVERRULE_THRESHOLDS,
                                                                   min_pattern_alignment=line)) is not None
                           for line in SWEEP}
    return row


def corpus_items(seed: int) -> list[tuple[dict[str, Any], Path, Path]]:
    folder = default_out(seed)
    out = []
    for item in json.loads(manifest_path(seed).read_text())["items"]:
        if item["half"] != "train":
            continue
        ci = CorpusItem(**item)
        path = item_path(folder, ci)
        if not path.is_file():
            raise SystemExit(f"study_latent_overrule.py: {path} missing; render it with "
                             f"scripts/build_noise_corpus.py --corpus-seed {seed} --half train")
        meta = {k: item[k] for k in ("name", "label", "category", "variant", "height", "width")} | {"seed": seed}
        out.append((meta, path, latent_path(folder, ci)))
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per label/category: n, image flags, flags by noise_latents alone, and those overruled at each line."""
    out: dict[str, Any] = {}
    for row in rows:
        key = f"{row['label']}/{row['category']}"
        s = out.setdefault(key, {"n": 0, "image": 0, "latent": 0, "head_only": 0,
                                 "head_only_latent_passes": [], "overruled": {str(x): 0 for x in SWEEP},
                                 "combined_after": {str(x): 0 for x in SWEEP}})
        s["n"] += 1
        s["image"] += row["image"]
        s["latent"] += row.get("latent") == "flagged"
        s["head_only"] += row["head_only"] is not None
        if row["head_only"] is not None and row.get("latent") in ("ok", "abstained"):
            s["head_only_latent_passes"].append(
                f"{row['seed']}:{row['name']} ({row['height']}x{row['width']}) logit {row['head_only']['logit']:+.2f} "
                f"latent {row['latent']} alignment {row.get('pattern_alignment', float('nan')):+.2f}")
        for line in SWEEP:
            over = bool((row.get("overruled_at") or {}).get(line))
            s["overruled"][str(line)] += over
            s["combined_after"][str(line)] += bool((row["image"] and not over) or row.get("latent") == "flagged")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    signature = latent_signature(PHOTO_VAE_CHECKPOINT)
    rows = []
    for seed in TRAIN_SEEDS:
        for meta, path, lpath in corpus_items(seed):
            frames, video = read_frames(path)
            rows.append(judged(meta, frames, video, np.load(lpath) if lpath.is_file() else None, signature))
        print(f"train half {seed} judged ({time.perf_counter() - start:.0f} s)", flush=True)
    for meta, pixels, latents in texture_frames():
        if latents is not None:  # the texture set's frames through the VAE (a photo crop has no latents)
            rows.append(judged({**meta, "variant": ""}, pixels, False, latents, signature))
    print(f"texture set judged ({time.perf_counter() - start:.0f} s)", flush=True)
    table = summary(rows)
    for key, s in sorted(table.items()):
        over = ", ".join(f"{line}: {s['overruled'][str(line)]}" for line in SWEEP)
        print(f"{key}: n {s['n']}, image {s['image']}, latent {s['latent']}, noise_latents alone {s['head_only']}; "
              f"overruled at alignment >= {{{over}}}")
        for line in s["head_only_latent_passes"]:
            print(f"    {line}")
    clean_flags = [r for r in rows if r["label"] == "clean" and r["image"]]
    print(f"\nclean items the image detector flags: {len(clean_flags)}")
    for r in clean_flags:
        print(f"  {r['seed']}:{r['name']} ({r['height']}x{r['width']}): fired {r['image_fired']} heads "
              f"{r['heads_fired']}; latent {r.get('latent')} alignment {r.get('pattern_alignment')} "
              f"detail {r.get('detail_alignment')}")
    ok_latents = sorted((r["pattern_alignment"], f"{r['seed']}:{r['name']}") for r in rows
                        if r["label"] != "clean" and r.get("latent") == "ok" and r.get("latents") == 1)
    print(f"\ngarbage/either latents the latent check passes (single latents): {len(ok_latents)}; highest "
          f"alignments {[(round(a, 2), n) for a, n in ok_latents[-8:]]}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latent-overrule.json").write_text(json.dumps({"summary": table, "rows": rows,
                                                          "load_average_1m": os.getloadavg()[0]},
                                                         indent=1, default=float) + "\n")
    print(f"{time.perf_counter() - start:.0f} s (load {os.getloadavg()[0]:.1f}); {OUT / 'latent-overrule.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
