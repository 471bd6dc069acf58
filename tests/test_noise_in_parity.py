"""The noise detector inside a parity run: a noise native output fails a case that expects a picture."""

from __future__ import annotations

from dataclasses import replace

import torch

from harness.run.cases import get_case
from harness.run.parity import run_parity
from native_models.pipeline import ComposedPipeline


def noise_after_decoding(pipeline: ComposedPipeline) -> None:
    """The native side decodes correctly but hands out uniform noise as its frames."""
    generator = torch.Generator().manual_seed(0)
    pipeline.config.post_decoding = lambda image, batch: torch.rand(image.shape, generator=generator)


def test_noise_output_fails_a_case_that_expects_a_picture() -> None:
    case = replace(get_case("flux-tiny"), expects_picture=True)
    result = run_parity(case, case.request(steps=2), mutate_native=noise_after_decoding, forcing=False)
    assert result.comparison.passed  # every recorded tensor agrees: only the frames handed out are noise
    assert not result.passed and result.report["verdict"] == "fail"
    noise = result.report["noise"]
    assert noise["fails_run"] and noise["native"]["verdict"] == "flagged"
    assert noise["native"]["fired"][0] == "pixel_noise" and "native output flagged" in noise["note"]
    # flux-tiny has random weights: its reference draws decoded noise, which the learned check now sees too
    # (issue 16), so the note says the reference is flagged as well; the native uniform noise fails either way


def test_noise_is_informative_for_random_weight_cases() -> None:
    case = get_case("flux-tiny")
    assert not case.expects_picture
    result = run_parity(case, case.request(steps=2), mutate_native=noise_after_decoding, forcing=False)
    assert result.passed and not result.report["noise"]["fails_run"]
    assert result.report["noise"]["native"]["verdict"] == "flagged"
