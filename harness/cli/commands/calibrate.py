"""`diffparity calibrate CASE`: measure every record's floor (the reference against itself) and store
tolerances derived from it under golden/tolerances/ (harness/golden/calibrate.py, harness/compare/tolerances.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.common import EXIT_PASS, UsageError, bounded_int, check_out_dir, positive_int

SMALL_SIDE, SMALL_STEPS, SMALL_FRAMES = 64, 2, 5  # the small request of `calibrate --model DIR`


def size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W), each side 1..MAX_SIDE (native_models/limits.py)."""
    from native_models.limits import MAX_SIDE

    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 6 and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"'{text[:40]}' is not a size HxW of positive integers, e.g. 48x80")
    height, width = int(parts[0]), int(parts[1])
    if max(height, width) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"{height}x{width}: a side is larger than {MAX_SIDE} pixels")
    return height, width


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "calibrate",
        help="measure the error floors of a case and store the tolerances derived from them",
        description=(
            "Run CASE's reference against itself under legitimate perturbations (attention kernel, thread count, "
            "TF32 and fp64 where they apply) over N seeds and the case's sizes, free-running and teacher-forced; "
            "store per (stage, field) the worst difference (the floor) and the tolerance derived from it in "
            "golden/tolerances/CASE.DTYPE.DEVICE.json, which later runs of CASE use."
        ),
        epilog="Exit codes: 0 written, 2 bad input or usage.",
    )
    parser.add_argument("case", metavar="CASE", nargs="?",
                        help="case name, e.g. flux-tiny (see `diffparity list`); leave out with --model to calibrate "
                             "that checkpoint, stored by its identity and used by every later `run --model` of it")
    parser.add_argument("--seeds", type=bounded_int(1000), help="seeds 0..N-1 (default 3; with --model alone, 1)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="precision (default fp32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default cpu)")
    parser.add_argument("--size", type=size, action="append", metavar="HxW",
                        help="a size to calibrate (repeatable; default: the case's calibration sizes)")
    parser.add_argument("--model", metavar="PATH_OR_HF_ID",
                        help="calibrate this checkpoint: without CASE at a small request of its family's defaults "
                             f"({SMALL_SIDE}x{SMALL_SIDE}, {SMALL_STEPS} steps, {SMALL_FRAMES} frames for video, the "
                             "family's token length), fp64 only where it fits in memory, stored under "
                             "$DIFFPARITY_CACHE/calibrations/ keyed by the checkpoint's identity")
    parser.add_argument("--steps", type=positive_int, help=f"steps of each request (with --model alone; default "
                                                           f"{SMALL_STEPS})")
    parser.add_argument("--max-sequence-length", type=positive_int, metavar="N",
                        help="token length (with --model alone; default: the family's, as `run --model` uses)")
    parser.add_argument("--compile", action="store_true",
                        help="also perturb the reference by compiling its repeated DiT blocks (inductor): floors for "
                             "`run --compile`, written to CASE.DTYPE.DEVICE.compiled.json")
    parser.add_argument("--no-cfg", action="store_true", help="no true-CFG request (no floors for negative fields)")
    parser.add_argument("--modules", action="store_true",
                        help="measure per-module floors for the drill instead (harness/golden/module_floors.py): "
                             "golden/tolerances/CASE.DTYPE.DEVICE.modules.json")
    parser.add_argument("--out", type=Path, metavar="FILE", dest="out_file",  # a file: no error.json beside it
                        help="write here instead of golden/tolerances/ (the default, read by `diffparity run`)")
    parser.set_defaults(handler=command_calibrate)


def command_calibrate(args: argparse.Namespace) -> int:
    from harness.compare.tolerances import calibration_path
    from harness.run.cases import get_case

    if args.modules:
        return _calibrate_modules(args)
    if args.case is None and args.model is None:
        raise UsageError("name a CASE (see `diffparity list`) or a checkpoint with --model DIR_OR_HF_ID")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is available to torch")
    if args.case is None:
        return calibrate_model(args)
    case = get_case(args.case)
    path: Path = args.out_file or calibration_path(case.name, args.dtype, args.device, args.model,
                                                   compiled=args.compile)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; calibrate writes one file")
    check_out_dir(path.parent)
    from harness.golden.calibrate import calibrate, format_floors, write_calibration
    from harness.progress import Progress

    print(f"{case.name}: calibrating {args.dtype} on {args.device}, {args.seeds} seed(s)", file=sys.stderr)
    with Progress(case.name) as progress:
        document = calibrate(case, dtype=args.dtype, device=args.device, seeds=args.seeds or 3, sizes=args.size,
                             model=args.model, cfg=not args.no_cfg, progress=progress.phase,
                             compiled=args.compile)
    write_calibration(document, path)
    print(format_floors(document))
    perturbations = ", ".join(p["name"] for p in document["perturbations"])
    print(f"{len(document['requests'])} requests x perturbations ({perturbations}) in {document['runtime_s']} s")
    print(f"tolerances: {path}")
    return EXIT_PASS


def calibrate_model(args: argparse.Namespace) -> int:
    """`calibrate --model DIR`: floors on the user's checkpoint at a small request, stored by its identity."""
    from dataclasses import replace

    from harness.golden.calibrate import calibrate, format_floors, write_calibration
    from harness.golden.model_calibration import annotate, fp64_fits, identity_digest, model_calibration_path
    from harness.progress import Progress
    from harness.run.model_case import model_case
    from native_models.loader import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.model)
    case = model_case(args.model, checkpoint)
    digest, kind = identity_digest(checkpoint)
    path: Path = args.out_file or model_calibration_path(case.family, digest, args.dtype, args.device)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; calibrate writes one file")
    check_out_dir(path.parent)
    small = case.request(steps=args.steps or SMALL_STEPS, height=SMALL_SIDE, width=SMALL_SIDE,
                         frames=SMALL_FRAMES if case.video else 1, max_sequence_length=args.max_sequence_length)
    case = replace(case, default_request=small)
    fits, floors = fp64_fits(checkpoint, args.dtype, args.device)
    seeds = args.seeds or 1
    print(f"{case.name}: calibrating {args.dtype} on {args.device}, {seeds} seed(s), {small.steps} steps, "
          f"{small.max_sequence_length} tokens; {floors}", file=sys.stderr)
    with Progress(case.name) as progress:
        document = calibrate(case, dtype=args.dtype, device=args.device, seeds=seeds, sizes=args.size,
                             model=args.model, cfg=not args.no_cfg, checkpoint=checkpoint, progress=progress.phase,
                             skip=() if fits else ("fp64",))
    annotate(document, case.family, digest, kind, floors, str(args.model))
    write_calibration(document, path)
    print(format_floors(document))
    perturbations = ", ".join(p["name"] for p in document["perturbations"])
    print(f"{len(document['requests'])} requests x perturbations ({perturbations}) in {document['runtime_s']} s")
    print(f"calibration of checkpoint {digest[:16]} ({kind}): {path}")
    return EXIT_PASS


