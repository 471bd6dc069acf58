"""Every broken native variant of harness/faults.py must fail, and with teacher forcing on, the first divergence
must name the stage (field, and step 0 inside the loop) that the bug is in, while every other stage's local
records still pass: the error is charged to the stage that makes it, not to everything downstream.

Runs in fp32 and bf16 at the case's tolerances (the stored calibration when there is one).
"""

from __future__ import annotations

import pytest

from harness.cases import get_case
from harness.faults import FAULTS, Fault
from harness.parity import run_parity
from harness.trace import STAGES


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=lambda f: f.name)
def test_fault_is_localized_with_forcing(fault: Fault, dtype: str) -> None:
    case = get_case("flux-tiny")
    result = run_parity(case, fault.request_for(case.request(dtype=dtype)), mutate_native=fault.apply)
    comparison = result.comparison
    first = comparison.first_divergence
    assert not result.passed and first is not None
    expected = (fault.expected_stage, fault.expected_field, fault.expected_step)
    assert (first.stage, first.field, first.step) == expected, result.report["first_divergence_detail"]
    assert result.report["first_divergence"] == dict(zip(("stage", "field", "step"), expected, strict=True))
    assert result.report["first_divergence_local"] is True
    # forcing keeps every other stage clean: their local records (forced where forced) all pass
    others = [r for r in comparison.local_records() if r.stage != fault.expected_stage and not r.passed]
    assert not others, [f"{r.stage}/{r.field}/{r.step} ({r.mode})" for r in others]


def test_rotary_fault_on_a_non_square_bf16_image() -> None:
    """The weakest catch of the catalog: with 3x5 patches the tiny DiT's rotary angles are small, and the
    split-half rotation moves the forced step-0 output by rel_l2 1.5e-2 against a threshold of 7.8e-3."""
    fault = FAULTS["rotary_style_swapped"]
    case = get_case("flux-tiny")
    result = run_parity(case, case.request(dtype="bf16", height=48, width=80), mutate_native=fault.apply)
    first = result.comparison.first_divergence
    assert first is not None and (first.stage, first.field, first.step, first.mode) == (
        "denoise", "transformer_output", 0, "forced")


@pytest.mark.parametrize("name", ["text_encoder_wrong_hidden_state", "sigma_shift_not_applied",
                                  "initial_noise_generator_order"])
def test_without_forcing_an_early_bug_spreads_downstream(name: str) -> None:
    """What forcing fixes: in the free run the same bug also fails every stage after its own."""
    fault = FAULTS[name]
    case = get_case("flux-tiny")
    result = run_parity(case, fault.request_for(case.request()), mutate_native=fault.apply, forcing=False)
    assert not result.comparison.forced_records and result.report["forcing"] is False
    first = result.comparison.first_divergence
    assert first is not None and first.stage == fault.expected_stage
    later = STAGES[STAGES.index(fault.expected_stage) + 1:]
    failing_stages = {r.stage for r in result.comparison.records if not r.passed}
    assert {"denoise", "decode"} & set(later) <= failing_stages


def test_fault_catalog_is_complete() -> None:
    """The six bugs issue 3 names, each with a stage in pipeline order and a step only inside the loop."""
    assert set(FAULTS) >= {"text_encoder_wrong_hidden_state", "sigma_shift_not_applied", "rotary_style_swapped",
                           "cfg_wrong_sign", "decode_scale_shift_wrong", "initial_noise_generator_order"}
    for fault in FAULTS.values():
        assert fault.expected_stage in STAGES
        assert (fault.expected_step is None) == (fault.expected_stage != "denoise")
        assert fault.description
