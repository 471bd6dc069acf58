"""The latent check (harness/noise/latent_check.py): a VAE's channel pattern tells mis-packed and half-denoised
latents from a picture's; its signature is measured from the VAE and deterministic; verdicts name the statistic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.noise.latent_check import LatentThresholds, combine, judge_latents, normalise
from harness.noise.latent_stats import LatentError, LatentSignature, build_signature, latent_statistics
from references.common import latent_signature as signature_module
from references.common import shipped_images
from references.flux import noise_corpus

CHANNELS = 16


def _mixing(seed: int = 0) -> np.ndarray:
    """A fixed (C, C) mixing: the 'VAE' whose channels correlate in one pattern."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(CHANNELS, CHANNELS)) + 2.0 * np.eye(CHANNELS) + rng.normal(size=(CHANNELS, 1))


def _picture_latent(seed: int, side: int = 32) -> np.ndarray:
    """(C, side, side): smooth random fields mixed by the fixed pattern, like a picture's latent."""
    rng = np.random.default_rng(seed)
    fields = rng.normal(size=(CHANNELS, side + 4, side + 4))
    smooth = sum(np.roll(np.roll(fields, dy, 1), dx, 2) for dy in range(4) for dx in range(4))[:, :side, :side]
    latent = np.einsum("ij,jhw->ihw", _mixing(), smooth)
    return (latent - latent.mean()) / latent.std()


@pytest.fixture(scope="module")
def signature() -> LatentSignature:
    latents = [_picture_latent(s, side) for s in range(12) for side in (8, 16, 32)]
    return build_signature(latents, [f"synthetic{i}" for i in range(len(latents))], {"sha256": "synthetic"})


def test_a_pictures_latent_passes_and_its_statistics_are_named(signature) -> None:
    latent = _picture_latent(100)
    verdict = judge_latents(latent, signature)
    assert not verdict.flagged and verdict.abstained is None
    assert verdict.statistics["pattern_alignment"] > 0.8
    assert verdict.statistics["relabelling_gain"] < 0.1
    assert set(verdict.statistics) >= {"pattern_alignment", "pattern_residual", "relabelling_gain",
                                       "correlation_distance", "neighbour_correlation", "scale_ratio"}
    assert "closest" in verdict.reason


@pytest.mark.parametrize("fault", ["permuted", "reversed"])
def test_permuted_or_reversed_channels_are_flagged(signature, fault: str) -> None:
    latent = _picture_latent(101)
    order = np.random.default_rng(3).permutation(CHANNELS) if fault == "permuted" else np.arange(CHANNELS)[::-1]
    verdict = judge_latents(latent[order], signature)
    assert verdict.flagged, verdict.reason
    assert verdict.statistics["relabelling_gain"] > 0.4
    assert "pattern_alignment" in verdict.reason  # which statistic, and by how much
    assert verdict.fired[0] in ("no_pattern", "channels_relabelled")


def test_pure_and_half_noise_are_flagged_by_their_own_checks(signature) -> None:
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(CHANNELS, 32, 32))
    assert judge_latents(noise, signature).fired[:1] == ["no_pattern"]
    half = 0.48 * _picture_latent(102) + 0.52 * noise  # a run stopped at sigma 0.52
    verdict = judge_latents(half, signature)
    assert verdict.flagged and "noise_left" in verdict.fired, verdict.reason
    assert "noise left in the latents" in verdict.reason


def test_noise_left_over_the_alignment_line_is_caught_in_the_fine_detail(signature) -> None:
    """A run stopped with its picture strong enough to keep pattern_alignment over noise_left's 0.55 (the held-out
    misses at sigma 0.52): the independent noise still fills the latent's fine detail without the pattern."""
    noise = np.random.default_rng(7).normal(size=(CHANNELS, 32, 32))
    verdict = judge_latents(0.55 * _picture_latent(103) + 0.45 * noise, signature)  # alignment ~0.58
    stats = verdict.statistics
    assert stats["pattern_alignment"] > LatentThresholds().noise_alignment, stats  # noise_left cannot see it
    assert verdict.fired == ["noise_in_detail"], verdict.reason
    assert stats["detail_alignment"] < 0.35 <= 0.4 <= stats["detail_share"], stats
    assert verdict.reason.startswith("noise left in the latents' fine detail: detail_alignment")
    picture = judge_latents(_picture_latent(103), signature)
    assert not picture.flagged and picture.statistics["detail_alignment"] > 0.8, picture.statistics


