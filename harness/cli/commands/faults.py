"""`diffparity faults CASE`: run the case once per fault of its family (references/<family>/faults.py) and print
where each is caught."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.cli.common import EXIT_FAIL, EXIT_PASS, UsageError, add_case_argument


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "faults",
        help="run a case once per catalog fault and check each is caught in the stage it is in",
        description=(
            "Break the native pipeline of CASE on purpose, one catalog fault at a time (references/<family>/faults.py: "
            "instance mutations, no source edited), run a teacher-forced parity check for each and print a matrix: "
            "fault, expected stage, detected, localized stage (and step), error as a multiple of the floor and of the "
            "threshold, the noise detector's verdict on the native output, and the module the drill-down names "
            "(harness/drill/) against the module the fault declares."
        ),
        epilog="Exit codes: 0 every fault detected and localized to its expected stage (and module, with the "
               "drill), 1 any not, 2 bad input.",
    )
    add_case_argument(parser)
    parser.add_argument("--dtype", action="append", choices=("fp32", "bf16"),
                        help="precision (repeatable; default both fp32 and bf16)")
    parser.add_argument("--fault", action="append", metavar="NAME",
                        help="run only this fault (repeatable; default every fault of the case's family)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the matrix as a JSON list here")
    parser.add_argument("--list", action="store_true", help="list the case's faults and exit")
    parser.add_argument("--no-drill", action="store_true",
                        help="skip the drill-down of each failing run (no module column; faster)")
    parser.add_argument("--jobs", type=int, metavar="N", default=None,
                        help="worker processes (default: one per CPU core, at most 8; 1 runs everything in this "
                             "process). The reference runs once per distinct request and is shared by its faults")
    parser.set_defaults(handler=command_faults)


def default_jobs() -> int:
    """One worker per core, at most 8 (each holds the case's models and Diffusers)."""
    return max(1, min(8, os.cpu_count() or 1))


def command_faults(args: argparse.Namespace) -> int:
    from harness.run.cases import get_case
    from harness.verdicts.faults import FAULTS, faults_for

    case = get_case(args.case)
    available = faults_for(case.family, case.name)
    if args.fault:
        unknown = [name for name in args.fault if name not in FAULTS]
        if unknown:
            raise UsageError(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(f.name for f in available)}")
        foreign = [name for name in args.fault if FAULTS[name] not in available]
        if foreign:
            raise UsageError(f"fault(s) {', '.join(foreign)} cannot break a {case.family} pipeline of case {case.name}")
        selected = [FAULTS[name] for name in dict.fromkeys(args.fault)]
    else:
        selected = available
    if not selected:
        raise UsageError(f"no catalog fault knows how to break a {case.family} pipeline (case {case.name})")
    if args.list:
        for fault in selected:
            module = "-" if fault.expected_module is None else (fault.expected_module or "(forward)")
            print(f"{fault.name:<32} {fault.expected_stage:<9} {module:<40} {fault.description}")
        return EXIT_PASS
    if args.json is not None and (args.json.is_dir() or args.json.parent.is_file()):
        raise UsageError(f"--json {args.json}: cannot write a file there (a folder, or under a file)")
    dtypes = list(dict.fromkeys(args.dtype or ["fp32", "bf16"]))
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be a positive integer, got {args.jobs}")
    jobs = args.jobs or default_jobs()

    from harness.files import write_json_atomic
    from harness.progress import Progress
    from harness.verdicts.fault_matrix import describe, format_fault_matrix, run_fault_matrix

    print(f"{case.name}: {len(selected)} fault(s) x {', '.join(dtypes)}, teacher forcing on, "
          f"{jobs} worker process{'es' if jobs > 1 else ''}", file=sys.stderr)
    with Progress(case.name) as progress:
        def after_each(done: int, total: int, outcome) -> None:
            progress.phase(f"[{done}/{total}] {describe(outcome)}")

        progress.phase(f"{len(selected) * len(dtypes)} runs: a reference per distinct request, then its faults "
                       "(the first runs import Diffusers)")
        outcomes = run_fault_matrix(case, selected, dtypes, after_each, jobs=jobs, drill=not args.no_drill)
    print(format_fault_matrix(outcomes))
    if args.json is not None:
        write_json_atomic(args.json, [outcome.to_dict() for outcome in outcomes])
        print(f"json: {args.json}")
    return EXIT_PASS if all(outcome.ok for outcome in outcomes) else EXIT_FAIL
