"""report["drift"]: per-step rel_l2 and cosine of latents and transformer output, free and forced, with the
free run's growth factor per step, in the structure harness/compare/drift.py documents."""

from __future__ import annotations

import json
import math

import pytest

from harness.compare.drift import drift
from harness.compare.records import Comparison, RecordResult
from harness.run.cases import get_case
from harness.run.parity import run_parity


def record(field: str, step: int, rel_l2: float, mode: str = "free") -> RecordResult:
    return RecordResult("denoise", field, step, [1], {"rel_l2": rel_l2, "cos": 1 - rel_l2**2 / 2}, {}, True,
                        mode=mode)


def test_growth_is_the_ratio_of_consecutive_free_errors() -> None:
    comparison = Comparison(
        records=[record("latents", s, v) for s, v in enumerate([1e-3, 2e-3, 0.0, 1e-3])]
        + [RecordResult("decode", "image", None, [1], {"rel_l2": 0.5}, {}, True)],
        forced_records=[record("latents", s, 5e-4, "forced") for s in range(4)],
    )
    section = drift(comparison)
    assert section["steps"] == [0, 1, 2, 3]
    assert section["free"]["latents"]["rel_l2"] == [1e-3, 2e-3, 0.0, 1e-3]
    assert section["forced"]["latents"]["rel_l2"] == [5e-4] * 4
    assert section["growth"]["latents"] == [None, 2.0, 0.0, None]  # no ratio after a zero error
    assert "transformer_output" not in section["free"]  # only fields that were recorded


def test_no_denoising_records_no_drift() -> None:
    assert drift(Comparison()) == {}


@pytest.mark.parametrize("forcing", [True, False])
def test_parity_report_carries_drift(forcing: bool) -> None:
    from native_models.attention import attention_backend

    case = get_case("flux-tiny")
    # the math kernel: the native side otherwise runs the reference's own SDPA kernel, bit-identical (zero drift)
    with attention_backend("math"):
        result = run_parity(case, case.request(steps=3, height=32, width=32), forcing=forcing)
    section = result.report["drift"]
    json.dumps(section, allow_nan=False)  # standard JSON
    assert section["steps"] == [0, 1, 2]
    for field in ("latents", "transformer_output"):
        free = section["free"][field]
        assert len(free["rel_l2"]) == len(free["cos"]) == 3
        by_step = {r.step: r.metrics["rel_l2"] for r in result.comparison.records
                   if r.stage == "denoise" and r.field == field}
        assert free["rel_l2"] == [by_step[s] for s in range(3)]
        growth = section["growth"][field]
        assert growth[0] is None and math.isclose(growth[2], free["rel_l2"][2] / free["rel_l2"][1])
    assert bool(section["forced"]) is forcing
