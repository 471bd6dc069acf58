"""Pieces shared by the `diffparity` subcommands: exit codes, the one-line parser, argument types."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import NoReturn

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input; reported as one line with exit code 2."""


def one_line(text: str) -> str:
    """`text` as one printable line: newlines, NUL, terminal escapes and other control characters (say, from a
    hostile file or case name) are shown escaped, never emitted."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on a single line (and still exits 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{one_line(self.prog)}: error: {one_line(message)} (see --help)\n")


def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _int(text: str) -> int:
    if len(text) > 40:  # int() of a 10**6-digit string is slow, and no count or seed is that long
        raise argparse.ArgumentTypeError(f"'{text[:20]}...' ({len(text)} characters) is not a usable integer")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None


def seed_int(text: str) -> int:
    """A random seed: 0 .. 2**64 - 1, torch.Generator.manual_seed's range."""
    value = non_negative_int(text)
    if value > 2**64 - 1:
        raise argparse.ArgumentTypeError(f"{value} is larger than the largest seed 2**64 - 1")
    return value


def bounded_int(high: int):
    """An argparse type: a positive integer up to `high` (so a typo cannot queue 10**9 runs)."""
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"{value} is more than {high}")
        return value

    return parse


def finite_float(text: str) -> float:
    """A float that is neither NaN nor infinite (a NaN guidance scale would only surface in the report)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def add_case_argument(parser: argparse.ArgumentParser, optional: bool = False,
                      help: str = "case name, e.g. flux-tiny (see `diffparity list`)") -> None:
    """The CASE positional of every subcommand that runs a parity case: one name and help text for all
    (`optional`: `run --model M` may leave it out)."""
    parser.add_argument("case", metavar="CASE", nargs="?" if optional else None, help=help)


MODEL_HELP = ("run the case on this checkpoint instead of its tiny one: a local Diffusers folder or a Hugging Face "
              "id already in the offline cache")


def add_request_arguments(parser: argparse.ArgumentParser, model_help: str = MODEL_HELP) -> None:
    """The request options of `run` and `drill`: model, seed, size, steps, prompts, guidance, image, token
    length, dtype, device."""
    parser.add_argument("--model", metavar="PATH_OR_HF_ID", help=model_help)
    parser.add_argument("--seed", type=seed_int, help="random seed of the initial noise (default: case's)")
    parser.add_argument("--steps", type=positive_int, help="denoising steps")
    parser.add_argument("--height", type=positive_int, help="image height in pixels")
    parser.add_argument("--width", type=positive_int, help="image width in pixels")
    parser.add_argument("--frames", type=positive_int, help="frame count (video cases only; Wan: 4k + 1)")
    parser.add_argument("--guidance", type=finite_float, help="guidance-embedding scale (FLUX-dev style)")
    parser.add_argument("--prompt", help="prompt (default: the case's)")
    parser.add_argument("--negative-prompt", help="negative prompt; with --true-cfg > 1 enables true CFG")
    parser.add_argument("--true-cfg", type=finite_float, help="true classifier-free guidance scale (default 1: off)")
    parser.add_argument("--true-cfg-2", type=finite_float, metavar="SCALE",
                        help="two-expert models (Wan 2.2 A14B): the low-noise expert's CFG scale (default: --true-cfg)")
    parser.add_argument("--image", type=Path, metavar="PATH",
                        help="image-to-video cases: the conditioning picture (8-bit RGB, gray or palette; no alpha, "
                             "not 16-bit; at least 8x8; its aspect within 1.25x of the request's), given to both "
                             "sides as the same RGB pixels (default: the case's own picture)")
    parser.add_argument("--max-sequence-length", type=positive_int, metavar="N",
                        help="text-encoder token length of both sides (default: the case's, or the model family's)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), help="precision of both sides (default fp32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="device of both sides (default cpu)")


def request_from_arguments(case, args: argparse.Namespace):  # (Case, Namespace) -> GenerationRequest
    """The case's default request with the options of `add_request_arguments` applied (checked first: a bad
    image file is one line before anything runs)."""
    if args.frames not in (None, 1) and not case.video:
        raise UsageError(f"case {case.name} makes images; --frames applies to video cases only")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is available to torch")
    image = None
    if args.image is not None:
        if case.default_request.image is None:
            raise UsageError(f"case {case.name} takes no conditioning image; --image is for image-to-video cases")
        from harness.run.request_image import load_image

        image = load_image(args.image)
    return case.request(
        prompt=args.prompt, seed=args.seed, steps=args.steps, height=args.height, width=args.width,
        frames=args.frames, guidance_scale=args.guidance, negative_prompt=args.negative_prompt,
        true_cfg_scale=args.true_cfg, true_cfg_scale_2=args.true_cfg_2, image=image, dtype=args.dtype,
        device=args.device, max_sequence_length=args.max_sequence_length,
    )


def check_out_dir(path: Path, flag: str = "--out") -> None:
    """Create the output folder now and make sure it can be written, so an unusable `--out` (an existing file,
    a file among its parents, a read-only folder) fails in the first second with one line, not after the run."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{flag} {path} exists and is not a folder") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"{flag} {path}: cannot create the folder ({reason})") from None
    if not path.is_dir():
        raise UsageError(f"{flag} {path} exists and is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: the folder is not writable")
    check_path_room(path, flag)


# the longest name a run writes below its folder: a staging folder with a pid, then a temporary file of the
# longest artifact name (harness/files.py atomic_output: .NAME.xxxxxxxx.tmp)
LONGEST_ARTIFACT_SUFFIX = len("/.staging-4194304-xxxxxxxx/.native_1rank_forced.safetensors.xxxxxxxx.tmp")


def check_path_room(path: Path, flag: str = "--out") -> None:
    """Refuse a folder whose path leaves no room for the files a run writes below it (PATH_MAX, usually 4096
    bytes): a 4,000-character `--out` is accepted by mkdir and would fail only when the report is written."""
    try:
        limit = os.pathconf(path, "PC_PATH_MAX")
    except (OSError, ValueError):
        limit = 4096
    length = len(os.fsencode(os.path.abspath(path))) + LONGEST_ARTIFACT_SUFFIX
    if length >= limit:
        raise UsageError(f"{flag} {str(path)[:60]}... is {length - LONGEST_ARTIFACT_SUFFIX} bytes long: the files "
                         f"written below it would pass the system's path limit of {limit} bytes")
