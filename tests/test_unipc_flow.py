"""Bit-exact parity of the native UniPC flow scheduler with Diffusers' UniPCMultistepScheduler (Wan 2.1's path).

A fake velocity model that depends on the sample drives both schedulers; a difference in any step would feed
back into the next model output, so every step's sample must be bit-identical, not just close.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from native_models.schedulers.unipc_flow import UniPCFlowScheduler, UniPCState

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (flow_shift 3.0: 480p; 5.0 for 720p).
WAN_2_1: dict[str, Any] = {
    "_class_name": "UniPCMultistepScheduler",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "predict_x0": True,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_p": None,
    "solver_type": "bh2",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}
STEP_COUNTS = (1, 2, 3, 4, 10, 50)
VARIANTS: dict[str, dict[str, Any]] = {
    "wan_720p": {"flow_shift": 5.0},
    "shift_1": {"flow_shift": 1.0},
    "order_1": {"solver_order": 1},
    "order_3": {"solver_order": 3},
    "bh1": {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    "no_lower_order_final": {"lower_order_final": False, "final_sigmas_type": "sigma_min"},
    "sigma_min": {"final_sigmas_type": "sigma_min"},
    "disable_corrector": {"disable_corrector": [0, 2]},
}
SHAPE = (1, 16, 2, 6, 8)  # (B, C, T, h, w): Wan latents for 5 frames at 48x64


def pair(overrides: dict[str, Any] | None = None) -> tuple[UniPCMultistepScheduler, UniPCFlowScheduler]:
    config = {**WAN_2_1, **(overrides or {})}
    reference = UniPCMultistepScheduler(**{k: v for k, v in config.items() if not k.startswith("_")})
    return reference, UniPCFlowScheduler.from_config(config)


def set_both(reference: UniPCMultistepScheduler, native: UniPCFlowScheduler, steps: int) -> None:
    """WanPipeline's calls: set_timesteps(N, device) then set_begin_index(0)."""
    reference.set_timesteps(steps, device="cpu")
    reference.set_begin_index(0)
    native.set_timesteps(steps, device="cpu")