def test_fine_texture_with_the_channel_pattern_is_not_noise(signature) -> None:
    """Gravel or grass at 64 px: detail is most of the latent, but mixed by the VAE's pattern like the rest."""
    white = np.random.default_rng(8).normal(size=(CHANNELS, 16, 16))
    texture = np.einsum("ij,jhw->ihw", _mixing(), white)
    verdict = judge_latents(texture / texture.std(), signature)
    assert verdict.statistics["detail_share"] > 0.7, verdict.statistics  # as white as noise
    assert verdict.statistics["detail_alignment"] > 0.6, verdict.statistics
    assert "noise_in_detail" not in verdict.fired, verdict.reason


def test_a_smooth_latent_with_unpatterned_detail_is_not_called_noisy(signature) -> None:
    """A flat picture's latent: its tiny fine detail may follow no pattern, but it is not a share of the latent
    that noise left in it would take (detail_share under the line)."""
    jitter = np.random.default_rng(9).normal(size=(CHANNELS, 32, 32))
    verdict = judge_latents(_picture_latent(104) + 0.03 * jitter, signature)
    check = next(c for c in verdict.checks if c.name == "noise_in_detail")
    assert verdict.statistics["detail_share"] < 0.4 and not check.fired, verdict.statistics
    assert verdict.statistics["detail_alignment"] < _picture_stats(signature)["detail_alignment"]


def _picture_stats(signature: LatentSignature) -> dict[str, float]:
    return latent_statistics(_picture_latent(104), signature)


def test_a_batch_is_flagged_by_its_worst_latent_and_says_which(signature) -> None:
    good, bad = _picture_latent(103), _picture_latent(104)[::-1]
    verdict = judge_latents(np.stack([good, bad]), signature)
    assert verdict.flagged and verdict.flagged_latents == [1] and verdict.latent == 1
    assert "latent 1: 1 of 2 flagged" in verdict.reason


def test_small_flat_and_mismatched_latents(signature) -> None:
    small = judge_latents(_picture_latent(105, side=4), signature)
    assert not small.flagged and "needs 8x8" in small.abstained
    flat = judge_latents(np.full((CHANNELS, 16, 16), 0.5) + 1e-4 * _picture_latent(106, 16), signature)
    assert not flat.flagged and "flat latents" in flat.abstained
    with pytest.raises(LatentError, match="has 16 channels"):
        judge_latents(np.zeros((4, 16, 16)), signature)
    with pytest.raises(LatentError, match="expected"):
        judge_latents(np.zeros((16, 16)), signature)


def test_signature_round_trips_and_rejects_another_version(signature) -> None:
    data = json.loads(json.dumps(signature.to_dict()))
    again = LatentSignature.from_dict(data)
    latent = _picture_latent(107)
    assert latent_statistics(latent, again) == latent_statistics(latent, signature)
    with pytest.raises(LatentError, match="version"):
        LatentSignature.from_dict({**data, "version": 99})


def test_combine_flags_the_native_output_and_fails_a_picture_case(signature) -> None:
    section = {"native": {"verdict": "ok", "reason": "no check fired"}, "reference": None, "fails_run": False,
               "note": "both outputs look like pictures"}
    verdict = judge_latents(_picture_latent(108)[::-1], signature)
    combined = combine(section, verdict, expects_picture=True)
    assert combined["fails_run"] and combined["native"]["verdict"] == "flagged"
    assert combined["native"]["flagged_by"] == "latent check" and combined["native"]["image_verdict"] == "ok"
    assert combined["native"]["latent"]["verdict"] == "flagged"
    assert section["native"]["verdict"] == "ok"  # the input is not modified
    assert not combine(section, verdict, expects_picture=False)["fails_run"]
    passing = combine(section, judge_latents(_picture_latent(109), signature), expects_picture=True)
    assert not passing["fails_run"] and passing["native"]["latent"]["verdict"] == "ok"


def test_normalise_undoes_the_decode_stage_denormalisation(signature) -> None:
    sig = LatentSignature.from_dict({**signature.to_dict(), "vae": {"shift_factor": 0.1, "scaling_factor": 0.5}})
    z = _picture_latent(110, 8)
    assert np.allclose(normalise(torch.from_numpy(z / 0.5 + 0.1), sig), z, atol=1e-6)


# ---------------------------------------------------------------------------------------- the photo VAE
@pytest.fixture(scope="module")
def photo_vae_folder():
    from references.flux.photo_vae import PHOTO_VAE_CHECKPOINT

    if not (PHOTO_VAE_CHECKPOINT / "config.json").is_file():
        pytest.skip("no photo VAE")
    return PHOTO_VAE_CHECKPOINT


