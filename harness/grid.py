"""The acceptance figures of issue 3: the grid of a correct pipeline and the fault matrix.

    .venv/bin/python -m harness.grid flux-tiny --seeds 3 [--first-seed 3] [--size 64x64 --size 48x80] [--dtype fp32]

runs seeds x sizes x dtypes, free and forced, and prints per (dtype, mode, stage) each record's worst error as
a multiple of its floor and the record that set it; exit 1 if any run fails. cases/test_flux.py runs a subset
in CI.

    .venv/bin/python -m harness.grid flux-tiny --faults [--dtype fp32]

runs every fault of harness/faults.py with forcing on and prints where the first divergence lands, its error
as a multiple of the threshold and of the floor, and whether every other stage's local records pass
(tests/test_flux_fault_localization.py asserts the same).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from harness.cases import Case, get_case
from harness.compare import RecordResult
from harness.parity import run_parity
from harness.trace import STAGES

DEFAULT_SIZES = [(64, 64), (48, 80)]


@dataclass
class Cell:
    """The worst floor multiple of one (dtype, mode, stage) over the grid, and where it was seen."""

    worst: float = 0.0
    where: str = "-"
    records: int = 0
    failed: int = 0
    unfloored: int = 0  # records without a calibrated floor (no multiple to show)


@dataclass
class GridResult:
    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)
    runs: int = 0
    failed_runs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, dtype: str, run: str, record: RecordResult) -> None:
        cell = self.cells.setdefault((dtype, record.mode, record.stage), Cell())
        cell.records += 1
        cell.failed += 0 if record.passed else 1
        multiple = record.floor_multiple
        if multiple is None:
            cell.unfloored += 1
        elif math.isnan(multiple) or multiple > cell.worst:
            cell.worst = multiple
            step = "" if record.step is None else f"/{record.step}"
            cell.where = f"{record.field}{step} ({run})"


def run_grid(case: Case, seeds: int, sizes: list[tuple[int, int]], dtypes: list[str],
             first_seed: int = 0) -> GridResult:
    result = GridResult()
    start = time.perf_counter()
    for dtype in dtypes:
        for seed in range(first_seed, first_seed + seeds):
            for height, width in sizes:
                name = f"seed {seed}, {height}x{width}"
                parity = run_parity(case, case.request(seed=seed, height=height, width=width, dtype=dtype))
                result.runs += 1
                if not parity.passed:
                    result.failed_runs.append(f"{dtype} {name}: {parity.report['first_divergence_detail']}")
                for record in parity.comparison.all_records():
                    result.add(dtype, name, record)
    result.seconds = time.perf_counter() - start
    return result


def format_grid(result: GridResult) -> str:
    lines = [f"{'dtype':<5} {'mode':<6} {'stage':<10} {'records':>7} {'failed':>6} {'worst x floor':>13}  set by"]
    for dtype in sorted({k[0] for k in result.cells}):
        for mode in ("free", "forced"):
            for stage in STAGES:
                cell = result.cells.get((dtype, mode, stage))
                if cell is None:
                    continue
                worst = "no floor" if cell.unfloored == cell.records else f"{cell.worst:.3g}x"
                lines.append(f"{dtype:<5} {mode:<6} {stage:<10} {cell.records:>7} {cell.failed:>6} {worst:>13}  "
                             f"{cell.where}")
    lines.append(f"{result.runs} runs in {result.seconds:.0f} s; {len(result.failed_runs)} failed")
    lines.extend(f"  FAIL {line}" for line in result.failed_runs)
    return "\n".join(lines)


def fault_matrix(case: Case, dtypes: list[str]) -> list[dict[str, Any]]:
    """One row per (fault, dtype): expected and found first divergence, its size, other stages clean."""
    from harness.faults import FAULTS

    rows = []
    for dtype in dtypes:
        for fault in FAULTS.values():
            parity = run_parity(case, fault.request_for(case.request(dtype=dtype)), mutate_native=fault.apply)
            first = parity.comparison.first_divergence
            found = None if first is None else (first.stage, first.field, first.step)
            metric = None if first is None else first.tolerance["metric"]
            value = None if first is None or metric is None else first.metrics.get(metric)
            others = [r for r in parity.comparison.local_records()
                      if r.stage != fault.expected_stage and not r.passed]
            rows.append({
                "fault": fault.name, "dtype": dtype,
                "expected": (fault.expected_stage, fault.expected_field, fault.expected_step), "found": found,
                "mode": None if first is None else first.mode, "metric": metric, "value": value,
                "x_threshold": None if first is None or value is None else value / first.tolerance["threshold"],
                "x_floor": None if first is None else first.floor_multiple,
                "other_stages_clean": not others,
            })
    return rows


def format_fault_matrix(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'fault':<32} {'dtype':<5} {'first divergence':<40} {'ok':<3} {'error':>9} {'x thresh':>9} "
             f"{'x floor':>9}  others clean"]
    for row in rows:
        found = row["found"]
        where = "-" if found is None else f"{found[0]}/{found[1]}" + ("" if found[2] is None else f"/{found[2]}")
        if found is not None and row["mode"] == "forced":
            where += " (forced)"
        ok = "yes" if found == row["expected"] else "NO"
        value = "-" if row["value"] is None else f"{row['value']:.3g}"
        x_threshold = "-" if row["x_threshold"] is None else f"{row['x_threshold']:.3g}"
        x_floor = "-" if row["x_floor"] is None else f"{row['x_floor']:.3g}"
        lines.append(f"{row['fault']:<32} {row['dtype']:<5} {where:<40} {ok:<3} {value:>9} {x_threshold:>9} "
                     f"{x_floor:>9}  {'yes' if row['other_stages_clean'] else 'NO'}")
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise argparse.ArgumentTypeError(f"'{text}' is not a size HxW")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("case")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start here (e.g. 3: seeds that `diffparity calibrate` did not see)")
    parser.add_argument("--size", type=_size, action="append")
    parser.add_argument("--dtype", action="append", choices=("fp32", "bf16"))
    parser.add_argument("--faults", action="store_true", help="print the fault matrix instead of the grid")
    args = parser.parse_args(argv)
    if args.faults:
        rows = fault_matrix(get_case(args.case), args.dtype or ["fp32", "bf16"])
        print(format_fault_matrix(rows))
        good = all(r["found"] == r["expected"] and r["other_stages_clean"] for r in rows)
        return 0 if good else 1
    result = run_grid(get_case(args.case), args.seeds, args.size or DEFAULT_SIZES, args.dtype or ["fp32", "bf16"],
                      args.first_seed)
    print(format_grid(result))
    return 0 if not result.failed_runs else 1


def summary(result: GridResult) -> dict[str, Any]:
    """Plain data of the grid (for a test or a JSON dump)."""
    return {f"{d}/{m}/{s}": {"worst_floor_multiple": c.worst, "failed": c.failed, "records": c.records}
            for (d, m, s), c in result.cells.items()}


if __name__ == "__main__":
    sys.exit(main())
