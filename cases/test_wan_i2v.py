"""Wan image-to-video parity (registry family `wan_i2v`): the native pipeline against Diffusers'
WanImageToVideoPipeline, on one rank and on several.

`pytest cases/test_wan_i2v.py` runs two tiny checkpoints (references/wan/tiny.py), each run free and teacher-forced:
- wan-i2v-tiny, Wan 2.1 I2V: a CLIP vision tower (the DiT gets its penultimate state), the DiT's image path,
  the causal 3D VAE encoding the conditioning video (the picture, then zero frames), 4 mask channels;
- wan-a14b-i2v-tiny, Wan 2.2 A14B I2V: two experts switched at boundary ratio 0.9 (timestep 900 itself goes to the
  high-noise expert), conditioning latents without CLIP.
Both start from a 96x60 synthetic picture resized to 80x48 (Lanczos for the VAE, bicubic + crop for CLIP). Every
record within rel_l2 <= 1e-5 of Diffusers in fp32, the new ones included (`encode/image_embeds`, `latents/mask`,
`latents/condition`, and `denoise/expert` compared exactly); bf16 within the calibrated floors.

Multi-rank (never skipped, gloo on the CPU): TP=2, SP=2 and TP=2 x SP=2 of wan-i2v-tiny against Diffusers and
against one rank (the SP runs on 9 frames: 45 tokens, padded to 46 across 2 ranks); SP=2 of the two experts. Two
planted shard bugs must fail at the first denoising step against both: the cross-attention context sent through
the Ulysses exchange (SGLang's Wan bug) and the conditioning tokens of the wrong rank.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_wan import PARITY_REL_L2, assert_fp32_records, worst

from harness.report.build import describe_failure
from harness.run.cases import get_case
from harness.run.multirank import Topology
from harness.run.parity import ParityResult, run_parity
from harness.trace.keys import RecordKey
from harness.verdicts.fault_matrix import fault_request, run_fault
from harness.verdicts.faults import FAULTS
from tests.shared_references import shared_reference

CASES = {"i2v": "wan-i2v-tiny", "a14b-i2v": "wan-a14b-i2v-tiny"}
TOPOLOGIES = {  # name -> (case, tp, sp, frames)
    "tp2": ("wan-i2v-tiny", 2, 1, 5),
    "sp2": ("wan-i2v-tiny", 1, 2, 9),  # 45 tokens: padded to 46 across the 2 ranks
    "tp2sp2": ("wan-i2v-tiny", 2, 2, 9),
    "a14b-sp2": ("wan-a14b-i2v-tiny", 1, 2, 9),  # both experts sequence-parallel
}


def assert_i2v_parity(result: ParityResult, frames: int, two_experts: bool) -> None:
    first = result.comparison.first_divergence
    assert result.comparison.passed, describe_failure(first) if first else "no records compared"
    forced = {(r.stage, r.step) for r in result.comparison.forced_records}
    assert forced == {(r.stage, r.step) for r in result.comparison.records if r.stage in ("denoise", "decode")}
    fields = {(r.stage, r.field) for r in result.comparison.records}
    assert {("latents", "mask"), ("latents", "condition"), ("denoise", "transformer_output_uncond")} <= fields
    assert (("encode", "image_embeds") in fields) is not two_experts  # Wan 2.2 A14B I2V has no image encoder
    assert (("denoise", "expert") in fields) is two_experts
    assert result.report["noise"]["native"]["frames"] == frames


def experts_of(trace: object, steps: int) -> list[int]:
    return [int(trace[RecordKey("denoise", "expert", step)]) for step in range(steps)]  # type: ignore[index]


@pytest.mark.parametrize("name", [pytest.param(case, id=key, marks=pytest.mark.covers("wan_i2v", "1rank"))
                                  for key, case in CASES.items()])
def test_fp32_matches_diffusers(name: str) -> None:
    case = get_case(name)
    result = run_parity(case, case.request())
    two_experts = name == "wan-a14b-i2v-tiny"
    assert_i2v_parity(result, 5, two_experts)
    assert_fp32_records(list(result.comparison.all_records()), f"Diffusers ({name})")
    records = {(r.stage, r.field): r for r in result.comparison.records if r.step is None}
    assert records[("latents", "mask")].shape == [1, 4, 2, 6, 10] and records[("latents", "mask")].metrics[
        "max_abs"] == 0.0  # 0/1 values: exact
    assert records[("latents", "condition")].shape == [1, 16, 2, 6, 10]
    if two_experts:
        assert experts_of(result.reference_trace, 4) == experts_of(result.native_trace, 4) == [0, 0, 1, 1]
        exact = [r for r in result.comparison.all_records() if r.field == "expert"]
        assert len(exact) == 8 and all(r.tolerance["threshold"] == 0.0 for r in exact)
    else:
        assert records[("encode", "image_embeds")].shape == [1, 17, 32]  # 16 patches + class token, CLIP width


@pytest.mark.parametrize("name", [pytest.param(case, id=key, marks=pytest.mark.covers("wan_i2v", "1rank"))
                                  for key, case in CASES.items()])
def test_bf16_matches_diffusers(name: str) -> None:
    case = get_case(name)
    result = run_parity(case, case.request(dtype="bf16"))
    assert_i2v_parity(result, 5, name == "wan-a14b-i2v-tiny")
    assert result.report["tolerances"]["source"].endswith(f"{name}.bf16.cpu.json")


def test_batch_of_two_matches_diffusers() -> None:
    """B = 2 prompts: the reference gets a list of two prompts (one image, its tokens repeated per prompt)."""
    from dataclasses import replace

    case = get_case("wan-i2v-tiny")
    result = run_parity(case, replace(case.request(steps=2), batch_size=2))
    assert_i2v_parity(result, 5, False)
    assert next(r for r in result.comparison.records if r.field == "image_embeds").shape == [2, 17, 32]
    assert_fp32_records(list(result.comparison.all_records()), "Diffusers (batch 2)")


# ---- multi-rank ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [pytest.param(name, id=name, marks=pytest.mark.covers("wan_i2v", name.removeprefix("a14b-")))
             for name in TOPOLOGIES]
)
def test_multirank_matches_diffusers_and_one_rank(name: str, tmp_path: Path) -> None:
    case_name, tp, sp, frames = TOPOLOGIES[name]
    case = get_case(case_name)
    result = run_parity(case, case.request(frames=frames), topology=Topology(tp, sp), out_dir=tmp_path)
    assert_i2v_parity(result, frames, case_name == "wan-a14b-i2v-tiny")
    assert_fp32_records(list(result.comparison.all_records()), f"Diffusers ({name})")
    ranks = result.ranks
    assert ranks is not None and ranks.vs_single is not None and ranks.ranks_identical
    assert len(ranks.vs_single.records) == len(result.comparison.records)
    assert len(ranks.vs_single.forced_records) == len(result.comparison.forced_records)
    assert_fp32_records(list(ranks.vs_single.all_records()), f"one rank ({name})")
    assert result.report["ranks"]["vs_single_rank"]["verdict"] == "pass" and result.report["verdict"] == "pass"


PLANTED = ["sp_cross_attention_context_exchanged", "sp_condition_shard_wrong_rank"]


@pytest.mark.parametrize("fault_name", [pytest.param(name, marks=pytest.mark.covers("wan_i2v", "sp2-planted-bug"))
                                        for name in PLANTED])
def test_planted_shard_bug_is_caught_at_the_first_denoising_step(fault_name: str) -> None:
    """Against Diffusers and against one rank, the first divergence is the DiT's output at step 0 (teacher
    forced: a local error), while encode, timesteps, latents and the forced decode pass."""
    fault = FAULTS[fault_name]
    case = get_case("wan-i2v-tiny")
    request = fault.request_for(case.request())
    result = run_parity(case, request, mutate_native=fault.apply, topology=Topology(*fault.topology),
                        reference=shared_reference(case.name, request))
    assert result.report["verdict"] == "fail"
    assert result.report["first_divergence"] == {"stage": "denoise", "field": "transformer_output", "step": 0}
    assert result.report["first_divergence_local"] is True
    first = result.comparison.first_divergence
    assert first is not None and first.metrics["rel_l2"] > 100 * PARITY_REL_L2
    print(f"{fault_name}: step-0 DiT output rel_l2 {first.metrics['rel_l2']:.3g} against Diffusers")
    others = [r for r in result.comparison.local_records() if r.stage != "denoise" and not r.passed]
    assert not others, [f"{r.stage}/{r.field} ({r.mode})" for r in others]
    vs_single = result.report["ranks"]["vs_single_rank"]
    assert vs_single["verdict"] == "fail"
    assert vs_single["first_divergence"] == {"stage": "denoise", "field": "transformer_output", "step": 0}


def test_context_tiled_by_the_exchange_alone_is_numerically_benign() -> None:
    """The faithful form of the SGLang bug, k/v of the (replicated) context through the all-to-all with nothing
    else changed, tiles the keys w times: softmax over [k; k] with values [v; v] is the same attention, so parity
    cannot (and must not) flag it; it costs w times the keys and the exchange. What makes the planted version above
    wrong is the length-based image/text split that follows. Measured here: rank-count parity holds."""
    case = get_case("wan-i2v-tiny")
    result = run_parity(case, case.request(steps=2), mutate_native=tile_context_keys, topology=Topology(1, 2))
    ranks = result.ranks
    assert ranks is not None and ranks.vs_single is not None
    value, where = worst(list(ranks.vs_single.all_records()))
    print(f"context k/v tiled by the exchange: worst rel_l2 against one rank {value:.3g} at {where}")
    assert result.passed and value <= PARITY_REL_L2


def tile_context_keys(pipeline: object) -> None:
    """Every cross-attention core exchanges q, k and v the Ulysses way (module-level: pickled into the ranks)."""
    from native_models.parallel import comm
    from native_models.parallel.sequence_parallel import UlyssesAttention

    transformer = pipeline.get_module("transformer")  # type: ignore[attr-defined]
    state = next(m for m in transformer.modules() if isinstance(m, UlyssesAttention)).state

    class Exchanged(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: object = None
                    ) -> torch.Tensor:
            q, k, v = (comm.sequence_to_heads(t, state.group) for t in (q, k, v))  # k, v: (B, H/w, w L_ctx, D)
            return comm.heads_to_sequence(self.inner(q, k, v), state.group)

    for block in transformer.blocks:
        block.attn2.core = Exchanged(block.attn2.core)
        block.attn2.image_core = Exchanged(block.attn2.image_core)


# ---- faults of the image-to-video inputs and of the expert switch ------------------------------------------------

FAULT_RUNS = [(fault, case, dtype) for case in CASES.values() for fault in
              ("wan_i2v_image_embeds_last_layer", "wan_i2v_mask_channels_wrong_order",
               "wan_i2v_condition_not_normalized", "wan_i2v_vae_encoder_wrong_dtype",
               "wan_expert_switch_one_step_early")
              for dtype in ("fp32", "bf16")
              if FAULTS[fault].applies_to(dtype) and (not FAULTS[fault].cases or case in FAULTS[fault].cases)]


@pytest.mark.parametrize(("fault_name", "case_name", "dtype"), FAULT_RUNS,
                         ids=[f"{f}-{c}-{d}" for f, c, d in FAULT_RUNS])
def test_fault_is_detected_and_localized(fault_name: str, case_name: str, dtype: str) -> None:
    """Each fault fails the teacher-forced parity run at its own record (stage, field, step), every other stage's
    local records passing (harness/verdicts/fault_matrix.py)."""
    case, fault = get_case(case_name), FAULTS[fault_name]
    reference = shared_reference(case_name, fault_request(case, fault, dtype))
    outcome = run_fault(case, fault, dtype, reference=reference)
    print(f"{fault_name} {case_name} {dtype}: found {outcome.found}, {outcome.x_floor} x floor")
    assert outcome.detected and outcome.localized, (outcome.found, outcome.other_failing_stages, outcome.problem)
