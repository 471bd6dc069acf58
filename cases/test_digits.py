"""flux-digits: parity on a trained checkpoint, plus a semantic check that both sides draw the prompted digit.

Parity alone cannot tell a correct pipeline from two equally broken ones, and image statistics cannot tell a
wrong transformer behind a correct VAE (its output is still smooth): a classifier fit on the real digits can.
`pytest cases/ -k digits` runs a few digits; scripts/evaluate_digits.py scores all ten over many seeds.
"""

from __future__ import annotations

import json

import pytest

from harness.cases import get_case
from harness.parity import run_parity
from harness.report import describe_failure
from native_models.attention import attention_backend
from references.digits import (
    IMAGE_SIZE,
    MAX_SEQUENCE_LENGTH,
    NEGATIVE_PROMPT,
    DigitClassifier,
    cross_validated_accuracy,
    digit_images,
    digit_prompt,
    flux_digits_checkpoint,
)

CASE = "flux-digits"


@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    return DigitClassifier()


def test_digits_case_uses_the_training_settings() -> None:
    """The case's request must be what the checkpoint was trained for (size, T5 length, negative prompt)."""
    request = get_case(CASE).default_request
    info = json.loads((flux_digits_checkpoint() / "diffparity_build.json").read_text())
    assert (request.height, request.width) == (IMAGE_SIZE, IMAGE_SIZE) == (info["recipe"]["image_size"],) * 2
    assert request.max_sequence_length == MAX_SEQUENCE_LENGTH == info["prompts"]["max_sequence_length"]
    assert request.negative_prompt == NEGATIVE_PROMPT == info["prompts"]["negative"]
    assert request.prompt == digit_prompt(7)
    assert request.do_true_cfg


def test_digits_classifier_reads_real_digits(classifier: DigitClassifier) -> None:
    """The judge itself: held-out accuracy on real digits, and the training images read back as their labels."""
    assert cross_validated_accuracy() >= 0.95
    images, labels = digit_images()
    assert (classifier.predict(images[::10]) == labels[::10].numpy()).mean() >= 0.99


@pytest.mark.parametrize("digit", [0, 3, 7])
def test_digits_parity_and_prompted_digit(digit: int, classifier: DigitClassifier) -> None:
    case = get_case(CASE)
    result = run_parity(case, case.request(prompt=digit_prompt(digit), seed=digit))
    first = result.comparison.first_divergence
    assert result.passed, describe_failure(first) if first else "no records compared"
    native, reference = classifier.predict(result.native_frames), classifier.predict(result.reference_frames)
    assert (int(native[0]), int(reference[0])) == (digit, digit)


def test_digits_bf16_parity_and_prompted_digit(classifier: DigitClassifier) -> None:
    """bf16 with the attention kernel Diffusers dispatches to on the CPU (torch SDPA): bit-identical there."""
    case = get_case(CASE)
    with attention_backend("sdpa"):
        result = run_parity(case, case.request(dtype="bf16", seed=1))
    first = result.comparison.first_divergence
    assert result.passed, describe_failure(first) if first else "no records compared"
    assert int(classifier.predict(result.native_frames)[0]) == int(classifier.predict(result.reference_frames)[0]) == 7


@pytest.mark.xfail(strict=True, reason="known: the native CPU default attention (math kernel) rounds bf16 scores "
                   "differently from Diffusers' SDPA kernel; true CFG x3 amplifies it past cos 0.999 at late steps")
def test_digits_bf16_parity_with_the_cpu_math_kernel() -> None:
    """Kept visible: strict, so it reports when the default CPU kernel (or its tolerance) changes."""
    case = get_case(CASE)
    with attention_backend("math"):
        result = run_parity(case, case.request(dtype="bf16", seed=1))
    first = result.comparison.first_divergence
    assert result.passed, describe_failure(first) if first else "no records compared"
