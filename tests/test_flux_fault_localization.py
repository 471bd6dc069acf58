"""Every broken native variant of references/flux/faults.py must fail, and with teacher forcing on, the first divergence
must name the stage (field, and step inside the loop) that the bug is in, while every other stage's local
records still pass: the error is charged to the stage that makes it, not to everything downstream. The loud
faults (`raises`) must be refused by the stage that checks the field, naming stage and field.

Runs in fp32 and bf16 (where the fault exists in that precision) at the case's tolerances (the stored
calibration when there is one). The Diffusers side is run once per distinct request in this process and shared by
every fault of that request (`reference_of`, tests/shared_references.py), as `diffparity faults` does: it is
deterministic for a request, so sharing it changes no number, and each test then costs its native runs only.
"""

from __future__ import annotations

import pytest

from harness.run.cases import get_case
from harness.run.parity import run_parity
from harness.run.request import GenerationRequest
from harness.run.runners import SideRun
from harness.trace.keys import STAGES
from harness.verdicts.fault_matrix import trace_stage_of
from harness.verdicts.faults import FAULTS, Fault, faults_for
from native_models.errors import StageFieldError
from tests.shared_references import shared_reference


def reference_of(request: GenerationRequest) -> SideRun:
    """flux-tiny's reference side of `request`, run once per distinct request in this test process."""
    return shared_reference("flux-tiny", request)


PAIRS = [(fault, dtype) for fault in faults_for("flux") for dtype in ("fp32", "bf16") if fault.applies_to(dtype)]


@pytest.mark.parametrize(("fault", "dtype"), PAIRS, ids=[f"{f.name}-{d}" for f, d in PAIRS])
def test_fault_is_localized_with_forcing(fault: Fault, dtype: str) -> None:
    case = get_case("flux-tiny")
    request = fault.request_for(case.request(dtype=dtype))
    stage, field, step = fault.expected_for(request)
    if fault.raises:
        with pytest.raises(StageFieldError) as caught:
            run_parity(case, request, mutate_native=fault.apply, reference=reference_of(request))
        assert (trace_stage_of(caught.value.stage), caught.value.field) == (stage, field), str(caught.value)
        return
    result = run_parity(case, request, mutate_native=fault.apply, reference=reference_of(request))
    comparison = result.comparison
    first = comparison.first_divergence
    assert not result.passed and first is not None
    assert (first.stage, first.step) == (stage, step), result.report["first_divergence_detail"]
    assert field is None or first.field == field, result.report["first_divergence_detail"]
    assert result.report["first_divergence"] == {"stage": first.stage, "field": first.field, "step": first.step}
    assert result.report["first_divergence_local"] is True
    # forcing keeps every other stage clean: their local records (forced where forced) all pass
    allowed = {stage, *fault.also_fails}
    others = [r for r in comparison.local_records() if r.stage not in allowed and not r.passed]
    assert not others, [f"{r.stage}/{r.field}/{r.step} ({r.mode})" for r in others]


def test_rotary_fault_on_a_non_square_bf16_image() -> None:
    """One of the weakest catches of the catalog: with 3x5 patches the tiny DiT's rotary angles are small, and
    the split-half rotation moves the forced step-0 output by rel_l2 2.2e-2 against a threshold of 9.2e-3."""
    fault = FAULTS["rotary_style_swapped"]
    case = get_case("flux-tiny")
    result = run_parity(case, case.request(dtype="bf16", height=48, width=80), mutate_native=fault.apply)
    first = result.comparison.first_divergence
    assert first is not None and (first.stage, first.field, first.step, first.mode) == (
        "denoise", "transformer_output", 0, "forced")


def test_height_width_swap_is_invisible_on_a_square_image() -> None:
    """Why the fault needs a non-square request: on a square grid the swapped ids are the same ids."""
    fault = FAULTS["image_ids_height_width_swapped"]
    case = get_case("flux-tiny")
    assert fault.request_for(case.request()).height != fault.request_for(case.request()).width
    assert run_parity(case, case.request(), mutate_native=fault.apply).passed


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
