"""A native pipeline broken on purpose must fail, and the first divergence must name the broken stage."""

from __future__ import annotations

from harness.cases import get_case
from harness.parity import run_parity
from native_models.pipeline import ComposedPipeline


def swap_rotary_style(pipeline: ComposedPipeline) -> None:
    """FLUX rotates interleaved pairs; the classic port bug is the split-half (NeoX) style."""
    pipeline.get_module("transformer").rope_interleaved = False


def drop_decode_shift(pipeline: ComposedPipeline) -> None:
    """Forget the VAE's shift factor and scale: latents reach the decoder un-normalised."""
    pipeline.config.get_decode_scale_and_shift = lambda vae: (1.0, 0.0)


def test_swapped_rotary_style_diverges_at_first_denoising_step() -> None:
    case = get_case("flux-tiny")
    result = run_parity(case, case.request(height=48, width=80), mutate_native=swap_rotary_style)
    first = result.comparison.first_divergence
    assert not result.passed
    assert (first.stage, first.field, first.step) == ("denoise", "transformer_output", 0)
    assert result.report["first_divergence"] == {"stage": "denoise", "field": "transformer_output", "step": 0}


def test_wrong_decode_scale_and_shift_diverges_at_decode() -> None:
    case = get_case("flux-tiny")
    result = run_parity(case, case.request(), mutate_native=drop_decode_shift)
    first = result.comparison.first_divergence
    assert not result.passed
    assert (first.stage, first.field, first.step) == ("decode", "latents", None)
    # every stage before decode is untouched by this bug and must still pass
    assert all(r.passed for r in result.comparison.records if r.stage != "decode")
