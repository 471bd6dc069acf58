"""When a learned head abstains (its envelope), the small-frame heads, and what the gate's `not noise` line says
about them (issue 16)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from harness.noise.detector import detect_noise, noise_section
from harness.noise.learned import (
    MODEL_FILE,
    SMALL_MODEL_FILE,
    Envelope,
    Head,
    NoiseModel,
    NoiseModelError,
    load_model,
)
from harness.verdicts.gate import OK, _check_noise


def test_box_count_and_total_rules() -> None:
    box = Envelope("box", 0.25)
    assert box.overshoot([0.0, 0.2]) < 0 < box.overshoot([0.0, 0.3])
    count = Envelope("count", 0.5, 1.0)  # one statistic may lie out, however far; two over 0.5 widths may not
    assert count.overshoot([0.0, 9.0]) < 0
    assert count.overshoot([0.6, 9.0]) == pytest.approx(0.1)
    assert count.overshoot([0.4, 9.0]) < 0
    total = Envelope("total", 0.0, 1.0)
    assert total.overshoot([0.4, 0.4]) < 0 < total.overshoot([0.6, 0.6])
    assert not count.counts_out(0.5) and count.counts_out(0.6) and total.counts_out(0.01)
    with pytest.raises(NoiseModelError, match="envelope 'hull'"):
        Envelope("hull")
    with pytest.raises(NoiseModelError, match="slack -1"):
        Envelope("box", -1.0)


def two_feature_model(envelope: Envelope) -> NoiseModel:
    """One head that always scores +5 (threshold 1), fitted on garbage spanning [0, 1] in both statistics."""
    head = Head("h", "garbage", (0.0, 0.0), 5.0, 1.0, (0.0, 0.0), (1.0, 1.0))
    return NoiseModel(("a", "b"), (0.0, 0.0), (1.0, 1.0), 2.0, (0.5, 0.5), (head,), {}, envelope)


def test_a_head_fires_a_little_outside_on_one_statistic_but_not_far_outside_on_two() -> None:
    count = two_feature_model(Envelope("count", 0.5, 1.0))
    box = two_feature_model(Envelope("box", 0.25))
    just_out = {"a": 1.3, "b": 0.5}  # 0.3 widths out on one statistic
    assert count.fires(just_out) and not box.fires(just_out)
    far_out = {"a": 1.6, "b": -0.7}  # 0.6 and 0.7 widths out
    assert not count.fires(far_out)
    score = count.score(far_out)[0]
    assert score.abstains and not score.fired and score.margin < 0
    assert [o.feature for o in score.out_of_range] == ["b", "a"]  # furthest out first
    assert score.out_of_range[0].excess == pytest.approx(0.7)


def test_the_envelope_travels_with_the_model_file(tmp_path) -> None:
    model = two_feature_model(Envelope("total", 0.0, 1.5))
    assert NoiseModel.from_dict(json.loads(json.dumps(model.to_dict()))).envelope == Envelope("total", 0.0, 1.5)
    old = model.to_dict()
    del old["envelope"]  # a file written before the envelope rules: a hard box around its stored ranges
    assert NoiseModel.from_dict(old).envelope == Envelope("box", 0.0, 0.0)
    shipped = json.loads(MODEL_FILE.read_text())["envelope"]
    assert shipped["rule"] in ("box", "count", "total")


def test_the_small_frame_model_is_fitted_on_the_small_corpus() -> None:
    small, large = load_model(SMALL_MODEL_FILE), load_model(MODEL_FILE)
    assert small.features == large.features and small.trained["corpus_manifest"] == "manifest_small.json"
    assert all("small-frame model" in h.describes for h in small.heads)


def digit(size: int) -> np.ndarray:
    """A scikit-learn digit upsampled as the flux-digits model's training data (one the calibration set judges)."""
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    return np.clip(resize(load_digits().images[18] / 16.0, (size, size), order=3), 0, 1).astype(np.float32)


def test_a_32px_digit_is_judged_by_the_small_frame_heads_and_passes() -> None:
    verdict = detect_noise(digit(32))
    assert not verdict, verdict.reason
    assert "decoded_noise" in [c.name for c in verdict.checks]
    assert "small-frame model" in verdict.statistics["model"]["explanation"]


@pytest.mark.parametrize(("size", "how"), [(32, "rules and learned check (small-frame model)"),
                                           (64, "rules and learned check"),
                                           (24, "rule checks; the learned check needs 32 px or more")])
def test_the_gate_line_names_the_check_that_judged_a_case(size: int, how: str) -> None:
    frames = np.repeat(digit(size)[None, None], 3, axis=1)  # (1, 3, H, W) as a decode gives it
    case = SimpleNamespace(name="flux-digits", expects_picture=True)
    result = SimpleNamespace(report={"noise": noise_section(frames, frames, expects_picture=True)})
    checks: list = []
    _check_noise([case], {"flux-digits": result}, checks)
    assert checks[0].status == OK, checks[0]
    assert checks[0].detail == f"flux-digits: native output is a picture ({how})"


def test_a_garbage_range_is_widened_to_the_minimum_width_about_its_centre() -> None:
    """train_noise_model.widened: a range narrower than the floor grows about its centre to exactly the floor; a wider
    one is left alone (a head whose garbage never clipped would otherwise see any clipping as infinitely far out)."""
    from script_loader import load_script

    widened = load_script("train_noise_model").widened
    low, high = widened(np.array([0.0, 0.2, -1.0]), np.array([0.0, 0.4, 1.0]), np.array([0.5, 0.5, 0.5]))
    assert low == pytest.approx([-0.25, 0.05, -1.0]) and high == pytest.approx([0.25, 0.55, 1.0])


def test_fitting_with_a_minimum_width_keeps_garbage_that_lies_just_off_a_degenerate_range() -> None:
    """Two statistics; the garbage's second statistic is always 0 (like clipped_share): with no floor, garbage with
    a little of it lies out by ~1e11 widths and the head abstains; with a floor of 0.25 sd it is judged."""
    from script_loader import load_script

    script = load_script("train_noise_model")
    rng = np.random.default_rng(0)
    clean = np.column_stack([rng.normal(0, 1, 60), rng.uniform(0, 0.2, 60)])
    garbage = np.column_stack([rng.normal(4, 0.5, 30), np.zeros(30)])
    x = np.vstack([clean, garbage])
    categories = np.array([""] * 60 + ["pure_noise", "wrong_denoiser", "packing"] * 10)  # every head has garbage
    names = ("a", "b")
    script.FEATURE_NAMES = names
    probe = {"a": 4.0, "b": 0.005}  # within the floored range (+-0.25 sd / 2 about 0), far outside [0, 0]
    strict = script.fit_arrays(x, categories, envelope=Envelope("box", 0.0, 0.0), margin=0.5, c=1.0)
    floored = script.fit_arrays(x, categories, envelope=Envelope("box", 0.0, 0.0), margin=0.5, c=1.0,
                                min_width=0.25)
    assert all(s.abstains for s in strict.score(probe)) and not strict.fires(probe)
    assert floored.fires(probe) and not any(s.abstains for s in floored.score(probe))
