"""Name what bounds a stage: torch.profiler over one captured call of each side (the calls `diffparity bench`
times), top operators by self CPU time, side by side.

    .venv/bin/python scripts/profile_bench_stage.py CASE [--model DIR] [--stage transformer] [--dtype fp32]
                                                    [--height H --width W --frames F] [--rows 12]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def top_ops(call: Any, rows: int) -> list[tuple[str, float, int]]:
    """(operator, self CPU ms, calls) of the `rows` most expensive operators of one call."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case")
    parser.add_argument("--model")
    parser.add_argument("--stage", action="append", help="stage name(s) as bench prints them (default all)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()

    from harness.bench import run_bench
    from harness.run.cases import get_case

    case = get_case(args.case)
    request = case.request(dtype=args.dtype, steps=1, height=args.height, width=args.width, frames=args.frames)

    def inspect(stage: str, native: Any, reference: Any) -> None:
        if args.stage and stage not in args.stage:
            return
        print(f"\n== {stage}: top operators by self CPU time (ms, calls)")
        for label, call in (("native", native), ("Diffusers", reference)):
            print(f"-- {label}")
            for name, ms, count in top_ops(call, args.rows):
                print(f"   {ms:9.2f}  {count:5d}  {name}")

    result = run_bench(case, request, model=args.model, repeats=1, warmup=0, end_to_end=False, inspect=inspect)
    print()
    print(result.format())


if __name__ == "__main__":
    main()
