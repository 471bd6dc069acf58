"""`diffparity run CASE`: one parity run, native against Diffusers, compared stage by stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.common import (
    EXIT_FAIL,
    EXIT_PASS,
    UsageError,
    add_case_argument,
    add_request_arguments,
    check_out_dir,
    one_line,
    positive_int,
    request_from_arguments,
)
from harness.run.expectation import EXPECT_CHOICES

if TYPE_CHECKING:
    from harness.run.cases import Case


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
    add_case_argument(run, optional=True,
                      help="case name, e.g. flux-tiny (see `diffparity list`); leave out with --model to run that "
                           "checkpoint with its family's own request defaults")
    add_request_arguments(run, model_help=(
                          "a local Diffusers folder or a Hugging Face id already in the offline cache. Without CASE "
                          "the family comes from its model_index.json and the request from the family's sampling "
                          "defaults (FLUX.1-dev: 28 steps, 1024x1024, guidance 3.5, 512 tokens; schnell: 4 steps, "
                          "guidance 0, 256 tokens; Wan 2.1: 50 steps, 81 frames 480x832, CFG 5, 512 tokens); "
                          "with CASE, the case's request on this checkpoint"))
    run.add_argument("--expect", choices=EXPECT_CHOICES, default="auto",
                     help="what the checkpoint should draw: picture (a noise-like native output fails the run), "
                          "noise (the noise check only informs), auto (default: noise when the checkpoint's "
                          "diffparity_build.json says random weights or the case has random weights, else picture)")
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
    run.add_argument("--no-drill", action="store_true",
                     help="do not drill a failing run down to the module of its first divergence (harness/drill/: "
                          "the divergent component re-run on both sides, every module compared)")
    run.add_argument("--compile", choices=("none", "native", "reference", "both"), default="none",
                     help="run that side's repeated DiT blocks under torch.compile (inductor; regional, like "
                          "Diffusers' compile_repeated_blocks) and judge against the compiled calibration's floors "
                          "when one is stored (`calibrate --compile`); the report's `compile` names mode and backend")
    run.add_argument("--compile-mode", metavar="MODE", help="torch.compile mode (default: torch's default)")
    run.set_defaults(handler=command_run)


def command_run(args: argparse.Namespace) -> int:
    from harness.run.run_folders import new_run_folder

    case, checkpoint = run_target(args.case, args.model)
    if args.out is None:
        check_out_dir(Path("out") / case.name)
        # every later error lands in this run's own folder (error.json), which `latest` then points at
        args.out, args.point_latest = new_run_folder(Path("out") / case.name), True
    out_dir: Path = args.out
    check_out_dir(out_dir)
    request = request_from_arguments(case, args)
    if checkpoint is None and args.model is not None:  # the case form: a bad folder's error.json lands in out_dir
        from native_models.loader import resolve_checkpoint

        checkpoint = resolve_checkpoint(args.model)
    if checkpoint is not None:  # configs, shard index and headers checked now: a bad folder is one line, alone
        from harness.run.native_runner import plan_native_run

        plan_native_run(checkpoint, request, model_name=args.model)
    from harness.compare.tolerances import load_tolerance_spec
    from harness.run.expectation import resolve_expectation

    # a case's own checkpoint: its stored calibration as before; a --model checkpoint: the one stored for its
    # identity, else (case form) the case's for that --model, and the report says which or that there is none
    spec = load_tolerance_spec(case.name, request.dtype, request.device, compiled=args.compile != "none")
    if checkpoint is not None:
        from harness.golden.model_calibration import case_tolerance_spec, model_tolerance_spec

        spec = model_tolerance_spec(case.family, checkpoint, request.dtype, request.device)
        if args.case is not None and not spec.calibrated:
            spec = case_tolerance_spec(case.name, request.dtype, request.device, args.model)
    expect = resolve_expectation(args.expect, case.expects_picture, checkpoint, case.name)
    from harness.report.build import format_stage_table
    from harness.run.multirank import Topology
    from harness.run.parity import run_parity
    from native_models.compile import CompileSettings

    topology = Topology(tp=args.tp, sp=args.sp)
    if args.compile != "none" and topology.is_parallel:
        raise UsageError(f"--compile {args.compile} runs on one rank; drop --tp/--sp")
    frames = f", {request.frames} frames" if case.video else ""
    if request.image is not None:
        frames += f", image {request.image.source} ({request.image.width}x{request.image.height})"
    ranks = f", native on {topology.world} ranks ({topology.name})" if topology.is_parallel else ""
    compiled = "" if args.compile == "none" else f", compiled: {args.compile} (inductor, regional)"
    cfg = f", CFG {request.true_cfg_scale:g}" if request.do_true_cfg else ""
    print(f"{case.name}: {request.height}x{request.width}{frames}, {request.steps} steps, seed {request.seed}, "
          f"{request.max_sequence_length} tokens, guidance {request.guidance_scale:g}{cfg}, "
          f"{request.dtype} on {request.device}{ranks}{compiled}", file=sys.stderr)
    calibration = spec.calibration or {"used": bool(spec.calibrated), "path": spec.source}
    print(f"thresholds: {'calibration ' + str(calibration.get('path')) if calibration.get('used') else 'defaults'}"
          f"{' (' + str(calibration['floors']) + ')' if calibration.get('floors') else ''}; expecting "
          f"{expect.expects} ({expect.reason})", file=sys.stderr)
    from harness.drill.parity_hook import drill_off, drill_on_failure

    extensions = [drill_off if args.no_drill else drill_on_failure]
    from harness.progress import Progress

    with Progress(case.name, enabled=not args.no_progress) as progress:
        result = run_parity(case, request, model=args.model, out_dir=out_dir, progress=progress,
                            forcing=not args.no_forcing, tolerances=spec, topology=topology, expect=expect,
                            extensions=extensions, compile_choice=args.compile,
                            compile_settings=CompileSettings(mode=args.compile_mode))
    print(format_stage_table(result.comparison, result.report.get("noise"), result.report.get("tolerances")))
    if result.report.get("drill") is not None:
        from harness.report.drill_view import summary_sentence

        print(f"module: {summary_sentence(result.report['drill'])}")
    if result.report.get("forcing_skipped"):
        print(f"teacher forcing skipped: {result.report['forcing_skipped']}")
    if result.ranks is not None and result.ranks.vs_single is not None:
        print(f"\n{topology.name} ({topology.world} ranks) against the single-rank native run:")
        print(format_stage_table(result.ranks.vs_single))
        if not result.ranks.ranks_identical:
            print("the ranks handed the VAE different latents: every rank must hold the same output")
        print(f"overall: {'PASS' if result.passed else 'FAIL'} (against Diffusers and against one rank)")
    if getattr(args, "point_latest", False):
        from harness.run.run_folders import point_latest

        point_latest(out_dir)
    print(f"report: {one_line(str(out_dir / 'report.json'))}")  # a newline in the path stays on this line
    return EXIT_PASS if result.passed else EXIT_FAIL


def run_target(case_name: str | None, model: str | None) -> tuple[Case, Path | None]:
    """The case a run executes: a named case (its --model folder, if any, is resolved later, once the run folder
    exists) or, without one, the --model checkpoint's family case with the resolved folder."""
    from harness.run.cases import get_case

    if case_name is None and model is None:
        raise UsageError("name a CASE (see `diffparity list`) or a checkpoint with --model DIR_OR_HF_ID")
    if case_name is not None:
        return get_case(case_name), None  # a known name: never a path to write under (`../x`, `/etc`)
    from harness.run.model_case import model_case
    from native_models.loader import resolve_checkpoint

    assert model is not None
    checkpoint = resolve_checkpoint(model)
    return model_case(model, checkpoint), checkpoint
