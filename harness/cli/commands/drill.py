"""`diffparity drill CASE`: re-run model components on both sides from the reference's inputs and compare every
module (harness/drill/): the per-module error profile of a passing run, or the module a failing one diverges at."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.common import (
    EXIT_FAIL,
    EXIT_PASS,
    UsageError,
    add_case_argument,
    add_request_arguments,
    check_out_dir,
    non_negative_int,
    positive_int,
    request_from_arguments,
)

STAGES = ("encode", "denoise", "decode")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "drill",
        help="compare every module of the model components, native against Diffusers, on the same inputs",
        description=(
            "Capture the reference's inputs to a component call (a text encoder, the DiT at a denoising step, the "
            "VAE decode), run the component once on each side with a hook on every module, feed each native "
            "module the reference module's inputs (its local error) and run the native component on its own "
            "(its inherited error); print every module's errors against its floor, the first module in execution "
            "order whose local error exceeds its threshold, and the worst modules. Without --stage, every "
            "component is drilled. `diffparity run` drills the first divergence of a failing run by itself."
        ),
        epilog="Exit codes: 0 no module diverges, 1 a module diverges (named), 2 bad input or usage.",
    )
    add_case_argument(parser)
    parser.add_argument("--stage", choices=STAGES,
                        help="drill this stage's component only (default: every component)")
    parser.add_argument("--field", help="the record whose component call to drill, e.g. transformer_output_uncond, "
                                        "negative_prompt_embeds (default: the stage's first)")
    parser.add_argument("--step", type=non_negative_int, help="denoising step of the DiT call (default 0)")
    add_request_arguments(parser)
    parser.add_argument("--tp", type=positive_int, default=1, metavar="N",
                        help="run the native component on tp x sp ranks too: every module's gathered output against "
                             "the single-rank run's and the reference's (needs --stage)")
    parser.add_argument("--sp", type=positive_int, default=1, metavar="N", help="sequence-parallel ranks (with --tp)")
    parser.add_argument("--fault", metavar="NAME", help="break the native pipeline with this catalog fault first "
                                                        "(`diffparity faults CASE --list`)")
    parser.add_argument("--all", action="store_true", help="print every module, not only the worst")
    parser.add_argument("--top", type=positive_int, default=10, help="worst modules printed per component")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write drill.json, drill.md and drill.html here")
    parser.set_defaults(handler=command_drill)


def command_drill(args: argparse.Namespace) -> int:
    from harness.run.cases import get_case

    case = get_case(args.case)
    if case.run_reference_probe is None:  # before any work: the reference could not be captured
        raise UsageError(f"case {case.name} declares no reference probe (Case.run_reference_probe): it cannot be "
                         f"drilled")
    if args.out is not None:
        check_out_dir(args.out)
    if args.stage is None and (args.field or args.step is not None):
        raise UsageError("--field and --step need --stage")
    from harness.run.multirank import Topology

    topology = Topology(tp=args.tp, sp=args.sp)
    if topology.is_parallel and args.stage is None:
        raise UsageError("--tp/--sp need --stage (one component call is drilled on the ranks)")
    request = request_from_arguments(case, args)
    mutate = None
    if args.fault:
        from harness.verdicts.faults import FAULTS, faults_for

        if args.fault not in FAULTS or FAULTS[args.fault] not in faults_for(case.family):
            known = ", ".join(f.name for f in faults_for(case.family))
            raise UsageError(f"no fault '{args.fault}' for a {case.family} pipeline; known: {known}")
        fault = FAULTS[args.fault]
        if fault.topology != (1, 1) and (topology.tp, topology.sp) != fault.topology:
            raise UsageError(f"fault {fault.name} breaks a run on --tp {fault.topology[0]} --sp {fault.topology[1]}")
        request, mutate = fault.request_for(request), fault.apply
    from harness.drill.format import format_drill
    from harness.drill.session import run_drill
    from harness.drill.target import DrillError, every_component, resolve_target
    from harness.run.native_runner import plan_native_run
    from native_models.loader import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.model) if args.model else case.build_checkpoint()
    plan = plan_native_run(checkpoint, request, model_name=args.model)
    try:
        if args.stage is None:
            targets = every_component(plan.config, request.do_true_cfg, request.steps)
        else:
            targets = [resolve_target(plan.config, request.do_true_cfg, request.steps, args.stage, args.field,
                                      args.step)]
    except DrillError as exc:
        raise UsageError(str(exc)) from None

    def progress(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    print(f"{case.name}: drilling {len(targets)} component call(s), {request.height}x{request.width}, "
          f"{request.steps} steps, seed {request.seed}, {request.dtype} on {request.device}"
          + (f", fault {args.fault}" if args.fault else ""), file=sys.stderr)
    if topology.is_parallel:
        from harness.drill.multirank import drill_ranks
        from harness.run.multirank import check_topology

        check_topology(topology, checkpoint, plan, request.device)
        target = targets[0]
        progress(f"drilling {target.describe()} on {topology.name} ({topology.world} ranks) and on one rank")
        sections = [drill_ranks(case, request, checkpoint, {"stage": target.stage, "field": target.field,
                                                            "step": target.step}, topology, model=args.model,
                                mutate=mutate, spool_dir=args.out)]
    else:
        results = run_drill(case, request, checkpoint, targets, model=args.model, mutate=mutate,
                            spool_dir=args.out, progress=progress)
        sections = [result.to_dict() for result in results]
    for data in sections:
        data["trigger"] = "on_demand"
        print(format_drill(data, every=args.all, top=args.top))
        print()
    named = [d for d in sections if d.get("module") is not None]
    if args.out is not None:
        from harness.drill.artifacts import write_drill_artifacts

        write_drill_artifacts(args.out, case.name, request.to_dict(), sections, args.fault)
        print(f"drill: {args.out / 'drill.json'}")
    return EXIT_FAIL if named else EXIT_PASS
