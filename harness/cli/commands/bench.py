"""`diffparity bench CASE`: the native pipeline's time against Diffusers', per stage and end to end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.common import EXIT_PASS, UsageError, add_case_argument, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="time the native pipeline against Diffusers, per stage and end to end",
        description=(
            "Load both sides of CASE from the same checkpoint in one process, run each once (warm-up; the stages' "
            "inputs are captured), then time each stage's call (each text encoder, one DiT forward, one scheduler "
            "step, the VAE decode) and the whole pipeline, alternating sides: median and 25th-75th percentile of "
            "the repeats, peak memory (CUDA) and weights per side, and the ratio native/Diffusers (below 1: the "
            "native side is faster). Times depend on the machine's load: run it on a quiet machine."
        ),
        epilog="Exit codes: 0 measured, 2 bad input or usage. No time is judged: the table is the result.",
    )
    add_case_argument(parser)
    parser.add_argument("--model", metavar="PATH_OR_HF_ID", help="a local Diffusers folder instead of the tiny one")
    parser.add_argument("--steps", type=positive_int, help="denoising steps of the end-to-end run")
    parser.add_argument("--height", type=positive_int, help="image height in pixels")
    parser.add_argument("--width", type=positive_int, help="image width in pixels")
    parser.add_argument("--frames", type=positive_int, help="frame count (video cases only; Wan: 4k + 1)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), help="precision of both sides (default fp32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="device of both sides (default cpu)")
    parser.add_argument("--compile", choices=("none", "native", "reference", "both"), default="none",
                        help="run that side's repeated DiT blocks under torch.compile (regional; default none)")
    parser.add_argument("--compile-mode", metavar="MODE", help="torch.compile mode (default: torch's default)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per side (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per stage and side (default 1)")
    parser.add_argument("--no-end-to-end", action="store_true", help="time the stages only, not whole runs")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the measurements as JSON here")
    parser.set_defaults(handler=command_bench)


def command_bench(args: argparse.Namespace) -> int:
    from harness.run.cases import get_case

    case = get_case(args.case)
    if args.frames not in (None, 1) and not case.video:
        raise UsageError(f"case {case.name} makes images; --frames applies to video cases only")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.json is not None and (args.json.is_dir() or args.json.parent.is_file()):
        raise UsageError(f"--json {args.json}: cannot write a file there (a folder, or under a file)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is available to torch")
    request = case.request(steps=args.steps, height=args.height, width=args.width, frames=args.frames,
                           dtype=args.dtype, device=args.device)
    from harness.bench import BenchError, run_bench
    from harness.files import write_json_atomic
    from harness.progress import Progress
    from native_models.compile import CompileSettings

    try:
        with Progress(f"bench {case.name}") as progress:
            result = run_bench(case, request, model=args.model, compile_choice=args.compile,
                               settings=CompileSettings(mode=args.compile_mode), repeats=args.repeats,
                               warmup=args.warmup, end_to_end=not args.no_end_to_end, phase=progress.phase)
    except BenchError as exc:
        raise UsageError(str(exc)) from None
    print(result.format())
    if args.json is not None:
        write_json_atomic(args.json, result.to_dict())
        print(f"json: {args.json}", file=sys.stderr)
    return EXIT_PASS
