"""`diffparity list`: the parity cases this installation knows."""

from __future__ import annotations

import argparse

from harness.cli.common import EXIT_PASS


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("list", help="list the parity cases", description="List the parity cases.")
    parser.set_defaults(handler=command_list)


def command_list(_: argparse.Namespace) -> int:
    from harness.run.cases import CASES

    for case in CASES.values():
        print(f"{case.name:<12} {case.description}")
    return EXIT_PASS
