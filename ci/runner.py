"""Run or plan a CI suite: `python -m ci.runner plan|run`.

  plan --suite cpu --partitions 2 [--matrix]   print the partition plan (or a CI matrix as JSON)
  run  --suite cpu [--partition K/N] [--report-dir DIR] [--workers N]
                                               run one partition under pytest, write DIR/<suite>-<K>of<N>.json

Accuracy failures are never retried; infrastructure failures (out of memory, timeouts) are, at most
`--infra-retries` times (default 1), and are reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ci.partition import partition, totals

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / "ci" / "durations.json"


def collect(suite: str) -> list[str]:
    """Node ids of a suite (after de-duplication), from pytest's own collection."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "ci.pytest_plugin", "--suite", suite, "--collect-only", "-q"],
        cwd=ROOT, capture_output=True, text=True,
    )
    if proc.returncode not in (0, 5):  # 5: nothing collected
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"ci.runner: collection of suite {suite} failed")
    return [line for line in proc.stdout.splitlines() if "::" in line]


def default_workers() -> int:
    """One worker more than the cores, at most 4: a worker waiting on a subprocess, a rank's rendezvous or a stop
    test's delay leaves its core to the third (2 cores: 218 s with 3 workers against 248 s with 2 and 230 s with
    4). At most 4: each worker holds its own models, and one of them a published-config run (~8 GB)."""
    return min((os.cpu_count() or 1) + 1, 4)


def load_durations() -> dict[str, float]:
    return json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}


def command_plan(args: argparse.Namespace) -> int:
    from ci.pytest_plugin import estimated_durations

    node_ids = collect(args.suite)
    durations = estimated_durations(node_ids, load_durations())
    parts = partition(durations, args.partitions)
    if args.matrix:
        matrix = {"include": [{"suite": args.suite, "partition": f"{i + 1}/{args.partitions}",
                               "estimated_s": round(t, 1)} for i, t in enumerate(totals(parts, durations))]}
        print(json.dumps(matrix))
        return 0
    for index, (part, total) in enumerate(zip(parts, totals(parts, durations), strict=True), start=1):
        print(f"partition {index}/{args.partitions}: {len(part)} tests, estimated {total:.1f} s")
        for node_id in part:
            print(f"  {durations[node_id]:7.2f} s  {node_id}")
    return 0


def command_run(args: argparse.Namespace) -> int:
    tag = args.partition.replace("/", "of") if args.partition else "all"
    report = Path(args.report_dir) / f"{args.suite}-{tag}.json"
    cmd = [sys.executable, "-m", "pytest", "-p", "ci.pytest_plugin", "--suite", args.suite, "-q",
           "--execution-report", str(report), "--infra-retries", str(args.infra_retries)]
    if args.partition:
        cmd += ["--partition", args.partition]
    if args.workers > 1:  # whole modules to whichever worker is free, longest first (ci/pytest_plugin.py)
        cmd += ["-n", str(args.workers), "--dist", "loadscope", "--no-loadscope-reorder"]
    if args.record_durations:
        cmd += ["--record-durations", str(DURATIONS)]
    # Python may cache compiled modules here even where the environment says not to: without the cache pytest
    # rewrites the asserts of every test module again in every worker (~3 s of CPU each, at every run)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    print(f"execution report: {report}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ci.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="print a suite's runtime-balanced partitions")
    plan.add_argument("--suite", default="cpu")
    plan.add_argument("--partitions", type=int, default=2)
    plan.add_argument("--matrix", action="store_true", help="print a CI matrix (JSON) instead")
    run = sub.add_parser("run", help="run a suite or one partition of it")
    run.add_argument("--suite", default="cpu")
    run.add_argument("--partition", help="K/N")
    run.add_argument("--report-dir", default=str(ROOT / "out" / "ci"))
    run.add_argument("--workers", type=int, default=default_workers(),
                     help="pytest-xdist workers (default: one more than the CPU cores, here %(default)s)")
    run.add_argument("--infra-retries", type=int, default=1)
    run.add_argument("--record-durations", action="store_true", help="update ci/durations.json")
    args = parser.parse_args(argv)
    return command_plan(args) if args.command == "plan" else command_run(args)


if __name__ == "__main__":
    sys.exit(main())
