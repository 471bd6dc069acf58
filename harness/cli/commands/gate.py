"""`diffparity gate [MODEL...]`: the model-addition checklist of every registered model (harness/verdicts/gate.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.common import EXIT_FAIL, EXIT_PASS, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "gate",
        help="check that every registered model has its case file, cases, tiny builder, CPU golden, passing "
             "parity, not-noise verdict and multi-rank case",
        description="Print, per model of the native registry (or per MODEL family named), a checklist: case file "
                    "cases/test_<family>.py, Case(s), tiny offline checkpoint builder, fp32 golden for the cpu "
                    "class, golden verify passing, not-noise verdict on trained output, and, when the DiT declares "
                    "_tp_plan/_sp_plan, a test marked covers(FAMILY, <ranks>) plus the fp32 golden verified on ranks "
                    "(against the golden and the single-rank verify, neither run again). Native runs use one "
                    "intra-op thread, as goldens are recorded.",
        epilog="Exit codes: 0 every check ok or n/a, 1 something missing or failing, 2 unknown MODEL or bad usage.",
    )
    parser.add_argument("models", nargs="*", metavar="MODEL", help="registry family names (default: all)")
    parser.add_argument("--no-run", action="store_true",
                        help="check files only: no checkpoint builds, parity runs or multi-rank tests")
    parser.add_argument("--run-tests", action="store_true",
                        help="the multi-rank check also runs the tests marked covers(FAMILY, <ranks>) in a pytest "
                             "subprocess (slower: they run Diffusers again)")
    parser.add_argument("--golden-dir", type=Path, metavar="DIR", help="golden root (default golden/)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the checklist as JSON")
    parser.set_defaults(handler=command_gate)


def command_gate(args: argparse.Namespace) -> int:
    from harness.files import write_json_atomic
    from harness.progress import Progress
    from harness.verdicts.gate import GateError, check_models

    try:
        with Progress("gate") as progress:
            report = check_models(args.models or None, golden_root=args.golden_dir, run=not args.no_run,
                                  progress=progress.phase, run_tests=args.run_tests)
    except GateError as exc:
        raise UsageError(str(exc)) from None
    print(report.format())
    if args.json is not None:
        write_json_atomic(args.json, report.to_dict())
    return EXIT_PASS if report.passed else EXIT_FAIL
