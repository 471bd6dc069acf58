"""The Wan image-to-video and two-expert faults (references/wan/faults.py, issue 15) as a catalog: every failure
mode the issue names is there, limited to the cases that have the part it breaks, and a fault breaks only the
pipeline it is applied to (no class, module or shared config patched). Where each one is caught:
cases/test_wan_i2v.py and cases/test_wan.py."""

from __future__ import annotations

import pytest
import torch

from harness.run.cases import get_case
from harness.run.native_runner import plan_native_run, run_native
from harness.trace.memory import Trace
from harness.verdicts.faults import FAULTS, faults_for

# issue 15: fault -> the cases it applies to (None: every case of the wan_i2v family)
REQUIRED = {
    "wan_i2v_image_embeds_last_layer": ("wan-i2v-tiny",),  # Wan 2.2 A14B I2V has no image encoder
    "wan_i2v_mask_channels_wrong_order": None,
    "wan_i2v_condition_not_normalized": None,
    "wan_i2v_vae_encoder_wrong_dtype": None,
    "wan_expert_switch_one_step_early": ("wan-a14b-tiny", "wan-a14b-i2v-tiny"),
    "sp_cross_attention_context_exchanged": ("wan-i2v-tiny",),  # the image tokens' split needs CLIP's context
    "sp_condition_shard_wrong_rank": None,
}


def test_catalog_names_every_issue_15_fault() -> None:
    for name, cases in REQUIRED.items():
        fault = FAULTS[name]
        assert "wan_i2v" in fault.families, name
        assert (fault.cases or None) == cases, name
    assert {f.name for f in faults_for("wan_i2v", "wan-a14b-i2v-tiny")} == {
        name for name, cases in REQUIRED.items() if cases is None or "wan-a14b-i2v-tiny" in cases}
    assert {f.name for f in faults_for("wan", "wan-tiny")}.isdisjoint(REQUIRED)  # nothing to break in T2V
    multirank = {name for name in REQUIRED if FAULTS[name].topology != (1, 1)}
    assert multirank == {"sp_cross_attention_context_exchanged", "sp_condition_shard_wrong_rank"}
    assert all(FAULTS[name].topology == (1, 2) for name in multirank)


@pytest.mark.parametrize("case_name", ["wan-i2v-tiny", "wan-a14b-i2v-tiny"])
def test_a_fault_breaks_only_the_pipeline_it_is_applied_to(case_name: str) -> None:
    """Every single-rank fault of the case applied to one built pipeline (the shard faults refuse one rank); a
    pipeline built afterwards reproduces a clean run bit for bit."""
    case = get_case(case_name)
    checkpoint = case.build_checkpoint()
    request = case.request(steps=4, height=32, width=32)  # 4 steps: the expert switch needs the one after it
    clean = Trace()
    run_native(checkpoint, request, clean)
    plan = plan_native_run(checkpoint, request)
    broken = plan.pipeline_cls(checkpoint, plan.config, dtype=plan.batch.dtype, device=plan.batch.device)
    applied = []
    for fault in faults_for(case.family, case.name):
        if fault.topology != (1, 1):
            with pytest.raises(ValueError):
                fault.apply(broken)
            continue
        fault.apply(broken)
        applied.append(fault.name)
    assert len(applied) == 4, applied  # image-layer or expert-switch fault, mask, normalisation, encoder dtype
    again = Trace()
    run_native(checkpoint, request, again)
    assert again.keys() == clean.keys()
    for key, tensor in clean.items():
        assert torch.equal(again[key], tensor), key.name()
