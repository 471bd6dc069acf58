"""Wan 2.1 text-to-video parity: the native pipeline against Diffusers' WanPipeline, on one rank and on several.

`pytest cases/test_wan.py` runs the tiny checkpoint (UMT5, a 4-head DiT, the causal 3D VAE, UniPC, true CFG),
each run free and teacher-forced:
- one rank, fp32: 5 frames (2 latent frames, 30 DiT tokens) and 9 frames (3 latent frames, an odd count, 45
  tokens); every record within rel_l2 <= 1e-5 of Diffusers; bf16 within the bf16 tolerances;
- TP=2, SP=2 and TP=2 x SP=2 (gloo, forked ranks on 127.0.0.1, harness/run/multirank.py), the SP topologies on
  45 tokens, which do not divide by 2 (Ulysses pads them to 46 and masks the pad): each against Diffusers and
  every record within rel_l2 <= 1e-5 of the single-rank native run; every rank decodes the same video;
- a broken shard (Ulysses' all-to-all back returning the ranks' heads in the wrong order) must fail with the
  first divergence at the first denoising step.
Decoded videos get per-frame image metrics and the noise detector's temporal (flicker) check in every report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.report.artifacts import image_metrics_section
from harness.report.build import describe_failure
from harness.run.cases import get_case
from harness.run.multirank import Topology
from harness.run.parity import ParityResult, run_parity
from harness.verdicts.faults import FAULTS
from tests.shared_references import shared_reference

PARITY_REL_L2 = 1e-5  # the fp32 bar, per record, against Diffusers and against one rank
FRAMES = {"5frames": 5, "9frames": 9}  # 30 and 45 DiT tokens at 48x80
TOPOLOGIES = {  # name -> (tp, sp, frames)
    "tp2": (2, 1, 5),
    "sp2": (1, 2, 9),  # 45 tokens: padded to 46 across the 2 ranks
    "tp2sp2": (2, 2, 9),
}


def worst(records: list) -> tuple[float, str]:
    scored = [(r.metrics["rel_l2"], f"{r.stage}/{r.field}/{r.step} ({r.mode})") for r in records
              if "rel_l2" in r.metrics]
    return max(scored)


def assert_parity(result: ParityResult, frames: int) -> None:
    first = result.comparison.first_divergence
    assert result.comparison.passed, describe_failure(first) if first else "no records compared"
    # the forced run covers every denoising step and the decode (UniPC warm-started from the reference)
    forced = {(r.stage, r.step) for r in result.comparison.forced_records}
    free = {(r.stage, r.step) for r in result.comparison.records if r.stage in ("denoise", "decode")}
    assert forced == free and result.report["forcing"] is True
    stages = {r.stage for r in result.comparison.records}
    assert stages == {"encode", "timesteps", "latents", "denoise", "decode"}
    fields = {r.field for r in result.comparison.records}
    assert {"negative_prompt_embeds", "transformer_output_uncond"} <= fields  # true CFG, as Wan samples
    # a video: per-frame image metrics, and the noise detector's temporal check on both sides
    metrics = image_metrics_section(result.native_frames, result.reference_frames)["frames"]
    assert [m["frame"] for m in metrics] == list(range(frames))
    if result.report["request"]["dtype"] == "fp32":
        # dB: the decoded videos agree to ~1e-5 of a grey level, or exactly ("inf": both sides on one SDPA kernel)
        assert min(float(m["psnr"]) for m in metrics) > 100
    for side in ("native", "reference"):
        assert result.report["noise"][side]["frames"] == frames and "temporal" in result.report["noise"][side]


def assert_fp32_records(records: list, against: str) -> None:
    value, where = worst(records)
    print(f"worst rel_l2 against {against}: {value:.3g} at {where}")
    failing = [f"{r.stage}/{r.field}/{r.step} ({r.mode}): {r.metrics.get('rel_l2')}" for r in records
               if not r.metrics.get("rel_l2", float("inf")) <= PARITY_REL_L2]
    assert not failing, failing


@pytest.mark.parametrize(
    "frames", [pytest.param(n, id=name, marks=pytest.mark.covers("wan", "1rank")) for name, n in FRAMES.items()]
)
def test_wan_tiny_fp32_matches_diffusers(frames: int) -> None:
    case = get_case("wan-tiny")
    result = run_parity(case, case.request(frames=frames))
    assert_parity(result, frames)
    assert_fp32_records(list(result.comparison.all_records()), "Diffusers")
    assert {r.step for r in result.comparison.records if r.stage == "denoise"} == set(range(4))
    assert result.report["records"][0]["shape"] == [1, 64, 32]  # (B, max_sequence_length, UMT5 width)
    latent_frames = (frames - 1) // 4 + 1
    assert next(r for r in result.comparison.records if r.field == "initial").shape == [1, 16, latent_frames, 6, 10]


@pytest.mark.covers("wan", "1rank")
def test_wan_tiny_bf16_matches_diffusers() -> None:
    case = get_case("wan-tiny")
    result = run_parity(case, case.request(dtype="bf16"))
    assert_parity(result, 5)
    latents = [r for r in result.comparison.records if r.stage == "denoise" and r.field == "latents"]
    assert latents and all(r.metrics["cos"] >= 0.999 for r in latents)


@pytest.mark.parametrize(
    "name", [pytest.param(name, id=name, marks=pytest.mark.covers("wan", name)) for name in TOPOLOGIES]
)
def test_wan_tiny_multirank_matches_diffusers_and_one_rank(name: str, tmp_path: Path) -> None:
    tp, sp, frames = TOPOLOGIES[name]
    case = get_case("wan-tiny")
    result = run_parity(case, case.request(frames=frames), topology=Topology(tp, sp), out_dir=tmp_path)
    assert_parity(result, frames)
    assert_fp32_records(list(result.comparison.all_records()), f"Diffusers ({name})")
    ranks = result.ranks
    assert ranks is not None and ranks.vs_single is not None
    assert ranks.ranks_identical, f"{name}: the ranks handed the VAE different latents"
    # every record of the single-rank run, free and forced, is in the multi-rank trace and within the bar
    assert len(ranks.vs_single.records) == len(result.comparison.records)
    assert len(ranks.vs_single.forced_records) == len(result.comparison.forced_records)
    assert_fp32_records(list(ranks.vs_single.all_records()), f"one rank ({name})")
    section = result.report["ranks"]
    assert section["topology"]["world"] == tp * sp and section["vs_single_rank"]["verdict"] == "pass"
    assert result.report["verdict"] == "pass"
    # on disk: rank 0's traces, the single-rank run's beside them, and the rank line of report.md
    assert {"native.safetensors", "native_forced.safetensors", "native_1rank.safetensors",
            "native_1rank_forced.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    assert f"**Ranks:** {Topology(tp, sp).name} ({tp * sp} processes, gloo)" in (tmp_path / "report.md").read_text()


@pytest.mark.covers("wan", "sp2-broken-shard")
def test_broken_shard_diverges_at_the_first_denoising_step() -> None:
    """Ulysses' all-to-all back with the ranks' heads in the wrong order: caught at denoise step 0, against
    Diffusers and against one rank, while every stage before it (and the forced decode) still passes."""
    fault = FAULTS["sp_heads_wrong_order"]
    case = get_case("wan-tiny")
    result = run_parity(case, fault.request_for(case.request()), mutate_native=fault.apply,
                        topology=Topology(*fault.topology))
    assert not result.passed and result.report["verdict"] == "fail"
    assert result.report["first_divergence"] == {"stage": "denoise", "field": "transformer_output", "step": 0}
    assert result.report["first_divergence_local"] is True
    first = result.comparison.first_divergence
    assert first is not None and first.metrics["rel_l2"] > 100 * PARITY_REL_L2
    others = [r for r in result.comparison.local_records() if r.stage != "denoise" and not r.passed]
    assert not others, [f"{r.stage}/{r.field} ({r.mode})" for r in others]
    vs_single = result.report["ranks"]["vs_single_rank"]
    assert vs_single["verdict"] == "fail"
    assert vs_single["first_divergence"] == {"stage": "denoise", "field": "transformer_output", "step": 0}


def test_shard_fault_refuses_a_single_rank_pipeline() -> None:
    """A shard fault cannot pass vacuously: on one rank there is no shard to break, and it says so."""
    fault = FAULTS["sp_heads_wrong_order"]
    case = get_case("wan-tiny")
    with pytest.raises(ValueError, match="has none"):
        run_parity(case, case.request(steps=1), mutate_native=fault.apply)


@pytest.mark.parametrize("name", ["wan_text_padding_mask_dropped", "wan_text_padding_not_zeroed"])
def test_umt5_padding_faults_are_charged_to_encode(name: str) -> None:
    """Wan's text-side conventions (padding mask to UMT5, zeros past the prompt) each fail at encode, and forcing
    keeps denoising and decoding clean."""
    fault = FAULTS[name]
    case = get_case("wan-tiny")
    request = fault.request_for(case.request(steps=2))
    result = run_parity(case, request, mutate_native=fault.apply, reference=shared_reference(case.name, request))
    assert result.report["first_divergence"] == {"stage": "encode", "field": "prompt_embeds", "step": None}
    others = [r for r in result.comparison.local_records() if r.stage != "encode" and not r.passed]
    assert not others, [f"{r.stage}/{r.field}/{r.step} ({r.mode})" for r in others]


NORM_FAULTS = [(name, dtype) for name in ("wan_norm_weight_dropped", "wan_qk_norm_weights_swapped",
                                           "wan_norm_bias_dropped") for dtype in ("fp32", "bf16")
               if FAULTS[name].applies_to(dtype)]


@pytest.mark.parametrize(("name", "dtype"), NORM_FAULTS, ids=[f"{n}-{d}" for n, d in NORM_FAULTS])
def test_norm_weight_faults_are_charged_to_the_dit_at_step_0(name: str, dtype: str) -> None:
    """Norm parameters the tiny checkpoint randomises (references/common/tiny_build.py): dropping or swapping them is
    caught at the DiT's first step, every other stage's local records passing."""
    fault = FAULTS[name]
    case = get_case("wan-tiny")
    request = fault.request_for(case.request(steps=2, dtype=dtype))
    result = run_parity(case, request, mutate_native=fault.apply, reference=shared_reference(case.name, request))
    assert result.report["first_divergence"] == {"stage": "denoise", "field": "transformer_output", "step": 0}
    others = [r for r in result.comparison.local_records() if r.stage != "denoise" and not r.passed]
    assert not others, [f"{r.stage}/{r.field}/{r.step} ({r.mode})" for r in others]


def test_forcing_from_its_own_trace_is_bit_identical() -> None:
    """UniPC's history is rebuilt exactly: forcing a side from its own free trace reproduces it bit for bit
    (bf16 model, float32 latents), on the native side (`warm_start`) and on the reference side (replay)."""
    import torch

    from harness.run.forcing import FORCED_STAGES
    from harness.run.native_runner import plan_native_run, run_native
    from harness.trace.keys import RecordKey
    from harness.trace.memory import Trace

    case = get_case("wan-tiny")
    checkpoint = case.build_checkpoint()
    request = case.request(dtype="bf16", steps=3)
    free, again, forced = Trace(), Trace(), Trace()
    run_native(checkpoint, request, free)
    run_native(checkpoint, request, again, plan=plan_native_run(checkpoint, request), reference=free,
               forced_trace=forced)
    keys = [key for key in free if key.stage in FORCED_STAGES]
    assert forced.keys() == keys and all(torch.equal(forced[key], free[key]) for key in keys)
    assert free[RecordKey("denoise", "latents", 2)].dtype == torch.float32  # float32 in a bf16 run, as Wan does
    baseline, reference_forced = Trace(), Trace()
    case.run_reference(checkpoint, request, baseline, None)
    assert case.run_reference_forced is not None
    case.run_reference_forced(checkpoint, request, reference_forced, baseline)
    assert reference_forced.keys() == baseline.keys()
    assert all(torch.equal(reference_forced[key], tensor) for key, tensor in baseline.items())


# ---- Wan 2.2 A14B: two experts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [pytest.param(d, marks=pytest.mark.covers("wan", "1rank")) for d in ("fp32", "bf16")])
def test_wan_a14b_two_experts_match_diffusers(dtype: str) -> None:
    """The high-noise expert runs steps 0-1 (timesteps 999, 900 >= 875), the low-noise one steps 2-3 with its own
    CFG scale; which expert ran is recorded on both sides (the reference hooks both DiTs) and compared exactly."""
    from harness.trace.keys import RecordKey

    case = get_case("wan-a14b-tiny")
    result = run_parity(case, case.request(dtype=dtype))
    assert_parity(result, 5)
    experts = [(r.step, r.mode, r.metrics["max_abs"], r.tolerance["threshold"]) for r in
               result.comparison.all_records() if r.field == "expert"]
    assert sorted((step, mode) for step, mode, _, _ in experts) == [(s, m) for s in range(4) for m in ("forced",
                                                                                                       "free")]
    assert all(error == 0.0 and threshold == 0.0 for _, _, error, threshold in experts)
    for trace in (result.reference_trace, result.native_trace):
        assert [int(trace[RecordKey("denoise", "expert", s)]) for s in range(4)] == [0, 0, 1, 1]
    if dtype == "fp32":
        assert_fp32_records(list(result.comparison.all_records()), "Diffusers (two experts)")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_expert_switch_one_step_early_is_localized_to_that_step(dtype: str) -> None:
    """The low-noise expert planted one step early (step 1 instead of 2): the first divergence is the expert record
    of step 1 (exact: any difference fails), teacher forced, and nothing before it or outside the loop fails."""
    from harness.verdicts.fault_matrix import run_fault

    outcome = run_fault(get_case("wan-a14b-tiny"), FAULTS["wan_expert_switch_one_step_early"], dtype)
    assert outcome.detected and outcome.localized, outcome
    assert outcome.found == {"stage": "denoise", "field": "expert", "step": 1, "mode": "forced"}
    assert outcome.metric in ("max_abs", "rel_l2") and outcome.threshold == 0.0


def test_text_to_video_builds_no_vae_encoder() -> None:
    """Wan text-to-video decodes only: its VAE is built without the encoder the image-to-video pipeline needs
    (53.6 M parameters at Wan 2.1 size, counted here on the meta device), so T2V memory does not grow."""
    import torch

    from harness.run.native_runner import plan_native_run
    from native_models.models.autoencoder_kl_wan import AutoencoderKLWan, AutoencoderKLWanDecoder

    case = get_case("wan-tiny")
    checkpoint = case.build_checkpoint()
    plan = plan_native_run(checkpoint, case.request())
    pipeline = plan.pipeline_cls(checkpoint, plan.config)
    vae = pipeline.get_module("vae")
    assert isinstance(vae, AutoencoderKLWanDecoder) and vae.encoder is None and vae.quant_conv is None
    i2v = get_case("wan-i2v-tiny")
    i2v_plan = plan_native_run(i2v.build_checkpoint(), i2v.request())
    assert type(i2v_plan.pipeline_cls(i2v.build_checkpoint(), i2v_plan.config).get_module("vae")) is AutoencoderKLWan
    with torch.device("meta"):  # Wan 2.1's VAE: AutoencoderKLWanConfig's defaults
        full = sum(p.numel() for p in AutoencoderKLWan.from_config({}).parameters())
        decoder = sum(p.numel() for p in AutoencoderKLWanDecoder.from_config({}).parameters())
    print(f"Wan 2.1 VAE: {full / 1e6:.1f} M parameters with the encoder, {decoder / 1e6:.1f} M without")
    assert 53.0e6 < full - decoder < 54.0e6
