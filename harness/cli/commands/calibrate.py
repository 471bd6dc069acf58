"""`diffparity calibrate CASE`: measure every record's floor (the reference against itself) and store
tolerances derived from it under golden/tolerances/ (harness/golden/calibrate.py, harness/compare/tolerances.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.common import EXIT_PASS, UsageError, add_case_argument, bounded_int, check_out_dir


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
    add_case_argument(parser)
    parser.add_argument("--seeds", type=bounded_int(1000), default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="precision (default fp32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default cpu)")
    parser.add_argument("--size", type=size, action="append", metavar="HxW",
                        help="a size to calibrate (repeatable; default: the case's calibration sizes)")
    parser.add_argument("--model", metavar="PATH_OR_HF_ID", help="calibrate this checkpoint instead of the case's")
    parser.add_argument("--compile", action="store_true",
                        help="also perturb the reference by compiling its repeated DiT blocks (inductor): floors for "
                             "`run --compile`, written to CASE.DTYPE.DEVICE.compiled.json")
    parser.add_argument("--no-cfg", action="store_true", help="no true-CFG request (no floors for negative fields)")
    parser.add_argument("--out", type=Path, metavar="FILE", dest="out_file",  # a file: no error.json beside it
                        help="write here instead of golden/tolerances/ (the default, read by `diffparity run`)")
    parser.set_defaults(handler=command_calibrate)


def command_calibrate(args: argparse.Namespace) -> int:
    from harness.compare.tolerances import calibration_path
    from harness.run.cases import get_case

    case = get_case(args.case)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is available to torch")
    path: Path = args.out_file or calibration_path(case.name, args.dtype, args.device, args.model,
                                                   compiled=args.compile)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; calibrate writes one file")
    check_out_dir(path.parent)
    from harness.golden.calibrate import calibrate, format_floors, write_calibration
    from harness.progress import Progress

    print(f"{case.name}: calibrating {args.dtype} on {args.device}, {args.seeds} seed(s)", file=sys.stderr)
    with Progress(case.name) as progress:
        document = calibrate(case, dtype=args.dtype, device=args.device, seeds=args.seeds, sizes=args.size,
                             model=args.model, cfg=not args.no_cfg, progress=progress.phase,
                             compiled=args.compile)
    write_calibration(document, path)
    print(format_floors(document))
    perturbations = ", ".join(p["name"] for p in document["perturbations"])
    print(f"{len(document['requests'])} requests x perturbations ({perturbations}) in {document['runtime_s']} s")
    print(f"tolerances: {path}")
    return EXIT_PASS