def _calibrate_modules(args: argparse.Namespace) -> int:
    """`calibrate --modules`: every module's floors (the drill's thresholds), written beside the stage floors."""
    from harness.drill.floors import module_floors_path
    from harness.run.cases import get_case

    if args.case is None:
        raise UsageError("--modules calibrates a CASE's module floors: name the case (see `diffparity list`)")
    case = get_case(args.case)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is available to torch")
    path: Path = args.out_file or module_floors_path(case.name, args.dtype, args.device, args.model)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; calibrate writes one file")
    check_out_dir(path.parent)
    from harness.golden.module_floors import calibrate_modules, format_module_floors, write_module_floors

    def progress(message: str) -> None:
        print(f"  {message}", file=sys.stderr)

    print(f"{case.name}: calibrating module floors, {args.dtype} on {args.device}, {args.seeds} seed(s)",
          file=sys.stderr)
    document = calibrate_modules(case, dtype=args.dtype, device=args.device, seeds=args.seeds, sizes=args.size,
                                 model=args.model, cfg=not args.no_cfg, progress=progress)
    write_module_floors(document, path)
    print(format_module_floors(document))
    count = sum(len(patterns) for patterns in document["components"].values())
    print(f"{count} module patterns over {len(document['components'])} components, "
          f"{len(document['requests'])} requests, in {document['runtime_s']} s")
    print(f"module floors: {path}")
    return EXIT_PASS
