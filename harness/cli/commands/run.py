"""`diffparity run CASE`: one parity run, native against Diffusers, compared stage by stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.common import (
    EXIT_FAIL,
    EXIT_PASS,
    UsageError,
    add_case_argument,
    check_out_dir,
    finite_float,
    positive_int,
    seed_int,
)


def register(sub: argparse._SubParsersAction) -> None:
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
    add_case_argument(run)
    run.add_argument("--model", metavar="PATH_OR_HF_ID",
                     help="run the case on this checkpoint instead of its tiny one: a local Diffusers folder or a "
                          "Hugging Face id already in the offline cache")
    run.add_argument("--seed", type=seed_int, help="random seed of the initial noise (default: case's)")
    run.add_argument("--steps", type=positive_int, help="denoising steps")
    run.add_argument("--height", type=positive_int, help="image height in pixels")
    run.add_argument("--width", type=positive_int, help="image width in pixels")
    run.add_argument("--frames", type=positive_int, help="frame count (video cases only; Wan: 4k + 1)")
    run.add_argument("--guidance", type=finite_float, help="guidance-embedding scale (FLUX-dev style)")
    run.add_argument("--prompt", help="prompt (default: the case's)")
    run.add_argument("--negative-prompt", help="negative prompt; with --true-cfg > 1 enables true CFG")
    run.add_argument("--true-cfg", type=finite_float, help="true classifier-free guidance scale (default 1: off)")
    run.add_argument("--dtype", choices=("fp32", "bf16"), help="precision of both sides (default fp32)")
    run.add_argument("--device", choices=("cpu", "cuda"), help="device of both sides (default cpu)")
    run.add_argument("--tp", type=positive_int, default=1, metavar="N",
                     help="tensor-parallel ranks of the native side (default 1); tp x sp processes are launched")
    run.add_argument("--sp", type=positive_int, default=1, metavar="N",
                     help="sequence-parallel (Ulysses) ranks of the native side (default 1)")
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="output folder, replaced by this run (default: a new out/CASE/run-DATE-TIME per run, "
                          "out/CASE/latest pointing at the newest)")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress on stderr (default: a line per phase, step bars on a terminal, and a "
                          "'still ...' line after 10 s of silence)")
    run.add_argument("--no-forcing", action="store_true",
                     help="skip the teacher-forced native run: first divergence then comes from the free run")
    run.add_argument("--compile", choices=("none", "native", "reference", "both"), default="none",
                     help="run that side's repeated DiT blocks under torch.compile (inductor; regional, like "
                          "Diffusers' compile_repeated_blocks) and judge against the compiled calibration's floors "
                          "when one is stored (`calibrate --compile`); the report's `compile` names mode and backend")
    run.add_argument("--compile-mode", metavar="MODE", help="torch.compile mode (default: torch's default)")
    run.set_defaults(handler=command_run)


def command_run(args: argparse.Namespace) -> int:
    from harness.run.cases import get_case
    from harness.run.run_folders import new_run_folder

    case = get_case(args.case)  # a known name: never a path to write under (`../x`, `/etc`)
    if args.out is None:
        check_out_dir(Path("out") / case.name)
        # every later error lands in this run's own folder (error.json), which `latest` then points at
        args.out, args.point_latest = new_run_folder(Path("out") / case.name), True
    out_dir: Path = args.out
    check_out_dir(out_dir)
    if args.frames not in (None, 1) and not case.video:
        raise UsageError(f"case {case.name} makes images; --frames applies to video cases only")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is available to torch")
    request = case.request(
        prompt=args.prompt, seed=args.seed, steps=args.steps, height=args.height, width=args.width,
        frames=args.frames, guidance_scale=args.guidance, negative_prompt=args.negative_prompt,
        true_cfg_scale=args.true_cfg, dtype=args.dtype, device=args.device,
    )
    from harness.report.build import format_stage_table
    from harness.run.multirank import Topology
    from harness.run.parity import run_parity
    from native_models.compile import CompileSettings

    topology = Topology(tp=args.tp, sp=args.sp)
    if args.compile != "none" and topology.is_parallel:
        raise UsageError(f"--compile {args.compile} runs on one rank; drop --tp/--sp")
    frames = f", {request.frames} frames" if case.video else ""
    ranks = f", native on {topology.world} ranks ({topology.name})" if topology.is_parallel else ""
    compiled = "" if args.compile == "none" else f", compiled: {args.compile} (inductor, regional)"
    print(f"{case.name}: {request.height}x{request.width}{frames}, {request.steps} steps, seed {request.seed}, "
          f"{request.dtype} on {request.device}{ranks}{compiled}", file=sys.stderr)
    from harness.progress import Progress

    with Progress(case.name, enabled=not args.no_progress) as progress:
        result = run_parity(case, request, model=args.model, out_dir=out_dir, progress=progress,
                            forcing=not args.no_forcing, topology=topology, compile_choice=args.compile,
                            compile_settings=CompileSettings(mode=args.compile_mode))
    print(format_stage_table(result.comparison, result.report.get("noise"), result.report.get("tolerances")))
    if result.report.get("forcing_skipped"):
        print(f"teacher forcing skipped: {result.report['forcing_skipped']}")
    if result.ranks is not None and result.ranks.vs_single is not None:
        print(f"\n{topology.name} ({topology.world} ranks) against the single-rank native run:")
        print(format_stage_table(result.ranks.vs_single))
        if not result.ranks.ranks_identical:
            print("the ranks decoded different frames: every rank must hold the same output")
        print(f"overall: {'PASS' if result.passed else 'FAIL'} (against Diffusers and against one rank)")
    if getattr(args, "point_latest", False):
        from harness.run.run_folders import point_latest

        point_latest(out_dir)
    print(f"report: {out_dir / 'report.json'}")
    return EXIT_PASS if result.passed else EXIT_FAIL