def test_photo_vae_signature_is_deterministic_and_cached(photo_vae_folder, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DIFFPARITY_CACHE", str(tmp_path))
    monkeypatch.setattr(signature_module, "SHIPPED", tmp_path / "shipped")  # nothing shipped: measure, then cache

    def crops(downsample: int):
        return signature_module.signature_crops(downsample)[:6]

    first = signature_module.measure_signature(photo_vae_folder, crops)
    second = signature_module.measure_signature(photo_vae_folder, crops)
    strip = {k: v for k, v in first.to_dict().items() if k != "vae"}
    assert strip == {k: v for k, v in second.to_dict().items() if k != "vae"}
    assert first.vae["sha256"] == signature_module.vae_weights_sha256(photo_vae_folder)
    assert first.vae["downsample"] == 8 and first.channels == 16
    monkeypatch.setattr(signature_module, "signature_crops", crops)
    cached = signature_module.latent_signature(photo_vae_folder)
    assert signature_module.signature_path(first.vae["sha256"]).is_file()
    monkeypatch.setattr(signature_module, "measure_signature", lambda *_: pytest.fail("measured again"))
    assert signature_module.latent_signature(photo_vae_folder).to_dict() == cached.to_dict()


def test_photo_vae_latents_of_a_held_out_photograph(photo_vae_folder) -> None:
    """A photograph the signature never saw (a training-half one: the held-out half is for the corpus's one look):
    its latent passes; permuted, or with half its noise left, flagged."""
    from references.flux.photo_vae import encode_normalised, load_photo_vae

    signature = signature_module.latent_signature(photo_vae_folder)
    assert "motorcycle_right" not in signature_module.SIGNATURE_PHOTOS
    assert noise_corpus.photo_halves()["motorcycle_right"] == "train"
    image = shipped_images.random_crop(shipped_images.photo("motorcycle_right"), 128, 128, np.random.default_rng(1))
    with torch.no_grad():
        z = encode_normalised(load_photo_vae(), noise_corpus._image_tensor(image))[0].numpy()  # (16, 16, 16)
    assert not judge_latents(z, signature), judge_latents(z, signature).reason
    assert judge_latents(z[np.random.default_rng(2).permutation(16)], signature)
    noise = np.random.default_rng(3).normal(size=z.shape)
    assert judge_latents(0.48 * z + 0.52 * noise, signature)


# Flat-colour graphics (references/common/line_art.py, seeds outside every corpus) whose latents the check called
# garbage before the few-colour guard: (seed, height, width, the checks that fire unguarded; 910035's detail also
# reads as noise_in_detail's, the guard stands that down too).
FEW_COLOUR_GRAPHICS = ((910011, 96, 128, ("channels_relabelled",)),
                       (910035, 64, 64, ("noise_in_detail", "channels_relabelled")),
                       (910052, 128, 128, ("no_pattern", "channels_relabelled")))


@pytest.mark.parametrize("seed, height, width, fired_before", FEW_COLOUR_GRAPHICS)
def test_a_flat_graphics_latent_is_not_flagged_and_says_why(photo_vae_folder, seed, height, width,
                                                             fired_before) -> None:
    """A few-colour picture's latent is one colour direction: too thin a pattern to read the channels' labels from.
    The check abstains (naming the check that stood down); the same latent with its channels permuted or reversed
    is still flagged, as the guard asks the leading component to lie in the VAE's picture directions."""
    from references.common import line_art
    from references.flux.photo_vae import encode_normalised, load_photo_vae

    signature = signature_module.latent_signature(photo_vae_folder)
    drawing = line_art.flat_graphic(np.random.default_rng(seed), height, width)
    with torch.no_grad():
        z = encode_normalised(load_photo_vae(), noise_corpus._image_tensor(drawing))[0].double().numpy()
    verdict = judge_latents(z, signature)
    assert not verdict.flagged, verdict.reason
    assert verdict.abstained and "few-colour picture" in verdict.abstained
    assert f"{', '.join(fired_before)} not judged" in verdict.abstained
    assert verdict.statistics["leading_share"] >= 0.4 and verdict.statistics["leading_direction_fit"] >= 0.45
    assert tuple(c.name for c in verdict.checks if c.stood_down) == fired_before
    unguarded = judge_latents(z, signature, LatentThresholds(few_colour_share=1.01))  # the check before the guard
    assert tuple(unguarded.fired) == fired_before, unguarded.reason
    for order in (np.random.default_rng(seed).permutation(16), np.arange(16)[::-1]):
        relabelled = judge_latents(z[order], signature)
        assert relabelled.flagged, relabelled.reason
        assert relabelled.statistics["leading_direction_fit"] < 0.45


def test_the_project_vaes_have_their_signatures_shipped() -> None:
    """A retrained VAE without a re-shipped signature would make `golden verify` import Diffusers to measure one."""
    root = Path(__file__).resolve().parents[1] / "references" / "checkpoints"
    for folder in (root / "photo-vae", root / "flux-digits" / "vae"):
        path = signature_module.shipped_signature_path(signature_module.vae_weights_sha256(folder))
        assert path.is_file(), f"{folder}: run scripts/ship_latent_signatures.py"
        signature = LatentSignature.from_dict(json.loads(path.read_text()))
        assert signature.channels == 16 and len(signature.photos) == len(signature_module.SIGNATURE_PHOTOS) * 6


# ------------------------------------------------------------------------------------ in the product (verify)
def test_flux_digits_verify_judges_its_latents_and_fails_reversed_channels() -> None:
    """`golden verify flux-digits`: the correct run's decode/latents carry its VAE's pattern (latent check ok); the
    same run with the channels reversed before decoding fails on the latent check, which names the statistic."""
    from harness.golden.verify import verify_golden
    from harness.run.cases import get_case
    from harness.run.forcing import find_stage
    from harness.verdicts.faults import wrap_after
    from native_models.stages.decoding import DecodingStage

    case = get_case("flux-digits")
    good = verify_golden(case, write_obtained=False)
    latent = good.report["noise"]["native"]["latent"]
    assert latent["verdict"] == "ok" and latent["statistics"]["pattern_alignment"] > 0.55, latent

    def reverse_channels(pipeline) -> None:
        config = find_stage(pipeline, DecodingStage).config
        wrap_after(config, "post_denoising_loop", lambda z: z.flip(1))  # (B, C, h, w): channels reversed

    bad = verify_golden(case, write_obtained=False, mutate=reverse_channels)
    noise = bad.report["noise"]
    assert noise["fails_run"] and bad.report["verdict"] == "fail"
    assert noise["native"]["latent"]["verdict"] == "flagged"
    assert "pattern_alignment" in noise["native"]["latent"]["reason"]


def test_the_gate_line_and_the_text_report_name_the_latent_check(signature) -> None:
    from types import SimpleNamespace

    from harness.verdicts.gate import OK, _check_noise

    section = {"native": {"verdict": "ok", "reason": "no check fired", "checks": [{"name": "decoded_noise"}],
                          "statistics": {"height": 32, "width": 32}},
               "reference": None, "fails_run": False, "note": "both outputs look like pictures"}
    combined = combine(section, judge_latents(_picture_latent(111), signature), expects_picture=True)
    checks: list = []
    _check_noise([SimpleNamespace(name="flux-digits", expects_picture=True)],
                 {"flux-digits": SimpleNamespace(report={"noise": combined})}, checks)
    assert checks[0].status == OK and checks[0].detail.endswith("; latent check ok)"), checks[0].detail


def test_a_signature_that_cannot_be_had_is_reported_and_fails_nothing(signature) -> None:
    from types import SimpleNamespace

    from harness.run.latent_noise import with_latent_check
    from harness.trace.keys import RecordKey
    from harness.trace.memory import Trace

    def missing(checkpoint):
        raise signature_module.SignatureError(f"{checkpoint}/vae: no .safetensors weights")

    trace = Trace({})
    trace.record("decode", "latents", torch.from_numpy(_picture_latent(112)[None]).float())
    section = {"native": {"verdict": "ok", "reason": "no check fired"}, "reference": None, "fails_run": False,
               "note": "both outputs look like pictures"}
    out = with_latent_check(section, SimpleNamespace(latent_signature=missing), "/x", trace, True)
    assert not out["fails_run"] and out["native"]["latent"]["verdict"] == "unavailable"
    assert "no .safetensors" in out["native"]["latent"]["reason"]
    assert trace.get(RecordKey("decode", "latents")) is not None
    assert with_latent_check(section, SimpleNamespace(latent_signature=None), "/x", trace, True) is section
    found = with_latent_check(section, SimpleNamespace(latent_signature=lambda _: signature), "/x", trace, True)
    assert found["native"]["latent"]["verdict"] == "ok", found["native"]["latent"]["reason"]
