"""Score the flux-digits model: generate every digit for several seeds and classify what comes out.

The acceptance figure of the trained checkpoint: the share of generated images a digit classifier (an SVC fit
on scikit-learn's real digits at run time, references/flux/digits.py) reads as the prompted digit. Runs the
Diffusers reference pipeline and/or the native pipeline with the flux-digits case's request (size, steps,
true CFG, T5 length), one seed at a time, exactly as `diffparity run flux-digits --seed S` would.

    .venv/bin/python scripts/evaluate_digits.py                       # 10 digits x 10 seeds, both sides
    .venv/bin/python scripts/evaluate_digits.py --side reference --seeds 50 --grid out/digits_grid.png

Prints a confusion matrix and per-digit accuracy per side; exit 1 when a side is below --min-accuracy,
2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.run.cases import get_case  # noqa: E402
from harness.run.request import GenerationRequest  # noqa: E402
from references.flux.digits import DigitClassifier, digit_prompt, flux_digits_checkpoint  # noqa: E402

EXIT_BELOW, EXIT_USAGE = 1, 2
Generate = Callable[[GenerationRequest], torch.Tensor]  # request -> frames (1, C, H, W) in [0, 1]


def reference_generator(checkpoint: Path, dtype: str) -> Generate:
    """Diffusers' FluxPipeline, loaded once, called per request with the reference runner's arguments."""
    from diffusers import FluxPipeline

    from references.common.reference_pipeline import load_pipeline, torch_dtype
    from references.flux.runner import flux_pipeline_kwargs

    pipe = load_pipeline(FluxPipeline, checkpoint, torch_dtype(dtype))

    def generate(request: GenerationRequest) -> torch.Tensor:
        image = pipe(**flux_pipeline_kwargs(request), output_type="pt", return_dict=False)[0]
        return image.to(torch.float32)

    return generate


def native_generator(checkpoint: Path, first: GenerationRequest) -> Generate:
    """The native pipeline, built once; each request gets a fresh batch from the harness's planner."""
    from harness.run.native_runner import plan_native_run

    plan = plan_native_run(checkpoint, first)
    pipeline = plan.pipeline_cls(checkpoint, plan.config, dtype=plan.batch.dtype, device=plan.batch.device)

    def generate(request: GenerationRequest) -> torch.Tensor:
        batch = pipeline.forward(plan_native_run(checkpoint, request).batch)
        assert batch.output is not None
        return batch.output.detach().to("cpu", torch.float32)

    return generate


def confusion_table(confusion: np.ndarray) -> str:
    """Rows: prompted digit; columns: predicted digit; last column: per-digit accuracy."""
    lines = ["prompted \\ predicted " + " ".join(f"{d:>3}" for d in range(10)) + "   accuracy"]
    for digit, row in enumerate(confusion):
        accuracy = row[digit] / max(1, row.sum())
        lines.append(f"{digit:>20} " + " ".join(f"{n:>3}" for n in row) + f"   {accuracy:6.1%}")
    total = confusion.sum()
    lines.append(f"{'overall':>20} {np.trace(confusion)}/{total} = {np.trace(confusion) / max(1, total):.1%}")
    return "\n".join(lines)


def save_grid(frames: dict[tuple[int, int], torch.Tensor], seeds: list[int], path: Path) -> None:
    """A PNG grid: one row per digit, one column per seed (written to a temp file, then renamed)."""
    from PIL import Image

    rows = [torch.cat([frames[(d, s)][0] for s in seeds], dim=-1) for d in range(10)]
    grid = torch.cat(rows, dim=-2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(grid).save(tmp, format="PNG")
    os.replace(tmp, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per digit (default 10)")
    parser.add_argument("--side", choices=("both", "reference", "native"), default="both")
    parser.add_argument("--true-cfg", type=float, help="true CFG scale (default: the case's)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the case's)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--checkpoint", type=Path, help="a flux-digits style folder (default: the shipped one)")
    parser.add_argument("--min-accuracy", type=float, default=0.95, help="exit 1 below this (default 0.95)")
    parser.add_argument("--grid", type=Path, help="also save the reference (else native) images as a PNG grid")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.exit(EXIT_USAGE, f"evaluate_digits.py: --seeds must be >= 1, got {args.seeds}\n")
    if args.steps is not None and args.steps < 1:
        parser.exit(EXIT_USAGE, f"evaluate_digits.py: --steps must be >= 1, got {args.steps}\n")
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    try:
        checkpoint = args.checkpoint or flux_digits_checkpoint()
    except FileNotFoundError as exc:
        print(f"evaluate_digits.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not (checkpoint / "model_index.json").is_file():
        print(f"evaluate_digits.py: error: {checkpoint} has no model_index.json", file=sys.stderr)
        return EXIT_USAGE
    case = get_case("flux-digits")
    seeds = list(range(args.seeds))
    requests = {
        (d, s): case.request(prompt=digit_prompt(d), seed=s, true_cfg_scale=args.true_cfg, steps=args.steps,
                             dtype=args.dtype)
        for d in range(10) for s in seeds
    }
    first = requests[(0, 0)]
    print(f"flux-digits: {checkpoint}; {first.height}x{first.width}, {first.steps} steps, true CFG "
          f"{first.true_cfg_scale} on {first.negative_prompt!r}, T5 length {first.max_sequence_length}, "
          f"{args.dtype}; 10 digits x {len(seeds)} seeds")

    start = time.perf_counter()
    classifier = DigitClassifier()
    print(f"classifier fit on the real digits in {time.perf_counter() - start:.2f} s")

    sides = ("reference", "native") if args.side == "both" else (args.side,)
    outputs: dict[str, dict[tuple[int, int], torch.Tensor]] = {}
    below = False
    for side in sides:
        start = time.perf_counter()
        torch.set_grad_enabled(False)
        generate = reference_generator(checkpoint, args.dtype) if side == "reference" else native_generator(
            checkpoint, first
        )
        frames = {key: generate(request) for key, request in requests.items()}
        outputs[side] = frames
        predicted = {key: int(classifier.predict(image)[0]) for key, image in frames.items()}
        confusion = np.zeros((10, 10), dtype=np.int64)
        for (digit, _), guess in predicted.items():
            confusion[digit, guess] += 1
        accuracy = np.trace(confusion) / confusion.sum()
        below |= accuracy < args.min_accuracy
        print(f"\n{side} pipeline ({time.perf_counter() - start:.1f} s):\n{confusion_table(confusion)}")

    if len(outputs) == 2:
        diff = max((outputs["native"][k] - outputs["reference"][k]).abs().max().item() for k in requests)
        agree = sum(
            int(classifier.predict(outputs["native"][k])[0]) == int(classifier.predict(outputs["reference"][k])[0])
            for k in requests
        )
        print(f"\nnative vs reference: same predicted digit on {agree}/{len(requests)} images; "
              f"largest pixel difference {diff:.2e} (images in [0, 1])")
    if args.grid is not None:
        save_grid(outputs.get("reference") or outputs["native"], seeds, args.grid)
        print(f"grid: {args.grid}")
    if below:
        print(f"below the required accuracy {args.min_accuracy:.0%}", file=sys.stderr)
    return EXIT_BELOW if below else 0


if __name__ == "__main__":
    sys.exit(main())
