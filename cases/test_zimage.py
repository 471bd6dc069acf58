"""Z-Image text-to-image parity: the native pipeline against Diffusers' ZImagePipeline.

`pytest cases/test_zimage.py` runs the tiny checkpoint (Qwen3 text encoder with q/k norm and GQA, its
second-to-last hidden state, the single-stream DiT with refiners and learned pad tokens, FLUX's AutoencoderKL,
static-shift Euler), each run free and teacher-forced:
- fp32: the default request (48x80, CFG 5 in Z-Image's form, prompts left-padded to 48 tokens), two prompts of
  different lengths (16 and 33 tokens: caption blocks of 32 and 64, the DiT's batch padding and key mask), one
  unguided step; every record within rel_l2 <= 1e-5 of Diffusers; bf16 within the calibrated floors;
- faults: each LLM-encoder fault charged to encode/prompt_embeds (the think block as a shape mismatch); a swapped
  padding side measured invisible.
The native pipeline is the Hybrid style (one model-specific stage before denoising: native_models/pipelines/
zimage.py says why).
"""

from __future__ import annotations

import pytest

from harness.report.build import describe_failure
from harness.run.cases import get_case
from harness.run.parity import ParityResult, run_parity
from harness.verdicts.faults import FAULTS
from references.common.llm_faults import padding_side_swapped
from references.zimage.cases import LONG_PROMPT
from tests.shared_references import shared_reference

CASE = "zimage-tiny"
PARITY_REL_L2 = 1e-5  # the fp32 bar, per record, against Diffusers
REQUESTS = {
    "default": {},
    "two-prompts": {"extra_prompts": (LONG_PROMPT,)},
    "no-cfg-1step": {"negative_prompt": None, "true_cfg_scale": 1.0, "steps": 1},
}
ENCODER_FAULTS = ("zimage_hidden_state_wrong_layer", "zimage_chat_template_think_block",
                  "zimage_text_encoder_mask_ignored", "zimage_gqa_heads_grouped_wrong",
                  "zimage_rmsnorm_half_precision")


def assert_parity(result: ParityResult) -> None:
    first = result.comparison.first_divergence
    assert result.passed, describe_failure(first) if first else "no records compared"
    forced = {(r.stage, r.step) for r in result.comparison.forced_records}
    free = {(r.stage, r.step) for r in result.comparison.records if r.stage in ("denoise", "decode")}
    assert forced == free and result.report["forcing"] is True
    assert {r.stage for r in result.comparison.records} == {"encode", "timesteps", "latents", "denoise", "decode"}
    assert result.report["tolerances"]["source"].startswith("golden/tolerances/")


@pytest.mark.parametrize("name", list(REQUESTS))
def test_zimage_tiny_fp32_matches_diffusers(name: str) -> None:
    case = get_case(CASE)
    request = case.request(**REQUESTS[name])
    result = run_parity(case, request)
    assert_parity(result)
    records = list(result.comparison.all_records())
    value, where = max((r.metrics["rel_l2"], f"{r.stage}/{r.field}/{r.step} ({r.mode})") for r in records)
    print(f"worst rel_l2 against Diffusers: {value:.3g} at {where}")
    assert value <= PARITY_REL_L2, where
    fields = {r.field for r in result.comparison.records}
    assert ("transformer_output_uncond" in fields) == request.do_true_cfg
    mask = result.reference_trace[next(k for k in result.reference_trace if k.field == "prompt_embeds_mask")]
    # real tokens: 3 of the chat template before the prompt, 5 after it (8 + 8 for the default prompt)
    assert mask.sum(dim=1).tolist() == ([16, 33] if name == "two-prompts" else [16])
    latents = result.reference_trace[next(k for k in result.reference_trace if k.field == "initial")]
    assert latents.dtype.is_floating_point and str(latents.dtype) == "torch.float32"


@pytest.mark.parametrize("name", ["default", "two-prompts"])
def test_zimage_tiny_bf16_matches_diffusers(name: str) -> None:
    case = get_case(CASE)
    result = run_parity(case, case.request(dtype="bf16", **REQUESTS[name]))
    assert_parity(result)
    assert all(r.floor_multiple is not None for r in result.comparison.all_records())


@pytest.mark.parametrize("name", ENCODER_FAULTS)
def test_llm_encoder_faults_are_charged_to_encode(name: str) -> None:
    """Each LLM-encoder bug fails at encode/prompt_embeds (the think block as a shape mismatch, not a crash), and
    forcing keeps denoising and decoding clean."""
    fault = FAULTS[name]
    case = get_case(CASE)
    request = fault.request_for(case.request(steps=1))
    result = run_parity(case, request, mutate_native=fault.apply, reference=shared_reference(case.name, request))
    assert result.report["first_divergence"] == {"stage": "encode", "field": "prompt_embeds", "step": None}
    others = [r for r in result.comparison.local_records() if r.stage != "encode" and not r.passed]
    assert not others, [f"{r.stage}/{r.field}/{r.step} ({r.mode})" for r in others]
    if name == "zimage_chat_template_think_block":
        record = result.comparison.first_divergence
        assert record is not None and record.native_shape is not None and record.native_shape[1] > record.shape[1]


def test_padding_side_swap_is_invisible() -> None:
    """Right padding where the tokenizer pads left (every prompt padded to 48 tokens): the pipeline keeps each
    prompt's real tokens by mask, and rotary attention sees position differences only, so the prompt states move
    by rounding alone and parity holds (why the catalog has no such fault)."""
    case = get_case(CASE)
    request = case.request(steps=1)
    result = run_parity(case, request, mutate_native=padding_side_swapped,
                        reference=shared_reference(case.name, request))
    assert result.passed
    embeds = next(r for r in result.comparison.records if r.field == "prompt_embeds")
    print(f"padding side swapped: encode/prompt_embeds rel_l2 {embeds.metrics['rel_l2']:.3g} "
          f"({embeds.floor_multiple:.3g}x floor)")
    assert embeds.metrics["rel_l2"] < PARITY_REL_L2


def test_forcing_from_its_own_trace_is_bit_identical() -> None:
    """Forcing a side from its own free trace reproduces it bit for bit (bf16 model, float32 latents, two prompts
    of different lengths), on the native side and on the reference side (the forcer calibration uses)."""
    import torch

    from harness.run.forcing import FORCED_STAGES
    from harness.run.native_runner import plan_native_run, run_native
    from harness.trace.memory import Trace

    case = get_case(CASE)
    checkpoint = case.build_checkpoint()
    request = case.request(dtype="bf16", steps=2, extra_prompts=(LONG_PROMPT,), batch_size=2)
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
