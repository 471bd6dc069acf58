"""False-alarm campaign: a correct native pipeline over many varied runs must never fail a parity check.

    .venv/bin/python -m harness.verdicts.campaign flux-tiny --runs 120 [--plan-seed 0] [--json FILE]

Each run draws one value per axis: a seed none of the calibrated ones (1000 + run index), a square or
non-square size, 1-8 steps, true CFG on or off, batch 1 or 2, fp32 or bf16, 1 or 2 intra-op threads (set
around both sides of the run). Every axis value appears equally often (each axis's values are repeated to the
run count and shuffled with its own seeded RNG), so the plan is balanced, reproducible and mixes the axes.
Every run is a full parity check (free and teacher-forced, the stored calibrated tolerances). The summary
says how many runs failed (must be 0), and the worst error as a multiple of the floor (and of the threshold)
per (dtype, mode, stage) and per axis value, so an axis that calibration under-measured shows where it is.
tests/test_false_alarms.py runs `covering_sample(plan)` in CI: the fewest runs that cover every axis value.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.environment import intra_op_threads
from harness.run.cases import Case, CaseError, get_case
from harness.run.parity import run_parity
from harness.run.request import GenerationRequest
from harness.verdicts.grid import GridResult, format_cells, summary

SQUARE_SIZES = ((32, 32), (64, 64), (96, 96))
NONSQUARE_SIZES = ((48, 80), (80, 48), (32, 96), (64, 112))
AXES: dict[str, tuple[Any, ...]] = {
    "size": SQUARE_SIZES + NONSQUARE_SIZES,
    "steps": tuple(range(1, 9)),
    "cfg": (False, True),
    "batch": (1, 2),
    "dtype": ("fp32", "bf16"),
    "threads": (1, 2),
}
FIRST_SEED = 1000  # calibration used seeds 0-2; the campaign's are new
CFG_NEGATIVE_PROMPT = "blurry, low quality"
CFG_SCALE = 2.5


@dataclass(frozen=True)
class CampaignRun:
    """One run of the campaign: a value per axis."""

    index: int
    seed: int
    size: tuple[int, int]
    steps: int
    cfg: bool
    batch: int
    dtype: str
    threads: int

    def request(self, case: Case) -> GenerationRequest:
        cfg: dict[str, Any] = {"negative_prompt": CFG_NEGATIVE_PROMPT, "true_cfg_scale": CFG_SCALE} if self.cfg else {}
        base = case.request(seed=self.seed, height=self.size[0], width=self.size[1], steps=self.steps,
                            dtype=self.dtype, **cfg)
        if not self.cfg:  # a case whose default request is guided (Wan: CFG 5) runs unguided too
            base = replace(base, negative_prompt=None, true_cfg_scale=1.0, true_cfg_scale_2=None)
        return replace(base, batch_size=self.batch)

    def label(self) -> str:
        return (f"#{self.index} seed {self.seed} {self.size[0]}x{self.size[1]} {self.steps} steps "
                f"{'cfg' if self.cfg else 'no-cfg'} batch {self.batch} {self.dtype} {self.threads} thread(s)")

    def axis_values(self) -> dict[str, Any]:
        return {axis: getattr(self, axis) for axis in AXES}


def campaign_axes(min_steps: int = 1) -> dict[str, tuple[Any, ...]]:
    """The axes, with step counts from the case's fewest (`Case.min_steps`) up to 8."""
    return {**AXES, "steps": tuple(s for s in AXES["steps"] if s >= min_steps)}


def campaign_plan(runs: int, plan_seed: int = 0, min_steps: int = 1) -> list[CampaignRun]:
    """`runs` runs whose axis values are balanced (each value equally often, +-1) and shuffled per axis."""
    if runs < 1:
        raise ValueError(f"a campaign needs at least 1 run, got {runs}")
    columns: dict[str, list[Any]] = {}
    for number, (axis, values) in enumerate(campaign_axes(min_steps).items()):
        column = [values[i % len(values)] for i in range(runs)]
        random.Random(plan_seed * 1000 + number).shuffle(column)
        columns[axis] = column
    return [CampaignRun(index=i, seed=FIRST_SEED + i, **{axis: columns[axis][i] for axis in AXES})
            for i in range(runs)]


def coverage_items(run: CampaignRun) -> set[tuple[Any, ...]]:
    """What a run exercises: each axis value, and the dtype paired with each two-valued axis (CFG, batch,
    threads), since fp32 and bf16 are judged by different tolerances."""
    values = run.axis_values()
    items: set[tuple[Any, ...]] = set(values.items())
    items |= {("dtype", run.dtype, axis, values[axis]) for axis in ("cfg", "batch", "threads")}
    return items


def run_cost(run: CampaignRun) -> float:
    """Rough relative cost of a run: a fixed part (loading, encoding, decoding) plus DiT passes x tokens; two
    threads count double, since two workers of a 2-core CI machine then oversubscribe it."""
    passes = run.steps * (2 if run.cfg else 1) * run.batch * run.size[0] * run.size[1] / 4096
    return (4.0 + passes) * (2.0 if run.threads > 1 else 1.0)


def covering_sample(plan: list[CampaignRun]) -> list[CampaignRun]:
    """A cheap set of runs of `plan` (greedy on new items per cost, deterministic) that together exercise
    everything the plan does (`coverage_items`): a CI sample that still meets each size, step count, CFG,
    batch, dtype and thread count."""
    uncovered = set().union(*(coverage_items(run) for run in plan))
    chosen: list[CampaignRun] = []
    while uncovered:
        best = max(plan, key=lambda run: (len(uncovered & coverage_items(run)) / run_cost(run), -run.index))
        gained = uncovered & coverage_items(best)
        if not gained:
            break
        chosen.append(best)
        uncovered -= gained
    return sorted(chosen, key=lambda run: run.index)


