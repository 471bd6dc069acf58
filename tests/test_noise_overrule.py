"""The latents overrule the image detector's `noise_latents` head, and nothing else (harness/noise/overrule.py).

Real data where it matters: brick textures shrunk to 64 px and sent through the photo VAE (the texture set of
scripts/study_image_false_alarms.py, train photographs only), which the image detector flags; their latents,
judged against the photo VAE's shipped signature; and decodes of noise latents."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.noise.detector import noise_section
from harness.noise.latent_check import combine, judge_latents
from harness.noise.overrule import DEFAULT_OVERRULE_THRESHOLDS, describe_overrule, learned_head_only, overrule
from harness.verdicts.gate import OK, _check_noise
from tests.script_loader import load_script


@pytest.fixture(scope="module")
def signature():
    from references.common.latent_signature import latent_signature
    from references.flux.photo_vae import PHOTO_VAE_CHECKPOINT

    return latent_signature(PHOTO_VAE_CHECKPOINT)


@pytest.fixture(scope="module")
def bricks() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The texture set's brick crops through the VAE: name -> (decoded (64, 64, 3) uint8, latents (16, 8, 8))."""
    study = load_script("study_image_false_alarms")
    out = {}
    for meta, pixels, latents in study.texture_frames():
        if "/brick/" not in meta["name"]:
            if out:
                break
            continue
        if latents is not None and meta["name"].startswith("tex64rec/"):
            out[meta["name"]] = (pixels, latents)
    return out


def _section(pixels: np.ndarray) -> dict:
    frames = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
    return noise_section(frames, frames, expects_picture=True)


def test_a_clean_64px_texture_flagged_by_the_head_alone_is_overruled_by_its_latents(bricks, signature) -> None:
    pixels, latents = bricks["tex64rec/brick/256/0"]
    section = _section(pixels)
    assert section["fails_run"] and section["native"]["fired"] == ["decoded_noise"]  # the image detector's flag
    assert learned_head_only(section["native"])["head"] == "noise_latents"
    verdict = judge_latents(latents, signature)
    assert verdict.to_dict()["verdict"] == "ok"
    combined = combine(section, verdict, expects_picture=True)
    native = combined["native"]
    assert not combined["fails_run"] and native["verdict"] == "ok" and native["image_verdict"] == "flagged"
    over = native["overruled"]
    assert over["head"] == "noise_latents" and over["logit"] >= over["threshold"]
    assert over["pattern_alignment"] >= DEFAULT_OVERRULE_THRESHOLDS.min_pattern_alignment
    assert native["reason"].startswith("image flag overruled by the latents: head noise_latents fired alone")
    assert "decoded noise" in native["image_reason"] and "overruled" in combined["note"]
    assert section["native"]["verdict"] == "flagged"  # the input section is not modified


def test_a_flag_by_another_head_too_is_never_overruled(bricks, signature) -> None:
    """brick/128/0: noise_latents and scrambled_latents both fire; its latents pass the latent check."""
    pixels, latents = bricks["tex64rec/brick/128/0"]
    section = _section(pixels)
    heads = section["native"]["statistics"]["model"]["heads"]
    assert heads["noise_latents"]["fired"] and heads["scrambled_latents"]["fired"]
    verdict = judge_latents(latents, signature)
    assert not verdict.flagged and verdict.abstained is None
    combined = combine(section, verdict, expects_picture=True)
    assert combined["fails_run"] and combined["native"]["verdict"] == "flagged"
    assert "overruled" not in combined["native"]


def test_decoded_noise_keeps_its_flag_because_its_latents_have_no_pattern(bricks, signature) -> None:
    """A decode of N(0, 1) latents: the image is flagged and the latents carry no pattern, so nothing overrules;
    and the brick's head-only flag with noise latents beside it stands too (the latents decide, not the image)."""
    from references.flux.noise_corpus import Renderer
    from references.flux.photo_vae import load_photo_vae

    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(116))
    pixels = Renderer(load_photo_vae()).decode_normalised(noise)[0]
    section = _section(pixels)
    verdict = judge_latents(noise[0].numpy(), signature)
    assert section["fails_run"] and verdict.flagged and "no_pattern" in verdict.fired
    combined = combine(section, verdict, expects_picture=True)
    assert combined["fails_run"] and combined["native"]["verdict"] == "flagged"
    assert "overruled" not in combined["native"]
    brick = _section(bricks["tex64rec/brick/256/0"][0])
    kept = combine(brick, verdict, expects_picture=True)
    assert kept["fails_run"] and kept["native"]["flagged_by"] == "image detector and latent check"


