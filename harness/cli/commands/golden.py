"""`diffparity golden record|promote|verify|list`: stored reference traces (harness/golden/).

record   run the case's reference (Diffusers) at its default request; write the draft beside the golden
promote  make the draft the golden (refuses to replace an existing golden without --force)
verify   run the native side only and judge it against the golden: 0 pass, 1 parity fails, 2 no usable
         golden (missing for this device class, corrupt, another checkpoint) or bad usage
list     every golden, draft and obtained file, and the unused ones (no such case, or a stray file)
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from harness.cli.common import EXIT_FAIL, EXIT_PASS, OneLineParser, UsageError, add_case_argument


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "golden",
        help="record, promote, verify and list goldens (stored reference traces)",
        description="Goldens are reference traces stored per case, dtype and device class under golden/; "
                    "`verify` checks the native side against one without running Diffusers.",
        epilog="Exit codes: 0 ok / parity holds, 1 parity fails, 2 no usable golden (missing, corrupt, another "
               "checkpoint) or bad usage.",
    )
    actions = parser.add_subparsers(dest="golden_command", metavar="ACTION", parser_class=OneLineParser)
    parser.set_defaults(handler=lambda args: _usage(parser))

    record = actions.add_parser("record", help="run the reference and write the golden's draft",
                                description="Run CASE's Diffusers reference at its default request and write "
                                            "golden/CASE/DTYPE.DEVICE_CLASS.draft.safetensors.")
    _common(record)
    record.set_defaults(handler=command_record)

    promote = actions.add_parser("promote", help="make the draft the golden",
                                 description="Rename the draft into the golden (atomic). An existing golden is "
                                             "replaced only with --force; the largest change is printed.")
    _common(promote)
    promote.add_argument("--force", action="store_true", help="replace an existing golden")
    promote.set_defaults(handler=command_promote)

    verify = actions.add_parser("verify", help="check the native side against the golden (no Diffusers)",
                                description="Run CASE's native pipeline on the golden's request and compare it "
                                            "with the golden under the golden's tolerance floors, free and "
                                            "teacher-forced from the golden's tensors. Diffusers is not imported.")
    _common(verify)
    verify.add_argument("--out", type=Path, metavar="DIR", help="also write DIR/report.json")
    verify.add_argument("--no-forcing", action="store_true", help="skip the teacher-forced run")
    verify.add_argument("--draft", action="store_true", help="verify against the draft (review before promote)")
    verify.set_defaults(handler=command_verify)

    listing = actions.add_parser("list", help="list goldens, drafts, obtained files and unused goldens")
    listing.add_argument("--golden-dir", type=Path, metavar="DIR", help="golden root (default golden/)")
    listing.set_defaults(handler=command_list)


def _common(parser: argparse.ArgumentParser) -> None:
    add_case_argument(parser)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="precision (default fp32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device; the golden is keyed by its class: cpu or cuda-smXY (default cpu)")
    parser.add_argument("--golden-dir", type=Path, metavar="DIR", help="golden root (default golden/)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _device_class(device: str) -> str:
    import torch

    from harness.compare.tolerances import device_class

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available to torch")
    return device_class(device)


def command_record(args: argparse.Namespace) -> int:
    from harness.golden.record import record_golden
    from harness.golden.store import golden_path
    from harness.run.cases import get_case

    case = get_case(args.case)
    device_cls = _device_class(args.device)
    command = "diffparity " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["golden"] else None
    from harness.progress import Progress

    print(f"{case.name}: recording the reference, {args.dtype} on {args.device} ({device_cls})", file=sys.stderr)
    with Progress(case.name) as progress:
        progress.phase("reference: Diffusers pipeline at the case's default request")
        golden = record_golden(case, args.dtype, args.device, args.golden_dir, command=command)
    assert golden.path is not None
    full = sum(r.full for r in golden.records.values())
    print(f"draft: {golden.path} ({golden.path.stat().st_size} bytes, {len(golden.records)} records, {full} whole"
          f"{', compact' if golden.compact else ''}; tolerances: "
          f"{(golden.info['tolerances'] or {}).get('source', 'defaults (no calibration)')})")
    target = golden_path(case.name, args.dtype, device_cls, args.golden_dir)
    force = " --force" if target.exists() else ""
    print(f"review it, then: diffparity golden promote {case.name} --dtype {args.dtype} --device {args.device}{force}")
    return EXIT_PASS


def command_promote(args: argparse.Namespace) -> int:
    from harness.golden.record import promote_golden

    promotion = promote_golden(args.case, args.dtype, _device_class(args.device), args.golden_dir, args.force)
    if promotion.replaced:
        worst = promotion.worst_change
        if worst is None:
            change = "largest change: unknown (the old golden was unreadable)"
        elif worst[1] == 0.0:
            change = "every record identical to the golden it replaces"
        else:
            change = f"largest change: {worst[0]} rel_l2 {worst[1]:.2e}"
        print(f"golden replaced: {promotion.path} ({change})")
    else:
        print(f"golden: {promotion.path}")
    return EXIT_PASS


def command_verify(args: argparse.Namespace) -> int:
    from harness.environment import format_environment_changes
    from harness.files import write_json_atomic
    from harness.golden.verify import verify_golden
    from harness.progress import Progress
    from harness.report.build import format_stage_table
    from harness.run.cases import get_case

    case = get_case(args.case)
    _device_class(args.device)
    with Progress(case.name) as progress:
        progress.phase("native run against the golden" + ("" if args.no_forcing else ", free and teacher-forced"))
        result = verify_golden(case, args.dtype, args.device, args.golden_dir, forcing=not args.no_forcing,
                               draft=args.draft)
    request = result.golden.info["request"]
    print(f"{case.name}: native against golden {result.golden.path} ({request['height']}x{request['width']}, "
          f"{request['steps']} steps, seed {request['seed']}, {args.dtype} on {args.device})", file=sys.stderr)
    print(format_stage_table(result.comparison, result.report.get("noise"), result.report.get("tolerances")))
    print(format_environment_changes(result.report["golden"]["environment_changes"]))
    for warning in result.report.get("warnings", []):
        print(f"warning: {warning}")
    if result.report.get("forcing_skipped"):
        print(f"teacher forcing skipped: {result.report['forcing_skipped']}")
    if result.obtained is not None:
        print(f"obtained (native trace): {result.obtained}")
    if args.out is not None:
        write_json_atomic(args.out / "report.json", result.report)
        print(f"report: {args.out / 'report.json'}")
    return EXIT_PASS if result.passed else EXIT_FAIL


def command_list(args: argparse.Namespace) -> int:
    from harness.golden.store import scan_goldens
    from harness.run.cases import CASES

    found, strays = scan_goldens(args.golden_dir)
    for entry in found:
        unused = "  UNUSED: no such case" if entry.case not in CASES else ""
        print(f"{entry.kind:<9} {entry.case:<14} {entry.dtype:<5} {entry.device_class:<10} {entry.path}{unused}")
    for path in strays:
        print(f"{'unused':<9} {'-':<14} {'-':<5} {'-':<10} {path}  UNUSED: not a golden file name")
    if not found and not strays:
        print("no goldens")
    return EXIT_PASS
