"""Bit-exact parity of the native flow-match Euler scheduler with Diffusers' FlowMatchEulerDiscreteScheduler."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from hypothesis import given, settings
from hypothesis import strategies as st

from native_models.schedulers.flow_match_euler import FlowMatchEulerScheduler, flux_default_sigmas
from references.flux.components import FLUX_DEV_SCHEDULER

# FLUX.1-dev's scheduler_config.json, as the tiny checkpoint ships it (the keys Diffusers would fill in are left to
# defaults on both sides); the "_class_name" entry is there so that from_config is seen to skip metadata keys.
FLUX_DEV: dict[str, Any] = {"_class_name": "FlowMatchEulerDiscreteScheduler", **FLUX_DEV_SCHEDULER}
FLUX_SCHNELL: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}
CONFIGS: dict[str, dict[str, Any]] = {
    "flux_dev": FLUX_DEV,
    "flux_dev_linear": {**FLUX_DEV, "time_shift_type": "linear"},
    "flux_schnell": FLUX_SCHNELL,
    "static_shift_3": {"shift": 3.0},
    "dev_shift_terminal": {**FLUX_DEV, "shift_terminal": 0.1},
}
STEP_COUNTS = (1, 2, 4, 28, 50)
# 256 / 4096: FLUX's base and max (256px and 1024px); 1024: 512px; 729 and 6000: off-grid and beyond max.
IMAGE_SEQ_LENS = (256, 729, 1024, 4096, 6000)


def pair(name: str) -> tuple[FlowMatchEulerDiscreteScheduler, FlowMatchEulerScheduler]:
    config = {k: v for k, v in CONFIGS[name].items() if not k.startswith("_")}
    return FlowMatchEulerDiscreteScheduler(**config), FlowMatchEulerScheduler.from_config(CONFIGS[name])


def assert_same_schedule(reference: FlowMatchEulerDiscreteScheduler, native: FlowMatchEulerScheduler) -> None:
    assert native.sigmas is not None and native.timesteps is not None
    assert native.sigmas.dtype == native.timesteps.dtype == torch.float32
    assert torch.equal(reference.sigmas, native.sigmas), (reference.sigmas, native.sigmas)
    assert torch.equal(reference.timesteps, native.timesteps), (reference.timesteps, native.timesteps)


def set_both(
    reference: FlowMatchEulerDiscreteScheduler, native: FlowMatchEulerScheduler, steps: int, mu: float, flux_list: bool
) -> None:
    """FluxPipeline's call (sigmas = linspace(1, 1/N, N)) or, with flux_list False, no sigmas at all."""
    if flux_list:
        reference.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device="cpu")
        native.set_timesteps(steps, mu=mu, sigmas=flux_default_sigmas(steps))
    else:
        reference.set_timesteps(steps, mu=mu, device="cpu")
        native.set_timesteps(steps, mu=mu)


@pytest.mark.parametrize("image_seq_len", IMAGE_SEQ_LENS)
@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_flux_dev_schedule_bit_identical(steps: int, image_seq_len: int) -> None:
    reference, native = pair("flux_dev")
    mu = native.compute_mu(image_seq_len)
    assert mu == calculate_shift(image_seq_len, 256, 4096, 0.5, 1.15)
    set_both(reference, native, steps, mu, flux_list=True)
    assert_same_schedule(reference, native)
    assert native.sigmas.shape == (steps + 1,) and native.sigmas[-1] == 0


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "flux_dev"])
@pytest.mark.parametrize("steps", STEP_COUNTS[1:])
@pytest.mark.parametrize("flux_list", [True, False])
def test_other_paths_bit_identical(name: str, steps: int, flux_list: bool) -> None:
    reference, native = pair(name)
    mu = native.compute_mu(1024)
    set_both(reference, native, steps, mu, flux_list)
    assert_same_schedule(reference, native)


@settings(max_examples=60, deadline=None, database=None)
@given(
    name=st.sampled_from(sorted(CONFIGS)),
    steps=st.integers(min_value=2, max_value=120),
    image_seq_len=st.integers(min_value=1, max_value=16384),
    flux_list=st.booleans(),
)
def test_schedule_bit_identical_property(name: str, steps: int, image_seq_len: int, flux_list: bool) -> None:
    reference, native = pair(name)
    mu = native.compute_mu(image_seq_len)
    assert mu == calculate_shift(image_seq_len)
    set_both(reference, native, steps, mu, flux_list)
    assert_same_schedule(reference, native)


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["flux_dev", "flux_schnell"])
def test_step_loop_bit_identical(name: str, model_dtype: torch.dtype) -> None:
    """A full sampling loop with a fake velocity model; latents stay in the model's dtype as in FluxPipeline."""
    reference, native = pair(name)
    steps = 8
    set_both(reference, native, steps, native.compute_mu(4096), flux_list=True)
    reference.set_begin_index(0)
    generator = torch.Generator().manual_seed(0)
    expected = actual = torch.randn(1, 64, 16, generator=generator).to(model_dtype)  # (B, L, C) packed latents
    for i, t in enumerate(reference.timesteps):
        velocity = (torch.randn(1, 64, 16, generator=generator) + 0.1 * float(t) / 1000).to(model_dtype)
        expected = reference.step(velocity, t, expected, return_dict=False)[0]
        actual = native.step(velocity, i, actual)
        assert actual.dtype == expected.dtype == model_dtype
        assert torch.equal(expected, actual), f"step {i}"


def test_step_casts_to_model_output_dtype() -> None:
    """Diffusers returns model_output's dtype even when the sample is float32."""
    reference, native = pair("flux_dev")
    set_both(reference, native, 4, 0.8, flux_list=True)
    sample = torch.randn(2, 8)
    velocity = torch.randn(2, 8).to(torch.bfloat16)
    expected = reference.step(velocity, reference.timesteps[0], sample, return_dict=False)[0]
    actual = native.step(velocity, 0, sample)
    assert actual.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(expected, actual)


def test_flux_default_sigmas() -> None:
    assert flux_default_sigmas(4) == [1.0, 0.75, 0.5, 0.25]
    assert flux_default_sigmas(28) == np.linspace(1.0, 1 / 28, 28).tolist()


@pytest.mark.parametrize(
    "option",
    ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling", "invert_sigmas"],
)
def test_unsupported_option_raises(option: str) -> None:
    with pytest.raises(ValueError, match=option):
        FlowMatchEulerScheduler.from_config({**FLUX_DEV, option: True})
    FlowMatchEulerScheduler.from_config({**FLUX_DEV, option: False})  # present but off is fine


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="cosine"):
        FlowMatchEulerScheduler.from_config({**FLUX_DEV, "time_shift_type": "cosine"})
    with pytest.raises(ValueError, match="beta_schedule"):
        FlowMatchEulerScheduler.from_config({**FLUX_DEV, "beta_schedule": "linear"})
    native = FlowMatchEulerScheduler.from_config(FLUX_DEV)
    with pytest.raises(ValueError, match="mu"):
        native.set_timesteps(4, mu=None)
    with pytest.raises(ValueError, match="before set_timesteps"):
        native.step(torch.zeros(1), 0, torch.zeros(1))
    native.set_timesteps(4, mu=0.5)
    with pytest.raises(ValueError, match="step_index 4"):
        native.step(torch.zeros(1), 4, torch.zeros(1))
    terminal = FlowMatchEulerScheduler.from_config({**FLUX_DEV, "shift_terminal": 0.1})
    with pytest.raises(ValueError, match="shift_terminal"):
        terminal.set_timesteps(1, mu=0.5, sigmas=flux_default_sigmas(1))
