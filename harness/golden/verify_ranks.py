"""A golden verified on several ranks: the native side on tp x sp ranks judged against the golden, and against the
single-rank verification of the same golden that was already made, without running either again.

What a multi-rank parity test proves (the ranks agree with the reference and with one rank) needs, against a
golden, only the ranks' own run: the golden stands in for Diffusers, and the single-rank native traces of
`verify_golden` (the gate's parity line) stand in for a second single-rank run. So `diffparity gate` checks a
family's parallel plans at the cost of one multi-rank native run (harness/verdicts/gate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from harness.compare.records import Comparison
from harness.golden.verify import VerifyResult, compare_with_golden

if TYPE_CHECKING:
    from harness.run.multirank import RankRun, Topology

# (tp, sp) tried in this order: both plans at once when the model declares both and its heads split that far
CANDIDATE_TOPOLOGIES = ((2, 2), (2, 1), (1, 2))


@dataclass
class RanksVerifyResult:
    """The ranks against the golden (`comparison`) and against the single-rank run (`ranks.vs_single`)."""

    topology: Topology
    comparison: Comparison
    ranks: RankRun

    @property
    def passed(self) -> bool:
        return self.comparison.passed and self.ranks.passed

    def summary(self) -> str:
        """One line: the topology, both verdicts, the worst record against the golden."""
        from harness.compare.records import threshold_multiple

        scored = [(threshold_multiple(r), r) for r in self.comparison.all_records()]
        finite = [(m, r) for m, r in scored if m is not None]
        worst = max(finite, key=lambda pair: pair[0], default=None)
        against = "pass" if self.comparison.passed else "FAIL"
        single = "pass" if self.ranks.vs_single is not None and self.ranks.vs_single.passed else "FAIL"
        text = f"{self.topology.name} ({self.topology.world} ranks): vs golden {against}, vs one rank {single}"
        if not self.ranks.ranks_identical:
            text += ", the ranks handed the VAE different latents"
        if worst is not None:
            text += f", worst {worst[0]:.2f}x threshold ({worst[1].key().name()}, {worst[1].mode})"
        return text


def parallel_topology(checkpoint: Path, single: VerifyResult, plans: list[str]) -> Topology | None:
    """The largest candidate topology the checkpoint's declared plans (`Class._tp_plan` / `._sp_plan`) and its
    model's own parallel check accept for the golden's request, or None."""
    from harness.run.multirank import Topology, check_topology
    from harness.run.native_runner import plan_native_run
    from native_models.parallel import ParallelError

    has_tp = any(plan.endswith("._tp_plan") for plan in plans)
    has_sp = any(plan.endswith("._sp_plan") for plan in plans)
    request = replace(single.golden.request(), device=single.report["request"]["device"])
    plan = plan_native_run(checkpoint, request)
    for tp, sp in CANDIDATE_TOPOLOGIES:
        if (tp > 1 and not has_tp) or (sp > 1 and not has_sp):
            continue
        topology = Topology(tp, sp)
        try:
            check_topology(topology, checkpoint, plan, request.device)
        except ParallelError:
            continue
        return topology
    return None


def verify_golden_on_ranks(single: VerifyResult, checkpoint: Path, topology: Topology) -> RanksVerifyResult:
    """Run the native side of `single`'s golden on `topology`'s ranks (free, and forced when `single` was) and
    judge it against the golden and against `single`'s own native traces (rel_l2 <= the dtype's default bar)."""
    from harness.run.forcing import FORCED_STAGES
    from harness.run.multirank import run_native_ranks

    golden = single.golden
    request = replace(golden.request(), device=single.report["request"]["device"])
    meta = {"case": golden.info["case"], "request": request.to_dict(), "model": None, "checkpoint": str(checkpoint),
            "golden": str(golden.path)}
    forced = single.forced_trace is not None
    ranks = run_native_ranks(checkpoint, request, topology, meta, reference=golden.reference_trace() if forced
                             else None)
    spec = golden.tolerance_spec()
    comparison = Comparison(compare_with_golden(golden, ranks.trace, spec))
    if ranks.forced_trace is not None:
        comparison.forced_records = compare_with_golden(golden, ranks.forced_trace, spec, "forced", FORCED_STAGES)
    ranks.single_trace = single.native_trace
    ranks.single_forced_trace = single.forced_trace
    ranks.compare_with_single_rank(request.dtype)
    return RanksVerifyResult(topology, comparison, ranks)
