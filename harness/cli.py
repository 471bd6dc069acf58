"""`diffparity`: run parity cases from the command line.

Exit codes: 0 parity holds, 1 parity fails, 2 bad input or usage (one line on stderr, no traceback; with
`--out`, only an `error.json` is written there). Set DIFFPARITY_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import NoReturn

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input; reported as one line with exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on a single line (and still exits 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="diffparity",
        description="Check a native diffusion pipeline against the HuggingFace Diffusers reference, stage by stage.",
        epilog="Exit codes: 0 parity holds, 1 parity fails, 2 bad input or usage.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    run = sub.add_parser(
        "run",
        help="run one parity case: native and Diffusers side by side, compared per stage",
        description=(
            "Run CASE on both sides from the same checkpoint and seed, record every stage (encode, timesteps, "
            "latents, denoise per step, decode), compare under tolerances and write DIR/report.json, the two "
            "traces (safetensors) and native/reference/difference images."
        ),
        epilog="Exit codes: 0 parity holds, 1 parity fails (first divergence printed), 2 bad input or usage.",
    )
    run.add_argument("case", metavar="CASE", help="case name, e.g. flux-tiny (see `diffparity list`)")
    run.add_argument("--model", metavar="PATH_OR_HF_ID",
                     help="run the case on this checkpoint instead of its tiny one: a local Diffusers folder or a "
                          "Hugging Face id already in the offline cache")
    run.add_argument("--seed", type=non_negative_int, help="random seed of the initial noise (default: case's)")
    run.add_argument("--steps", type=positive_int, help="denoising steps")
    run.add_argument("--height", type=positive_int, help="image height in pixels")
    run.add_argument("--width", type=positive_int, help="image width in pixels")
    run.add_argument("--frames", type=positive_int, help="frame count (video cases only)")
    run.add_argument("--guidance", type=float, help="guidance-embedding scale (FLUX-dev style)")
    run.add_argument("--negative-prompt", help="negative prompt; with --true-cfg > 1 enables true CFG")
    run.add_argument("--true-cfg", type=float, help="true classifier-free guidance scale (default 1: off)")
    run.add_argument("--prompt", help="prompt (default: the case's)")
    run.add_argument("--dtype", choices=("fp32", "bf16"), help="precision of both sides (default fp32)")
    run.add_argument("--device", choices=("cpu", "cuda"), help="device of both sides (default cpu)")
    run.add_argument("--out", type=Path, metavar="DIR", help="output folder (default out/CASE)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    sub.add_parser("list", help="list the parity cases", description="List the parity cases.")
    return parser


def _make_progress(enabled: bool):
    """A factory of per-side tqdm step bars on stderr, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def factory(side: str):
        def update(done: int, total: int) -> None:
            bar = bars.get(side)
            if bar is None:
                bar = bars[side] = tqdm(total=total, desc=f"{side} denoise", unit="step", file=sys.stderr,
                                        leave=False)
            bar.n = done
            bar.refresh()
            if done >= total:
                bar.close()

        return update

    return factory


def command_run(args: argparse.Namespace) -> int:
    from harness.cases import get_case

    case = get_case(args.case)
    out_dir: Path = args.out or Path("out") / case.name
    if args.frames not in (None, 1) and not case.video:
        raise UsageError(f"case {case.name} makes images; --frames applies to video cases only")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is available to torch")
    request = case.request(
        prompt=args.prompt, seed=args.seed, steps=args.steps, height=args.height, width=args.width,
        guidance_scale=args.guidance, negative_prompt=args.negative_prompt, true_cfg_scale=args.true_cfg,
        dtype=args.dtype, device=args.device,
    )
    from harness.parity import run_parity
    from harness.report import format_stage_table

    progress = _make_progress(not args.no_progress and sys.stderr.isatty())
    print(f"{case.name}: {request.height}x{request.width}, {request.steps} steps, seed {request.seed}, "
          f"{request.dtype} on {request.device}", file=sys.stderr)
    result = run_parity(case, request, model=args.model, out_dir=out_dir, progress=progress)
    print(format_stage_table(result.comparison))
    print(f"report: {out_dir / 'report.json'}")
    return EXIT_PASS if result.passed else EXIT_FAIL


def command_list(_: argparse.Namespace) -> int:
    from harness.cases import CASES

    for case in CASES.values():
        print(f"{case.name:<12} {case.description}")
    return EXIT_PASS


def known_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, reported as one line with exit 2."""
    from harness.cases import CaseError
    from harness.trace import TraceError
    from native_models.errors import NativeError

    return (UsageError, CaseError, NativeError, TraceError)


def write_error_report(out_dir: Path | None, case: str | None, message: str) -> None:
    if out_dir is None:
        return
    from harness.report import write_json_atomic

    with contextlib.suppress(OSError):  # the folder itself is unusable: the message on stderr is the report
        write_json_atomic(out_dir / "error.json", {"case": case, "error": message, "exit_code": EXIT_USAGE})


def main(argv: list[str] | None = None) -> int:
    # the libraries' own advisories (missing torchvision, accelerate...) are not the user's business here
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handler = {"run": command_run, "list": command_list}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("diffparity: interrupted", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line; DIFFPARITY_DEBUG shows it whole
        if os.environ.get("DIFFPARITY_DEBUG"):
            raise
        expected = isinstance(exc, known_errors())
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        message = first_line if expected else f"internal error: {type(exc).__name__}: {first_line}"
        print(f"diffparity {args.command}: error: {message}", file=sys.stderr)
        out_dir = getattr(args, "out", None)
        if args.command == "run" and out_dir is None:
            out_dir = Path("out") / args.case
        write_error_report(out_dir, getattr(args, "case", None), message)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
