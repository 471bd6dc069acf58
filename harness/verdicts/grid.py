"""The acceptance figures of issue 3: the grid of a correct pipeline and the fault matrix.

    .venv/bin/python -m harness.verdicts.grid flux-tiny --seeds 3 [--first-seed 3] [--size 64x64 --size 48x80] \
        [--dtype fp32]

runs seeds x sizes x dtypes, free and forced, and prints per (dtype, mode, stage) each record's worst error as
a multiple of its floor and the record that set it; exit 1 if any run fails. cases/test_flux.py runs a subset
in CI.

    .venv/bin/python -m harness.verdicts.grid flux-tiny --faults [--dtype fp32]

runs every fault of the case's family (references/<family>/faults.py) with forcing on and prints the matrix of
`diffparity faults CASE` (harness/verdicts/fault_matrix.py): where the first divergence lands, its error as a
multiple of the floor and of the threshold, and whether every other stage's local records pass
(tests/test_flux_fault_localization.py).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from harness.compare.records import RecordResult, threshold_multiple
from harness.run.cases import Case, get_case
from harness.run.parity import run_parity
from harness.trace.keys import STAGES

DEFAULT_SIZES = [(64, 64), (48, 80)]


@dataclass
class Cell:
    """The worst floor multiple of one (dtype, mode, stage) over the grid, and where it was seen."""

    worst: float = 0.0
    where: str = "-"
    records: int = 0
    failed: int = 0
    unfloored: int = 0  # records without a calibrated floor (no multiple to show)
    worst_threshold: float = 0.0  # the worst error as a multiple of its threshold (1.0 = on the edge)


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
        of_threshold = threshold_multiple(record)
        if of_threshold is not None and not of_threshold <= cell.worst_threshold:  # NaN too
            cell.worst_threshold = of_threshold
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


def format_cells(cells: dict[tuple[str, str, str], Cell]) -> list[str]:
    """One line per (dtype, mode, stage): records, failures, worst error as a multiple of floor and threshold."""
    lines = [f"{'dtype':<5} {'mode':<6} {'stage':<10} {'records':>7} {'failed':>6} {'worst x floor':>13} "
             f"{'x thresh':>8}  set by"]
    for dtype in sorted({k[0] for k in cells}):
        for mode in ("free", "forced"):
            for stage in STAGES:
                cell = cells.get((dtype, mode, stage))
                if cell is None:
                    continue
                worst = "no floor" if cell.unfloored == cell.records else f"{cell.worst:.3g}x"
                lines.append(f"{dtype:<5} {mode:<6} {stage:<10} {cell.records:>7} {cell.failed:>6} {worst:>13} "
                             f"{cell.worst_threshold:>8.3g}  {cell.where}")
    return lines


def format_grid(result: GridResult) -> str:
    lines = format_cells(result.cells)
    lines.append(f"{result.runs} runs in {result.seconds:.0f} s; {len(result.failed_runs)} failed")
    lines.extend(f"  FAIL {line}" for line in result.failed_runs)
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise argparse.ArgumentTypeError(f"'{text}' is not a size HxW")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.verdicts.grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("case")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start here (e.g. 3: seeds that `diffparity calibrate` did not see)")
    parser.add_argument("--size", type=_size, action="append")
    parser.add_argument("--dtype", action="append", choices=("fp32", "bf16"))
    parser.add_argument("--faults", action="store_true", help="print the fault matrix instead of the grid")
    args = parser.parse_args(argv)
    if args.faults:  # the same as `diffparity faults CASE` (harness/verdicts/fault_matrix.py)
        from harness.verdicts.fault_matrix import format_fault_matrix, run_fault_matrix
        from harness.verdicts.faults import faults_for

        case = get_case(args.case)
        outcomes = run_fault_matrix(case, faults_for(case.family), args.dtype or ["fp32", "bf16"])
        print(format_fault_matrix(outcomes))
        return 0 if all(outcome.ok for outcome in outcomes) else 1
    result = run_grid(get_case(args.case), args.seeds, args.size or DEFAULT_SIZES, args.dtype or ["fp32", "bf16"],
                      args.first_seed)
    print(format_grid(result))
    return 0 if not result.failed_runs else 1


def summary(result: GridResult) -> dict[str, Any]:
    """Plain data of the grid (for a test or a JSON dump)."""
    return {f"{d}/{m}/{s}": {"worst_floor_multiple": c.worst, "failed": c.failed, "records": c.records,
                             "worst_threshold_multiple": c.worst_threshold, "set_by": c.where}
            for (d, m, s), c in result.cells.items()}


if __name__ == "__main__":
    sys.exit(main())