@dataclass
class CampaignResult:
    grid: GridResult = field(default_factory=GridResult)
    failures: list[dict[str, Any]] = field(default_factory=list)
    by_axis: dict[str, dict[str, float]] = field(default_factory=dict)  # axis -> value -> worst floor multiple

    def note_axis(self, run: CampaignRun, worst: float) -> None:
        for axis, value in run.axis_values().items():
            key = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
            slot = self.by_axis.setdefault(axis, {})
            slot[key] = max(slot.get(key, 0.0), worst)


def run_campaign(case: Case, plan: list[CampaignRun],
                 progress: Callable[[CampaignRun, bool, float, float], None] | None = None) -> CampaignResult:
    """Run every planned parity check; `progress(run, passed, worst floor multiple, seconds)` after each."""
    result = CampaignResult()
    start = time.perf_counter()
    for run in plan:
        began = time.perf_counter()
        with intra_op_threads(run.threads):
            parity = run_parity(case, run.request(case))
        result.grid.runs += 1
        worst = 0.0
        for record in parity.comparison.all_records():
            result.grid.add(run.dtype, run.label(), record)
            if record.floor_multiple is not None and not record.floor_multiple <= worst:
                worst = record.floor_multiple
        if not parity.passed:
            detail = parity.report.get("first_divergence_detail") or parity.report.get("noise", {}).get("note")
            result.grid.failed_runs.append(f"{run.label()}: {detail}")
            result.failures.append({"run": asdict(run), "detail": detail,
                                    "first_divergence": parity.report.get("first_divergence")})
        result.note_axis(run, worst)
        if progress is not None:
            progress(run, parity.passed, worst, time.perf_counter() - began)
    result.grid.seconds = time.perf_counter() - start
    return result


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def campaign_summary(case: Case, plan_seed: int, result: CampaignResult) -> dict[str, Any]:
    """Plain, JSON-safe data of a campaign."""
    cells = summary(result.grid)
    for cell in cells.values():
        cell["worst_floor_multiple"] = _finite(cell["worst_floor_multiple"])
        cell["worst_threshold_multiple"] = _finite(cell["worst_threshold_multiple"])
    worst_key = max(result.grid.cells, key=lambda k: result.grid.cells[k].worst, default=None)
    return {
        "case": case.name,
        "plan_seed": plan_seed,
        "axes": {axis: ["x".join(map(str, v)) if isinstance(v, tuple) else v for v in values]
                 for axis, values in campaign_axes(case.min_steps).items()},
        "runs": result.grid.runs,
        "failures": len(result.failures),
        "failed_runs": result.failures,
        "worst_floor_multiple": None if worst_key is None else {
            "value": _finite(result.grid.cells[worst_key].worst), "cell": "/".join(worst_key),
            "set_by": result.grid.cells[worst_key].where},
        "worst_by_stage": cells,
        "worst_floor_multiple_by_axis": {axis: {k: _finite(v) for k, v in values.items()}
                                         for axis, values in result.by_axis.items()},
        "seconds": round(result.grid.seconds, 1),
    }


def format_summary(document: dict[str, Any], result: CampaignResult) -> str:
    lines = format_cells(result.grid.cells)
    for axis, values in document["worst_floor_multiple_by_axis"].items():
        parts = ", ".join(f"{k}: {v if isinstance(v, str) else f'{v:.3g}'}x" for k, v in values.items())
        lines.append(f"worst x floor by {axis}: {parts}")
    worst = document["worst_floor_multiple"]
    if worst is not None:
        value = worst["value"] if isinstance(worst["value"], str) else f"{worst['value']:.3g}"
        lines.append(f"worst: {value}x floor ({worst['cell']}, {worst['set_by']})")
    lines.append(f"{document['runs']} runs in {document['seconds']:.0f} s; {document['failures']} failed")
    lines.extend(f"  FAIL {line}" for line in result.grid.failed_runs)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.verdicts.campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument("case")
    parser.add_argument("--runs", type=int, default=120, help="number of runs (default 120)")
    parser.add_argument("--plan-seed", type=int, default=0, help="seed of the plan's shuffles (default 0)")
    parser.add_argument("--sample", action="store_true", help="only the covering sample of the plan (the CI set)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="summary JSON (default out/campaign/CASE.json)")
    args = parser.parse_args(argv)
    try:
        case = get_case(args.case)
        plan = campaign_plan(args.runs, args.plan_seed, case.min_steps)
    except (CaseError, ValueError) as exc:
        print(f"python -m harness.verdicts.campaign: error: {exc}", file=sys.stderr)
        return 2
    if args.sample:
        plan = covering_sample(plan)
    path: Path = args.json or Path("out") / "campaign" / f"{case.name}.json"
    if path.is_dir():
        print(f"python -m harness.verdicts.campaign: error: --json {path} is a folder; name a file", file=sys.stderr)
        return 2

    def progress(run: CampaignRun, passed: bool, worst: float, seconds: float) -> None:
        print(f"[{run.index + 1 if not args.sample else '-'}/{args.runs}] {run.label()}: "
              f"{'pass' if passed else 'FAIL'}, worst {worst:.3g}x floor ({seconds:.1f} s)", file=sys.stderr,
              flush=True)

    result = run_campaign(case, plan, progress)
    document = campaign_summary(case, args.plan_seed, result)
    from harness.files import write_json_atomic

    write_json_atomic(path, document)
    print(format_summary(document, result))
    print(f"summary: {path}")
    return 0 if not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
