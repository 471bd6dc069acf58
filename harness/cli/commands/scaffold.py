"""`diffparity scaffold FAMILY`: write the skeleton of a new model family (harness/scaffold/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.common import EXIT_PASS, UsageError

REPOSITORY = Path(__file__).resolve().parents[3]  # the checkout this harness runs from


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "scaffold",
        help="write the skeleton of a new model family, with TODO blocks where its code goes",
        description="Write native_models/pipelines/FAMILY.py (EntryClass, register_configs), references/FAMILY/ "
                    "(tiny builder, reference runner, cases, faults), cases/test_FAMILY.py and FAMILY's line in "
                    "references/families.py. Every place model code goes is a TODO(scaffold:ID) block; `diffparity "
                    "gate FAMILY` lists those left and everything else missing. docs/adding-a-model.md is the "
                    "procedure.",
        epilog="Exit codes: 0 written, 2 an invalid or existing family name (nothing written).",
    )
    parser.add_argument("family", metavar="FAMILY", help="the family name: a lowercase identifier, e.g. qwen_image")
    parser.add_argument("--root", type=Path, metavar="DIR", default=REPOSITORY,
                        help="the repository tree to write into (default: this checkout)")
    parser.set_defaults(handler=command_scaffold)


def command_scaffold(args: argparse.Namespace) -> int:
    from harness.scaffold import ScaffoldError, scaffold_family

    try:
        written = scaffold_family(args.family, args.root)
    except ScaffoldError as exc:
        raise UsageError(str(exc)) from None
    for path in written:
        print(f"wrote {path}")
    print(f"next: diffparity gate {args.family}  (lists what is missing; docs/adding-a-model.md is the procedure)")
    return EXIT_PASS
