"""Catalog faults drilled to their module (harness/verdicts/fault_matrix.py with the drill on): a sample that
covers every kind of answer: a leaf module (CLIP attention, a VAE norm, a VAE convolution computing in the wrong
precision), a module's own code (attention scaling), the component's own forward (rotary style), no module at all
(a DiT fed the wrong timestep scale: right on the reference's inputs), and a broken Ulysses all-to-all named at
the attention it wraps on 2 ranks. `diffparity faults CASE` runs the whole catalog (docs/drill.md)."""

from __future__ import annotations

import pytest

from harness.run.cases import get_case
from harness.verdicts.fault_matrix import fault_request, run_fault
from harness.verdicts.faults import FAULTS
from tests.shared_references import shared_reference

SAMPLE = [
    ("flux-tiny", "text_encoder_mask_ignored"),
    ("flux-tiny", "attention_softmax_scale_wrong"),
    ("flux-tiny", "rotary_style_swapped"),
    ("flux-tiny", "timestep_value_range_wrong"),
    ("flux-tiny", "vae_decode_in_bf16"),
    ("flux-tiny", "norm_eps_changed"),
    ("wan-tiny", "wan_qk_norm_weights_swapped"),
    ("wan-tiny", "sp_heads_wrong_order"),
]


@pytest.mark.parametrize(("case_name", "fault_name"), SAMPLE, ids=[name for _, name in SAMPLE])
def test_a_catalog_fault_is_drilled_to_its_expected_module(case_name: str, fault_name: str) -> None:
    case, fault = get_case(case_name), FAULTS[fault_name]
    base = case.request(steps=2)
    outcome = run_fault(case, fault, "fp32", base=base,
                        reference=shared_reference(case_name, fault_request(case, fault, "fp32", base)))
    assert outcome.detected and outcome.localized, outcome.to_dict()
    assert outcome.drill == "ran", outcome.drill_note
    assert outcome.found_module == fault.expected_module and outcome.module_ok, outcome.to_dict()


def test_a_correct_tp2_sp2_run_flags_no_module() -> None:
    """Every module of the DiT on 4 ranks (45 tokens padded to 46 for Ulysses), gathered, matches the single-rank
    run's and the reference's: no false alarm from the gathering itself."""
    from harness.drill.multirank import drill_ranks
    from harness.run.multirank import Topology

    case = get_case("wan-tiny")
    request = case.request(steps=1, frames=9)
    data = drill_ranks(case, request, case.build_checkpoint(), {"stage": "denoise", "field": "transformer_output",
                                                               "step": 0}, Topology(tp=2, sp=2))
    assert data["status"] == "ran" and data["module"] is None, data["verdict"]
    judged = [m for m in data["modules"] if m.get("vs_single_rank_passed") is not None]
    assert len(judged) >= 60 and all(m["vs_single_rank_passed"] for m in judged)
    cores = [m for m in data["modules"] if m["module"].endswith("attn1.core")]
    assert cores and all(m["kind"] == "UlyssesAttention" and m["vs_single_rank"]["rel_l2"] < 1e-6 for m in cores)