def test_a_rule_flag_is_never_overruled(bricks, signature) -> None:
    """White noise pixels (pixel_noise, a rule) beside a picture's latents that pass: the flag stands."""
    pixels = np.random.default_rng(116).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    section = _section(pixels)
    assert section["fails_run"] and "pixel_noise" in section["native"]["fired"]
    verdict = judge_latents(bricks["tex64rec/brick/256/0"][1], signature)
    assert verdict.to_dict()["verdict"] == "ok"
    combined = combine(section, verdict, expects_picture=True)
    assert combined["fails_run"] and combined["native"]["verdict"] == "flagged"
    assert "overruled" not in combined["native"]


def _head_only_image() -> dict:
    heads = {"noise_latents": {"logit": 2.1, "threshold": 1.21, "fired": True},
             "runaway_sampler": {"logit": -3.0, "threshold": 2.3, "fired": False},
             "scrambled_latents": {"logit": 0.5, "threshold": 3.72, "fired": False}}
    return {"verdict": "flagged", "fired": ["decoded_noise"], "frames": 1, "flagged_frames": [0],
            "statistics": {"model": {"heads": heads}}}


def _passing_latent(alignment: float) -> dict:
    return {"verdict": "ok", "latents": 1, "statistics": {"pattern_alignment": alignment, "detail_alignment": 0.6}}


def test_the_line_and_every_condition_of_the_rule() -> None:
    line = DEFAULT_OVERRULE_THRESHOLDS.min_pattern_alignment
    image = _head_only_image()
    assert overrule(image, _passing_latent(line)) is not None
    assert overrule(image, _passing_latent(line - 0.01)) is None  # too weak a pattern: noise may be left in it
    assert overrule(image, _passing_latent(float("nan"))) is None
    for verdict in ("flagged", "abstained"):
        assert overrule(image, {**_passing_latent(1.0), "verdict": verdict}) is None
    assert overrule(image, {**_passing_latent(1.0), "latents": 2}) is None  # a batch: one latent's figures only
    changes = [("fired", ["pixel_noise", "decoded_noise"]), ("fired", ["decoded_noise", "flicker"]),
               ("fired", ["near_constant"]), ("frames", 8), ("flagged_frames", [1]), ("verdict", "ok")]
    for key, value in changes:
        assert overrule({**image, key: value}, _passing_latent(1.0)) is None, key
    for head in ("runaway_sampler", "scrambled_latents"):
        other = copy.deepcopy(image)
        other["statistics"]["model"]["heads"][head]["fired"] = True
        assert overrule(other, _passing_latent(1.0)) is None, head
        other["statistics"]["model"]["heads"]["noise_latents"]["fired"] = False
        assert overrule(other, _passing_latent(1.0)) is None, head
    text = describe_overrule(overrule(image, _passing_latent(0.8)))
    assert "head noise_latents fired alone (logit +2.1 >= +1.2)" in text and "pattern_alignment +0.80 >= 0.55" in text


def test_the_gate_line_says_the_flag_was_overruled(bricks, signature) -> None:
    pixels, latents = bricks["tex64rec/brick/256/0"]
    noise = combine(_section(pixels), judge_latents(latents, signature), expects_picture=True)
    checks: list = []
    _check_noise([SimpleNamespace(name="photo-case", expects_picture=True)],
                 {"photo-case": SimpleNamespace(report={"noise": noise})}, checks)
    assert checks[0].status == OK
    assert "latent check ok; image flag by head noise_latents" in checks[0].detail
    assert "overruled: the latents carry the VAE's pattern (pattern_alignment +0.79)" in checks[0].detail