def velocity(sample: torch.Tensor, t: torch.Tensor, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """A fake flow model: depends on the sample and the timestep, plus fresh noise, cast to the model dtype."""
    noise = torch.randn(sample.shape, generator=generator)
    return (0.7 * noise - 0.3 * sample.float() + float(t) / 1000).to(dtype)


def run_loop(
    reference: UniPCMultistepScheduler, native: UniPCFlowScheduler, sample_dtype: torch.dtype, model_dtype: torch.dtype
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Both schedulers through a whole loop from the same start; asserts every step bit-identical.
    Returns the (model_output, sample entering the step) pairs of the run."""
    generator = torch.Generator().manual_seed(0)
    expected = actual = torch.randn(SHAPE, generator=generator).to(sample_dtype)
    history = []
    for i, t in enumerate(reference.timesteps):
        model_output = velocity(expected, t, generator, model_dtype)
        history.append((model_output, expected))
        expected = reference.step(model_output, t, expected, return_dict=False)[0]
        actual = native.step(model_output, i, actual)
        assert actual.dtype == expected.dtype == sample_dtype
        assert torch.equal(actual, expected), f"step {i}: max abs {(actual - expected).abs().max():.3e}"
    assert torch.isfinite(actual).all()
    return history


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("variant", ["wan_480p", *VARIANTS])
def test_schedule_bit_identical(variant: str, steps: int) -> None:
    reference, native = pair(VARIANTS.get(variant))
    set_both(reference, native, steps)
    assert native.sigmas is not None and native.timesteps is not None
    assert native.sigmas.dtype == reference.sigmas.dtype == torch.float32
    assert native.timesteps.dtype == reference.timesteps.dtype == torch.int64
    assert torch.equal(native.sigmas, reference.sigmas), (native.sigmas, reference.sigmas)
    assert torch.equal(native.timesteps, reference.timesteps), (native.timesteps, reference.timesteps)
    assert native.sigmas.shape == (steps + 1,) and native.timesteps.shape == (steps,)


def test_wan_schedule_values() -> None:
    """Anchors independent of Diffusers: sigma_0 = 1 - 1e-6 (kept off 1), timesteps truncate sigma * 1000."""
    _, native = pair()
    native.set_timesteps(4)
    assert native.sigmas is not None and native.timesteps is not None
    assert native.sigmas[0].item() == pytest.approx(1 - 1e-6, abs=1e-7) and native.sigmas[-1] == 0
    # s = linspace(1, 1/1000, 5)[:-1] = 1, .75025, .5005, .25075; 3 s / (1 + 2 s) = 1, .90012, .75037, .500999:
    # times 1000 and truncated (not rounded: the last would round to 501).
    assert native.timesteps.tolist() == [999, 900, 750, 500]
    assert (native.sigmas.diff() < 0).all()


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize(
    ("sample_dtype", "model_dtype"),
    [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16)],
    ids=["fp32", "bf16-model-fp32-latents", "bf16"],
)
def test_wan_loop_bit_identical(steps: int, sample_dtype: torch.dtype, model_dtype: torch.dtype) -> None:
    """WanPipeline keeps fp32 latents and a bf16 transformer output under bf16 (the middle case)."""
    reference, native = pair()
    set_both(reference, native, steps)
    run_loop(reference, native, sample_dtype, model_dtype)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("steps", [3, 10])
def test_variant_loops_bit_identical(variant: str, steps: int) -> None:
    reference, native = pair(VARIANTS[variant])
    set_both(reference, native, steps)
    run_loop(reference, native, torch.float32, torch.float32)


def test_corrector_and_history_matter() -> None:
    """The test loop would catch a native scheduler without the corrector or the second-order history: both change
    the output of a 10-step run (so bit-equality above is not vacuous)."""
    finals = {}
    for name, overrides in {"wan": {}, "no_corrector": {"disable_corrector": list(range(10))},
                            "first_order": {"solver_order": 1}}.items():  # fmt: skip
        reference, native = pair(overrides)
        set_both(reference, native, 10)
        generator = torch.Generator().manual_seed(0)
        sample = torch.randn(SHAPE, generator=generator)
        for i, t in enumerate(native.timesteps):
            sample = native.step(velocity(sample, t, generator, torch.float32), i, sample)
        finals[name] = sample
    assert (finals["wan"] - finals["no_corrector"]).abs().max() > 1e-3
    assert (finals["wan"] - finals["first_order"]).abs().max() > 1e-3


@pytest.mark.parametrize("k", [0, 1, 2, 5, 9])
def test_teacher_forced_step_matches_reference_state(k: int) -> None:
    """warm_start with a recorded run's first k (model output, sample) pairs, then step k with another model
    output: the result equals the reference scheduler, deep-copied at step k, stepping with that output."""
    reference, native = pair()
    set_both(reference, native, 10)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=generator)
    recorded = []
    for i, t in enumerate(reference.timesteps):
        if i == k:
            at_k = copy.deepcopy(reference)
            sample_k = sample
        model_output = velocity(sample, t, generator, torch.float32)
        recorded.append((model_output, sample))
        sample = reference.step(model_output, t, sample, return_dict=False)[0]
    forced_output = recorded[k][0] + 0.01 * torch.randn(SHAPE, generator=generator)  # a slightly wrong model
    expected = at_k.step(forced_output, at_k.timesteps[k], sample_k, return_dict=False)[0]

    fresh = UniPCFlowScheduler.from_config(WAN_2_1)
    fresh.set_timesteps(10)
    fresh.warm_start([m for m, _ in recorded[:k]], [s for _, s in recorded[:k]])
    assert fresh.state.step_index == k
    assert torch.equal(fresh.step(forced_output, k, sample_k), expected)


def test_state_checkpoint_and_restore() -> None:
    _, native = pair()
    native.set_timesteps(6)
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(SHAPE, generator=generator)
    for i in range(3):
        sample = native.step(velocity(sample, native.timesteps[i], generator, torch.float32), i, sample)
    kept = native.state
    model_output = torch.randn(SHAPE, generator=generator)
    first = native.step(model_output, 3, sample)
    assert native.state.step_index == 4 and kept.step_index == 3
    native.load_state(kept)
    assert torch.equal(native.step(model_output, 3, sample), first)
    with pytest.raises(ValueError, match="x0 predictions"):
        native.load_state(UniPCState(step_index=3, x0_history=kept.x0_history[:1], last_sample=sample, last_order=2))
    native.set_timesteps(6)  # resets the history
    assert native.state == UniPCState()


def test_scheduler_config_json_round_trip(tmp_path: Path) -> None:
    """The native side reads what Diffusers writes (every init key, plus _class_name/_diffusers_version)."""
    reference, _ = pair()
    reference.save_config(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    native = UniPCFlowScheduler.from_config(saved)
    assert native.config.flow_shift == 3.0 and native.config.solver_order == 2


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("prediction_type", "epsilon"),
        ("use_flow_sigmas", False),
        ("predict_x0", False),
        ("thresholding", True),
        ("use_karras_sigmas", True),
        ("use_dynamic_shifting", True),
        ("shift_terminal", 0.1),
        ("solver_type", "dpm"),
        ("final_sigmas_type", "last"),
        ("timestep_spacing", "uniform"),
        ("solver_order", 0),
        ("flow_shift", -1.0),
        ("disable_corrector", "0"),
        ("no_such_option", 1),
    ],
)
def test_unsupported_options_raise(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=key):
        UniPCFlowScheduler.from_config({**WAN_2_1, key: value})


@pytest.mark.parametrize("overrides", [{"solver_type": "bh1"}, {"lower_order_final": False}])
def test_non_finite_final_step_configs_raise(overrides: dict[str, Any]) -> None:
    """Diffusers' last step onto sigma = 0 is NaN (bh1) or inf/singular (above first order) here: refused."""
    with pytest.raises(ValueError, match="final_sigmas_type 'zero'"):
        UniPCFlowScheduler.from_config({**WAN_2_1, **overrides})
    reference, _ = pair()
    reference = UniPCMultistepScheduler(**{**reference.config, **overrides})
    reference.set_timesteps(2)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=generator)
    for t in reference.timesteps:
        sample = reference.step(velocity(sample, t, generator, torch.float32), t, sample, return_dict=False)[0]
    assert not torch.isfinite(sample).all()


def test_missing_prediction_type_is_diffusers_default_and_rejected() -> None:
    config = {k: v for k, v in WAN_2_1.items() if k != "prediction_type"}
    with pytest.raises(ValueError, match="prediction_type='epsilon'"):
        UniPCFlowScheduler.from_config(config)


def test_step_input_errors() -> None:
    _, native = pair()
    sample = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        native.step(sample, 0, sample)
    with pytest.raises(ValueError, match="num_inference_steps"):
        native.set_timesteps(0)
    native.set_timesteps(3)
    with pytest.raises(ValueError, match="before step 0"):
        native.step(sample, 1, sample)
    with pytest.raises(ValueError, match="shape"):
        native.step(sample[:, :8], 0, sample)
    with pytest.raises(ValueError, match="warm_start got 1 model outputs but 0 samples"):
        native.warm_start([sample], [])
