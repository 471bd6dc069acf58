"""No false alarms: a correct native pipeline passes every parity check of the campaign (harness/verdicts/campaign.py).

CI runs the campaign's covering sample: the cheapest set of runs of the 120-run plan that still meets every
size (square and non-square), step count 1-8, CFG on and off, batch 1 and 2, fp32 and bf16 and 1 and 2
threads (and each dtype with each of CFG, batch and threads). The full campaign is
`python -m harness.verdicts.campaign flux-tiny --runs 120`.
"""

from __future__ import annotations

from collections import Counter

import pytest

from harness.environment import intra_op_threads
from harness.report.build import describe_failure
from harness.run.cases import get_case
from harness.run.parity import run_parity
from harness.verdicts.campaign import AXES, FIRST_SEED, CampaignRun, campaign_plan, coverage_items, covering_sample

PLAN = campaign_plan(120)
SAMPLE = covering_sample(PLAN)


def test_the_plan_is_balanced_and_uses_uncalibrated_seeds() -> None:
    assert len(PLAN) >= 100
    for axis, values in AXES.items():
        counts = Counter(getattr(run, axis) for run in PLAN)
        assert set(counts) == set(values), axis
        assert max(counts.values()) - min(counts.values()) <= 1, (axis, counts)
    seeds = [run.seed for run in PLAN]
    assert len(set(seeds)) == len(seeds) and min(seeds) >= FIRST_SEED  # calibration saw seeds 0-2
    assert campaign_plan(120) == PLAN  # reproducible


def test_the_sample_covers_what_the_plan_covers() -> None:
    wanted = set().union(*(coverage_items(run) for run in PLAN))
    assert set().union(*(coverage_items(run) for run in SAMPLE)) == wanted
    assert any(run.size[0] != run.size[1] for run in SAMPLE) and any(run.size[0] == run.size[1] for run in SAMPLE)
    assert len(SAMPLE) <= 16


@pytest.mark.parametrize("run", SAMPLE, ids=lambda run: run.label().replace(" ", "-"))
def test_a_correct_pipeline_passes(run: CampaignRun) -> None:
    case = get_case("flux-tiny")
    request = run.request(case)
    with intra_op_threads(run.threads):
        result = run_parity(case, request)
    first = result.comparison.first_divergence
    assert result.passed, describe_failure(first) if first else result.report["noise"]["note"]
    assert result.report["tolerances"]["source"].startswith("golden/tolerances/")  # the calibrated tolerances
    initial = next(r for r in result.comparison.records if (r.stage, r.field) == ("latents", "initial"))
    assert initial.shape[0] == run.batch  # the batch reached both sides
    assert result.report["request"]["batch_size"] == run.batch
    assert {r.step for r in result.comparison.forced_records if r.stage == "denoise"} == set(range(run.steps))
