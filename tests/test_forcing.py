"""Teacher forcing reuses the pipeline's own step code and feeds exactly the given inputs.

The strongest check: forcing a side from its *own* free trace must reproduce that trace bit for bit (the
inputs installed are the very values the free run produced, and the step code is the same), on the native
side and on the reference side alike.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.run.cases import get_case
from harness.run.forcing import FORCED_STAGES, ForcingError
from harness.run.native_runner import plan_native_run, run_native
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace

REQUESTS = {
    "fp32": {"dtype": "fp32"},
    "bf16-cfg-nonsquare": {"dtype": "bf16", "negative_prompt": "blurry", "true_cfg_scale": 2.5, "height": 48,
                           "width": 80},
}


@pytest.mark.parametrize("overrides", list(REQUESTS.values()), ids=list(REQUESTS))
def test_native_forced_from_its_own_trace_is_bit_identical(tiny_flux: Path, overrides: dict) -> None:
    request = get_case("flux-tiny").request(**overrides)
    free = Trace()
    run_native(tiny_flux, request, free)
    again, forced = Trace(), Trace()
    run_native(tiny_flux, request, again, plan=plan_native_run(tiny_flux, request), reference=free,
               forced_trace=forced)
    forced_keys = [key for key in free if key.stage in FORCED_STAGES]
    assert forced.keys() == forced_keys  # exactly the forced stages' records, every step
    for key in forced_keys:
        assert torch.equal(forced[key], free[key]), key.name()


def test_reference_forced_from_its_own_trace_is_bit_identical(tiny_flux: Path) -> None:
    case = get_case("flux-tiny")
    request = case.request(dtype="bf16", negative_prompt="blurry", true_cfg_scale=2.5)
    baseline, forced = Trace(), Trace()
    case.run_reference(tiny_flux, request, baseline, None)
    assert case.run_reference_forced is not None
    case.run_reference_forced(tiny_flux, request, forced, baseline)
    assert forced.keys() == baseline.keys()
    for key, tensor in baseline.items():
        assert torch.equal(forced[key], tensor), key.name()


def test_forced_steps_start_from_the_reference_latents(tiny_flux: Path) -> None:
    """Change the given latents after step 0: only step 1 and later move, step 0 does not (step-level)."""
    request = get_case("flux-tiny").request()
    free = Trace()
    run_native(tiny_flux, request, free)
    shifted = Trace()
    for key, tensor in free.items():
        moved = tensor + 0.5 if key == RecordKey("denoise", "latents", 0) else tensor
        shifted.record(key.stage, key.field, moved, key.step)
    forced = Trace()
    run_native(tiny_flux, request, Trace(), reference=shifted, forced_trace=forced)
    step0 = RecordKey("denoise", "transformer_output", 0)
    step1 = RecordKey("denoise", "transformer_output", 1)
    assert torch.equal(forced[step0], free[step0])
    assert not torch.allclose(forced[step1], free[step1])


@pytest.mark.parametrize("shift", [0.0, 0.25], ids=["same-final-latents", "shifted-final-latents"])
def test_the_forced_decode_reuses_the_free_one_only_on_the_same_vae_input(tiny_flux: Path, shift: float) -> None:
    """The forced decode runs the VAE unless the free run handed it the same latents bit for bit; then its image
    is the free run's (the VAE keeps no state between calls)."""
    request = get_case("flux-tiny").request(steps=2)
    free = Trace()
    run_native(tiny_flux, request, free)
    last = RecordKey("denoise", "latents", 1)
    reference = Trace()
    for key, tensor in free.items():
        reference.record(key.stage, key.field, tensor + shift if key == last else tensor, key.step)
    calls: list[torch.Size] = []

    def count_decodes(pipeline: object) -> None:
        vae = pipeline.get_module("vae")  # type: ignore[attr-defined]
        decode = vae.decode
        vae.decode = lambda latents, *args, **kwargs: (calls.append(latents.shape), decode(latents, *args, **kwargs))[1]

    again, forced = Trace(), Trace()
    run_native(tiny_flux, request, again, reference=reference, forced_trace=forced, mutate=count_decodes)
    assert len(calls) == (1 if shift == 0.0 else 2)
    image = RecordKey("decode", "image")
    assert forced.keys()[-2:] == [RecordKey("decode", "latents"), image]
    assert torch.equal(forced[image], again[image]) is (shift == 0.0)


def test_missing_reference_record_is_a_one_line_error(tiny_flux: Path) -> None:
    request = get_case("flux-tiny").request(steps=2)
    free = Trace()
    run_native(tiny_flux, request, free)
    partial = Trace()
    for key, tensor in free.items():
        if key != RecordKey("denoise", "latents", 0):
            partial.record(key.stage, key.field, tensor, key.step)
    with pytest.raises(ForcingError, match=r"no record denoise/latents/0") as info:
        run_native(tiny_flux, request, Trace(), reference=partial, forced_trace=Trace())
    assert "\n" not in str(info.value)


def test_forcing_needs_both_traces(tiny_flux: Path) -> None:
    request = get_case("flux-tiny").request(steps=1)
    with pytest.raises(ValueError, match="both"):
        run_native(tiny_flux, request, Trace(), reference=Trace())


def test_a_pipeline_that_cannot_be_forced_runs_free_and_says_why() -> None:
    from harness.run.parity import run_parity

    def no_schedule_install(pipeline) -> None:
        scheduler = pipeline.get_module("scheduler")
        scheduler.set_schedule = None  # as a scheduler without set_schedule

    case = get_case("flux-tiny")
    result = run_parity(case, case.request(steps=2), mutate_native=no_schedule_install)
    assert result.passed and result.forced_trace is None and not result.comparison.forced_records
    assert result.report["forcing"] is False
    assert "cannot install a given schedule" in result.report["forcing_skipped"]
