"""Qwen-Image text-to-image parity: the native pipeline against Diffusers' QwenImagePipeline, on one rank and several.

`pytest cases/test_qwenimage.py` runs the tiny checkpoint (Qwen2.5-VL text path with GQA, the dual-stream DiT, the
causal 3D VAE on one frame, dynamic-shift Euler with a terminal sigma, norm-preserving true CFG), each run free
and teacher-forced:
- one rank, fp32: the default request (48x80, true CFG), and two prompts of different lengths in one call (the
  shorter left-padded in the encoder, zero-padded and masked in the DiT); every record within rel_l2 <= 1e-5 of
  Diffusers; bf16 within the calibrated floors;
- TP=2, SP=2 (Ulysses on the image stream, text replicated; 15 image tokens padded to 16) and TP=2 x SP=2, each
  against Diffusers and within rel_l2 <= 1e-5 of the single-rank native run; SP also with two prompts (the text
  mask inside the joint attention);
- faults: each LLM-encoder fault charged to encode/prompt_embeds (the drop index as a shape mismatch), a broken
  shard to the first denoising step; a swapped padding side measured invisible.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.report.build import describe_failure
from harness.run.cases import get_case
from harness.run.multirank import Topology
from harness.run.parity import ParityResult, run_parity
from harness.verdicts.faults import FAULTS
from native_models.errors import RequestError
from references.common.llm_faults import padding_side_swapped
from tests.shared_references import shared_reference

CASE = "qwenimage-tiny"
PARITY_REL_L2 = 1e-5  # the fp32 bar, per record, against Diffusers and against one rank
TWO_PROMPTS = ("a small blue bird",)  # shorter than the default prompt: padded in the same encode call
REQUESTS = {"default": {}, "two-prompts": {"extra_prompts": TWO_PROMPTS}}
TOPOLOGIES = {"tp2": (2, 1, {}), "sp2": (1, 2, {"extra_prompts": TWO_PROMPTS}), "tp2sp2": (2, 2, {})}
ENCODER_FAULTS = ("qwen_hidden_state_wrong_layer", "qwen_template_drop_off_by_one", "qwen_text_encoder_mask_ignored",
                  "qwen_gqa_heads_grouped_wrong", "qwen_rmsnorm_half_precision")


def worst(records: list) -> tuple[float, str]:
    scored = [(r.metrics["rel_l2"], f"{r.stage}/{r.field}/{r.step} ({r.mode})") for r in records
              if "rel_l2" in r.metrics]
    return max(scored)


def assert_parity(result: ParityResult) -> None:
    first = result.comparison.first_divergence
    assert result.passed, describe_failure(first) if first else "no records compared"
    forced = {(r.stage, r.step) for r in result.comparison.forced_records}
    free = {(r.stage, r.step) for r in result.comparison.records if r.stage in ("denoise", "decode")}
    assert forced == free and result.report["forcing"] is True
    assert {r.stage for r in result.comparison.records} == {"encode", "timesteps", "latents", "denoise", "decode"}
    assert result.report["tolerances"]["source"].startswith("golden/tolerances/")


def assert_fp32_records(records: list, against: str) -> None:
    value, where = worst(records)
    print(f"worst rel_l2 against {against}: {value:.3g} at {where}")
    failing = [f"{r.stage}/{r.field}/{r.step} ({r.mode}): {r.metrics.get('rel_l2')}" for r in records
               if not r.metrics.get("rel_l2", float("inf")) <= PARITY_REL_L2]
    assert not failing, failing


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.covers("qwenimage", "1rank")) for n in REQUESTS])
def test_qwenimage_tiny_fp32_matches_diffusers(name: str) -> None:
    case = get_case(CASE)
    request = case.request(**REQUESTS[name])
    result = run_parity(case, request)
    assert_parity(result)
    assert_fp32_records(list(result.comparison.all_records()), "Diffusers")
    fields = {r.field for r in result.comparison.records}
    assert {"prompt_embeds_mask", "negative_prompt_embeds", "transformer_output_uncond"} <= fields  # true CFG
    embeds = next(r for r in result.comparison.records if r.field == "prompt_embeds")
    mask = result.reference_trace[next(k for k in result.reference_trace if k.field == "prompt_embeds_mask")]
    # after the template's 34 tokens: the prompt's own (8 for "a red fox in the snow at night", 4 for the shorter
    # one) and the template's 5 closing tokens (<|im_end|>, newline, <|im_start|>, assistant, newline)
    assert embeds.shape == [len(request.prompts), 13, 64]
    assert mask.sum(dim=1).tolist() == ([13] if name == "default" else [13, 9])  # the shorter one zero-padded
    assert next(r for r in result.comparison.records if r.field == "initial").shape == [len(request.prompts), 16, 6, 10]


@pytest.mark.covers("qwenimage", "1rank")
def test_qwenimage_tiny_bf16_matches_diffusers() -> None:
    case = get_case(CASE)
    result = run_parity(case, case.request(dtype="bf16"))
    assert_parity(result)
    assert all(r.floor_multiple is not None for r in result.comparison.all_records())


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.covers("qwenimage", n)) for n in TOPOLOGIES])
def test_qwenimage_tiny_multirank_matches_diffusers_and_one_rank(name: str, tmp_path: Path) -> None:
    tp, sp, overrides = TOPOLOGIES[name]
    case = get_case(CASE)
    result = run_parity(case, case.request(**overrides), topology=Topology(tp, sp), out_dir=tmp_path)
    assert_parity(result)
    assert_fp32_records(list(result.comparison.all_records()), f"Diffusers ({name})")
    ranks = result.ranks
    assert ranks is not None and ranks.vs_single is not None and ranks.ranks_identical
    assert len(ranks.vs_single.records) == len(result.comparison.records)
    assert len(ranks.vs_single.forced_records) == len(result.comparison.forced_records)
    assert_fp32_records(list(ranks.vs_single.all_records()), f"one rank ({name})")
    assert result.report["ranks"]["vs_single_rank"]["verdict"] == "pass" and result.report["verdict"] == "pass"


@pytest.mark.covers("qwenimage", "sp2-broken-shard")
def test_broken_joint_attention_shard_diverges_at_the_first_denoising_step() -> None:
    """Ulysses' image all-to-all back with the ranks' heads in the wrong order: caught at denoise step 0 against
    Diffusers and against one rank, every stage before it (and the forced decode) passing."""
    fault = FAULTS["qwenimage_sp_heads_wrong_order"]
    case = get_case(CASE)
    request = fault.request_for(case.request(steps=2))
    result = run_parity(case, request, mutate_native=fault.apply, topology=Topology(*fault.topology),
                        reference=shared_reference(case.name, request))
    assert result.report["first_divergence"] == {"stage": "denoise", "field": "transformer_output", "step": 0}
    others = [r for r in result.comparison.local_records() if r.stage != "denoise" and not r.passed]
    assert not others, [f"{r.stage}/{r.field} ({r.mode})" for r in others]
    assert result.report["ranks"]["vs_single_rank"]["first_divergence"]["stage"] == "denoise"


@pytest.mark.parametrize("name", ENCODER_FAULTS)
def test_llm_encoder_faults_are_charged_to_encode(name: str) -> None:
    """Each LLM-encoder bug fails at encode/prompt_embeds (the drop index as a shape mismatch, not a crash), and
    forcing keeps denoising and decoding clean."""
    fault = FAULTS[name]
    case = get_case(CASE)
    request = fault.request_for(case.request(steps=2))
    result = run_parity(case, request, mutate_native=fault.apply, reference=shared_reference(case.name, request))
    assert result.report["first_divergence"] == {"stage": "encode", "field": "prompt_embeds", "step": None}
    others = [r for r in result.comparison.local_records() if r.stage != "encode" and not r.passed]
    assert not others, [f"{r.stage}/{r.field}/{r.step} ({r.mode})" for r in others]
    if name == "qwen_template_drop_off_by_one":
        record = result.comparison.first_divergence
        assert record is not None and record.native_shape == [1, 14, 64] and record.shape == [1, 13, 64]


def test_padding_side_swap_is_invisible() -> None:
    """Right padding where the tokenizer pads left, with two prompts of different lengths: the pipeline keeps each
    prompt's real tokens by mask, and rotary attention sees position differences only, so the prompt states move
    by rounding alone and parity holds (why the catalog has no such fault)."""
    case = get_case(CASE)
    result = run_parity(case, case.request(steps=2, extra_prompts=TWO_PROMPTS), mutate_native=padding_side_swapped)
    assert result.passed
    embeds = next(r for r in result.comparison.records if r.field == "prompt_embeds")
    print(f"padding side swapped: encode/prompt_embeds rel_l2 {embeds.metrics['rel_l2']:.3g} "
          f"({embeds.floor_multiple:.3g}x floor)")
    assert embeds.metrics["rel_l2"] < PARITY_REL_L2


def test_requests_without_a_reference_are_refused() -> None:
    """One step under the terminal shift (Diffusers gives NaN sigmas) is refused before anything runs; several
    prompts with several images each (Diffusers pairs their masks with the wrong images) too."""
    case = get_case(CASE)
    with pytest.raises(RequestError, match="at least 2 steps"):
        run_parity(case, case.request(steps=1))
    with pytest.raises(ValueError, match="wrong images"):
        run_parity(case, case.request(steps=2, extra_prompts=TWO_PROMPTS, batch_size=2))


def test_forcing_from_its_own_trace_is_bit_identical() -> None:
    """Forcing a side from its own free trace reproduces it bit for bit (bf16, two prompts: masks included), on
    the native side and on the reference side (the forcer calibration uses)."""
    import torch

    from harness.run.forcing import FORCED_STAGES
    from harness.run.native_runner import plan_native_run, run_native
    from harness.trace.memory import Trace

    case = get_case(CASE)
    checkpoint = case.build_checkpoint()
    request = case.request(dtype="bf16", steps=2, extra_prompts=TWO_PROMPTS)
    free, again, forced = Trace(), Trace(), Trace()
    run_native(checkpoint, request, free)
    run_native(checkpoint, request, again, plan=plan_native_run(checkpoint, request), reference=free,
               forced_trace=forced)
    keys = [key for key in free if key.stage in FORCED_STAGES]
    assert forced.keys() == keys and all(torch.equal(forced[key], free[key]) for key in keys)
    baseline, reference_forced = Trace(), Trace()
    case.run_reference(checkpoint, request, baseline, None)
    assert case.run_reference_forced is not None
    case.run_reference_forced(checkpoint, request, reference_forced, baseline)
    assert reference_forced.keys() == baseline.keys()
    assert all(torch.equal(reference_forced[key], tensor) for key, tensor in baseline.items())
