"""Judge a noise-corpus half with the image detector, the latent check, and both (issue 16's latent check).

Reads the corpus the builder wrote (scripts/build_noise_corpus.py: every item, and beside each item the photo VAE
drew its latents, <name>.latent.npy) and the committed plan; items without latents (photographs, drawings) are
judged by the image detector alone. Prints per category (and variant) how many items each of the three verdicts
flags, the false alarms with their reasons, and writes the rows to <corpus>/latent-check-<half>.json.

    .venv/bin/python scripts/evaluate_latent_check.py [--corpus-seed N] [--half train|test] [--latent-only]

The signature of the photo VAE comes from references/common/latent_signature.py (cached by its weights). Held-out
halves are judged once, with the check fixed (docs/noise-learned-check.md, "The latent check").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness.cli.commands.noise import read_frames  # noqa: E402
from harness.noise.detector import detect_noise  # noqa: E402
from harness.noise.latent_check import judge_latents  # noqa: E402
from harness.noise.overrule import overrule  # noqa: E402
from references.common.latent_signature import latent_signature  # noqa: E402
from references.flux.noise_corpus import CORPUS_SEED, HALVES, CorpusItem, item_path, latent_path  # noqa: E402
from references.flux.photo_vae import PHOTO_VAE_CHECKPOINT  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from build_noise_corpus import default_out, manifest_path  # noqa: E402


def judge_item(item: CorpusItem, corpus: Path, signature: Any, latent_only: bool) -> dict[str, Any]:
    """One item's three verdicts (None where a verdict has nothing to judge)."""
    row: dict[str, Any] = {"name": item.name, "label": item.label, "category": item.category,
                           "variant": item.variant, "height": item.height, "width": item.width,
                           "source": item.source}
    image: dict[str, Any] | None = None
    if not latent_only:
        frames, video = read_frames(item_path(corpus, item))
        image = detect_noise(frames, video=video).to_dict()
        row.update(image=image["verdict"] == "flagged", image_reason=image["reason"])
    path = latent_path(corpus, item)
    overruled = None
    if path.is_file():
        verdict = judge_latents(np.load(path), signature)
        row.update(latent=verdict.flagged, latent_reason=verdict.reason, latent_fired=verdict.fired,
                   latent_abstained=verdict.abstained is not None,
                   latent_statistics={k: round(v, 4) for k, v in verdict.statistics.items()})
        if image is not None and not verdict.flagged:  # as harness/noise/latent_check.py `combine` does
            overruled = overrule(image, verdict.to_dict())
    else:
        row["latent"] = None
    if not latent_only:
        row["overruled"] = overruled
        row["combined"] = bool((row["image"] and overruled is None) or row["latent"])
    return row


def table(rows: list[dict[str, Any]], latent_only: bool) -> str:
    """Per category and variant: n, and flagged by image / latent (of those with latents) / combined."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["label"], row["category"])].append(row)
        if row["label"] != "clean":
            groups[(row["label"], f"{row['category']}/{row['variant']}")].append(row)
    lines = ["| label | category | n | image | latent (of those with latents) | latent abstained | image flags "
             "overruled | combined |", "|---|---|---|---|---|---|---|---|"]
    for (label, category), group in sorted(groups.items()):
        with_latent = [r for r in group if r["latent"] is not None]
        image = "-" if latent_only else sum(r["image"] for r in group)
        combined = "-" if latent_only else sum(r["combined"] for r in group)
        latent = f"{sum(r['latent'] for r in with_latent)}/{len(with_latent)}" if with_latent else "-"
        abstained = sum(bool(r.get("latent_abstained")) for r in with_latent) if with_latent else "-"
        overruled = "-" if latent_only else sum(r["overruled"] is not None for r in group)
        lines.append(f"| {label} | {category} | {len(group)} | {image} | {latent} | {abstained} | {overruled} | "
                     f"{combined} |")
    alarms = [r for r in rows if r["label"] == "clean" and (r.get("combined") or r["latent"])]
    lines.append(f"\nfalse alarms on clean items: {len(alarms)}")
    lines += [f"- {r['name']} ({r['height']}x{r['width']} {r['source']}): "
              f"{r['latent_reason'] if r['latent'] else r.get('image_reason')}" for r in alarms]
    overruled_rows = [r for r in rows if r.get("overruled")]
    lines.append(f"\nimage flags overruled by the latents (harness/noise/overrule.py): {len(overruled_rows)}")
    lines += [f"- {r['label']} {r['name']} ({r['height']}x{r['width']} {r['source']}): head {r['overruled']['head']} "
              f"logit {r['overruled']['logit']:+.2f} >= {r['overruled']['threshold']:+.2f}, pattern_alignment "
              f"{r['overruled']['pattern_alignment']:+.2f}" for r in overruled_rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus-seed", type=int, default=CORPUS_SEED, help=f"plan seed (default {CORPUS_SEED})")
    parser.add_argument("--half", choices=HALVES, default="train", help="the half to judge (default train)")
    parser.add_argument("--corpus", type=Path, help="corpus folder (default the builder's for the seed)")
    parser.add_argument("--latent-only", action="store_true", help="the latent check alone (no image detector)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    corpus = args.corpus or ROOT / default_out(args.corpus_seed)
    plan = manifest_path(args.corpus_seed)
    if not plan.is_file():
        print(f"evaluate_latent_check.py: no committed plan {plan}", file=sys.stderr)
        return 2
    items = [CorpusItem(**i) for i in json.loads(plan.read_text())["items"] if i["half"] == args.half]
    missing = [item_path(corpus, i) for i in items if not item_path(corpus, i).is_file()]
    if missing:
        print(f"evaluate_latent_check.py: {len(missing)} corpus files missing (first {missing[0]}); build them with "
              f"scripts/build_noise_corpus.py --corpus-seed {args.corpus_seed} --half {args.half}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    signature = latent_signature(PHOTO_VAE_CHECKPOINT)
    rows = []
    for number, item in enumerate(items, 1):
        rows.append(judge_item(item, corpus, signature, args.latent_only))
        if number % 50 == 0:
            print(f"{number}/{len(items)} judged ({time.perf_counter() - start:.0f} s)", flush=True)
    out = corpus / f"latent-check-{args.half}{'-latent-only' if args.latent_only else ''}.json"
    out.write_text(json.dumps({"corpus_seed": args.corpus_seed, "half": args.half, "rows": rows,
                               "seconds": round(time.perf_counter() - start, 1),
                               "load_average_1m": os.getloadavg()[0]}, indent=1) + "\n")
    print(f"corpus seed {args.corpus_seed}, {args.half} half: {len(rows)} items in "
          f"{time.perf_counter() - start:.0f} s (load {os.getloadavg()[0]:.1f}); rows in {out}\n")
    print(table(rows, args.latent_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
