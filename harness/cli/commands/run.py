"""`diffparity run CASE`: one parity run, native against Diffusers, compared stage by stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.common import (
    EXIT_FAIL,
    EXIT_PASS,
    add_case_argument,
    add_request_arguments,
    check_out_dir,
    positive_int,
    request_from_arguments,
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
    add_request_arguments(run)
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
    request = request_from_arguments(case, args)
    from harness.report.build import format_stage_table
    from harness.run.multirank import Topology
    from harness.run.parity import run_parity

    topology = Topology(tp=args.tp, sp=args.sp)
    frames = f", {request.frames} frames" if case.video else ""
    ranks = f", native on {topology.world} ranks ({topology.name})" if topology.is_parallel else ""
    print(f"{case.name}: {request.height}x{request.width}{frames}, {request.steps} steps, seed {request.seed}, "
          f"{request.dtype} on {request.device}{ranks}", file=sys.stderr)
    from harness.drill.parity_hook import drill_off, drill_on_failure

    extensions = [drill_off if args.no_drill else drill_on_failure]
    from harness.progress import Progress

    with Progress(case.name, enabled=not args.no_progress) as progress:
        result = run_parity(case, request, model=args.model, out_dir=out_dir, progress=progress,
                            forcing=not args.no_forcing, topology=topology, extensions=extensions)
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
            print("the ranks decoded different frames: every rank must hold the same output")
        print(f"overall: {'PASS' if result.passed else 'FAIL'} (against Diffusers and against one rank)")
    if getattr(args, "point_latest", False):
        from harness.run.run_folders import point_latest

        point_latest(out_dir)
    print(f"report: {out_dir / 'report.json'}")
    return EXIT_PASS if result.passed else EXIT_FAIL
