"""UniPC multistep sampling on a flow-matching schedule: the Wan 2.1 path of Diffusers' UniPCMultistepScheduler.

Wan 2.1 samples with `UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
flow_shift=3.0 | 5.0, solver_order=2, predict_x0=True, solver_type="bh2", lower_order_final=True,
final_sigmas_type="zero")`. This module reproduces that path bit for bit: the schedule with the same numpy float64
arithmetic and final float32/int64 casts, and every update with the same torch operations in the same order and
dtypes (0-dim float32 coefficients, the CPU sigma table indexed as a CPU scalar in the model-output conversion and
moved to the sample's device in the solver updates), because a one-ulp difference in step k moves every later
latent. Options that take another path raise ValueError instead of sampling differently.

The multistep state is explicit (`UniPCState`), so one step can be run with a chosen history:
- `scheduler.state` is the whole state before the next step (immutable: keep it to rewind, restore it with
  `load_state(state)`, which checks it, or build one with `UniPCState(...)`); `reset()` starts from step 0;
- `scheduler.warm_start(model_outputs, samples)` rebuilds the state before step k = len(model_outputs) from a
  recorded run: step j's (guided) model output and the sample it was applied to (the latents entering step j).
  Teacher forcing step k against a reference trace is then
  `warm_start(ref noise_pred[0..k-1], ref latents entering 0..k-1)` followed by
  `step(native noise_pred[k], k, ref latents entering k)`: the result is what the reference scheduler would have
  produced from the native model output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from native_models.config_dict import split_config

# Options of Diffusers' scheduler that would take another code path, with the only value supported here.
REQUIRED_VALUES: dict[str, Any] = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "predict_x0": True,
    "thresholding": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_dynamic_shifting": False,
    "shift_terminal": None,
    "solver_p": None,
}
# Diffusers' defaults for the required options (a config may leave them out: then the default must be supported).
# Only two differ from the supported values.
REQUIRED_DEFAULTS: dict[str, Any] = {**REQUIRED_VALUES, "prediction_type": "epsilon", "use_flow_sigmas": False}
# Keys that only shape the (unused) discrete beta schedule or other paths: accepted, without effect here.
IGNORED_KEYS = frozenset(
    {
        "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr",
        "dynamic_thresholding_ratio", "sample_max_value", "time_shift_type", "sigma_min", "sigma_max",
        "steps_offset",
    }
)  # fmt: skip
# Diffusers maps these legacy solver names to "bh2".
_LEGACY_SOLVER_TYPES = ("midpoint", "heun", "logrho")
_EINSUM = "k,bkc...->bc..."  # coefficients (K,) times stacked differences (B, K, C, ...) -> (B, C, ...)


@dataclass(frozen=True)
class UniPCFlowConfig:
    """The options that change the numbers on the flow path, with Diffusers' defaults."""

    num_train_timesteps: int = 1000
    solver_order: int = 2
    solver_type: str = "bh2"
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    flow_shift: float = 1.0
    final_sigmas_type: str = "zero"
    timestep_spacing: str = "linspace"  # validated like Diffusers; the flow schedule does not use it
    ignored: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> UniPCFlowConfig:
        """Parse a Diffusers scheduler_config.json; unsupported options and unknown keys raise ValueError."""
        for key, required in REQUIRED_VALUES.items():
            value = config.get(key, REQUIRED_DEFAULTS[key])
            if value != required or type(value) is not type(required):
                raise ValueError(
                    f"UniPCMultistepScheduler option {key}={value!r} is not supported "
                    f"(only the flow-matching path with {key}={required!r})"
                )
        rest = {key: value for key, value in config.items() if key not in REQUIRED_VALUES}  # checked above
        values, ignored = split_config(cls, rest, IGNORED_KEYS, "UniPCMultistepScheduler")
        if values.get("solver_type") in _LEGACY_SOLVER_TYPES:
            values["solver_type"] = "bh2"
        if "disable_corrector" in values:
            corrector = values["disable_corrector"]
            if not isinstance(corrector, (list, tuple)) or not all(isinstance(i, int) for i in corrector):
                raise ValueError(f"disable_corrector must be a list of step indices, got {corrector!r}")
            values["disable_corrector"] = tuple(corrector)
        parsed = cls(**values, ignored=ignored)
        parsed._validate()
        return parsed

    def _validate(self) -> None:
        if self.solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {self.solver_type!r}")
        if not isinstance(self.solver_order, int) or self.solver_order < 1:
            raise ValueError(f"solver_order must be an integer >= 1, got {self.solver_order!r}")
        if self.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {self.final_sigmas_type!r}")
        if self.timestep_spacing not in ("linspace", "leading", "trailing"):
            raise ValueError(
                f"timestep_spacing must be 'linspace', 'leading' or 'trailing', got {self.timestep_spacing!r}"
            )
        if self.final_sigmas_type == "zero" and (self.solver_type == "bh1" or not self.lower_order_final):
            # The last step lands on sigma = 0, where lambda = +inf: B(h) = -h is infinite for bh1 and a step above
            # first order divides by r = 0; Diffusers returns NaN/inf or fails to solve there.
            raise ValueError(
                f"final_sigmas_type 'zero' needs solver_type 'bh2' and lower_order_final true (got solver_type "
                f"{self.solver_type!r}, lower_order_final {self.lower_order_final!r}): Diffusers' last step is "
                "non-finite otherwise"
            )
        # bounded: Diffusers' reference allocates num_train_timesteps entries when it builds its scheduler
        if (isinstance(self.num_train_timesteps, bool) or not isinstance(self.num_train_timesteps, int)
                or not 1 <= self.num_train_timesteps <= 100_000):
            raise ValueError(f"num_train_timesteps must be an integer in 1..100000, got {self.num_train_timesteps!r}")
        if (isinstance(self.flow_shift, bool) or not isinstance(self.flow_shift, (int, float))
                or not 0 < self.flow_shift < float("inf")):
            raise ValueError(f"flow_shift must be a positive finite number, got {self.flow_shift!r}")


@dataclass(frozen=True)
class UniPCState:
    """Everything the multistep solver carries from one step to the next.

    Immutable: `step` replaces it, so a kept reference is a checkpoint that can be assigned back.
    """

    step_index: int = 0  # the step the next `step` call runs
    x0_history: tuple[Tensor, ...] = ()  # x0 predictions of the last min(step_index, solver_order) steps, oldest first
    last_sample: Tensor | None = None  # the (corrected) sample the last predictor started from; the corrector's x
    last_order: int = 0  # order of the last predictor; the next corrector runs at this order


class UniPCFlowScheduler:
    """UniPC predictor-corrector (B(h) variants) in data-prediction form on sigmas from 1 down to 0.

    After `set_timesteps(N)`: `sigmas` (N + 1, float32, on the CPU as in Diffusers) and `timesteps` (N, int64:
    sigma * num_train_timesteps truncated, the values the transformer is called with). `step(model_output, i,
    sample)` runs step i: it corrects `sample` with the new model output (UniC), then predicts the next sample
    (UniP), and returns it in `sample`'s dtype.
    """

    def __init__(self, config: UniPCFlowConfig) -> None:
        self.config = config
        self.sigmas: Tensor | None = None
        self.timesteps: Tensor | None = None
        self.num_inference_steps: int | None = None
        self.state = UniPCState()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UniPCFlowScheduler:
        return cls(UniPCFlowConfig.from_dict(config))

    # ---------------------------------------------------------------------------------------------- schedule

    def flow_sigmas(self, num_inference_steps: int) -> np.ndarray:
        """The N shifted sigmas in float64 (before the float32 cast), as Diffusers computes them."""
        t_count = self.config.num_train_timesteps
        sigmas = np.linspace(1, 1 / t_count, num_inference_steps + 1)[:-1]
        shift = self.config.flow_shift
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        eps = 1e-6
        if np.fabs(sigmas[0] - 1) < eps:
            sigmas[0] -= eps  # sigma = 1 would make log(alpha) = log(0) in the first updates
        return sigmas

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = "cpu") -> None:
        """Build `sigmas` (N + 1, float32, CPU) and `timesteps` (N, int64, on `device`); reset the state."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
            raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        sigmas = self.flow_sigmas(num_inference_steps)
        timesteps = (sigmas * self.config.num_train_timesteps).copy()  # float64
        last = sigmas[-1] if self.config.final_sigmas_type == "sigma_min" else 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)  # truncates toward 0
        self.num_inference_steps = num_inference_steps
        self.reset()

    def set_schedule(self, sigmas: Tensor, timesteps: Tensor) -> None:
        """Install a given schedule instead of computing one: `sigmas` (N + 1, terminal included) and integral
        `timesteps` (N,); resets the state. The harness's teacher-forced run feeds the reference's schedule this
        way (and rebuilds the history with `warm_start`), so a wrong schedule is charged to timestep preparation."""
        if sigmas.ndim != 1 or timesteps.ndim != 1 or sigmas.shape[0] != timesteps.shape[0] + 1:
            raise ValueError(
                f"need sigmas (N + 1,) and timesteps (N,), got {tuple(sigmas.shape)} and {tuple(timesteps.shape)}"
            )
        if timesteps.shape[0] < 1:
            raise ValueError("an installed schedule needs at least one step")
        as_int = timesteps.to(torch.int64)
        if not torch.equal(as_int.to(timesteps.dtype), timesteps):
            raise ValueError(f"UniPC timesteps are integers, got {timesteps.tolist()}")
        self.sigmas = sigmas.to(device="cpu", dtype=torch.float32)  # the CPU table, as set_timesteps builds it
        self.timesteps = as_int
        self.num_inference_steps = int(timesteps.shape[0])
        self.reset()

    # ------------------------------------------------------------------------------------------------- state

    def reset(self) -> None:
        """Forget the multistep history: the next step is step 0."""
        self.state = UniPCState()

    def load_state(self, state: UniPCState) -> None:
        """Continue from `state` (one kept from `self.state`, or built by hand), after checking it is coherent."""
        steps = self._require_schedule()
        order = self.config.solver_order
        if not 0 <= state.step_index <= steps:
            raise ValueError(f"state.step_index {state.step_index} outside [0, {steps}]")
        if len(state.x0_history) != min(state.step_index, order):
            raise ValueError(
                f"state at step {state.step_index} needs {min(state.step_index, order)} x0 predictions "
                f"(solver_order {order}), got {len(state.x0_history)}"
            )
        if (state.last_sample is None) != (state.step_index == 0):
            raise ValueError(f"state.last_sample must be set exactly when step_index > 0 (got {state.step_index})")
        if not 0 <= state.last_order <= order or (state.last_order == 0) != (state.step_index == 0):
            raise ValueError(f"state.last_order {state.last_order} invalid at step {state.step_index}")
        self.state = state

    def warm_start(self, model_outputs: Sequence[Tensor], samples: Sequence[Tensor]) -> None:
        """Rebuild the state before step k = len(model_outputs) by replaying steps 0..k-1 of a recorded run.

        `model_outputs[j]` is the (guided) model output of step j and `samples[j]` the sample it was applied to
        (the latents entering step j). The replay runs the same arithmetic as the recorded run, so the state is
        the recorded run's own; the predicted samples are discarded.
        """
        if len(model_outputs) != len(samples):
            raise ValueError(f"warm_start got {len(model_outputs)} model outputs but {len(samples)} samples")
        self._require_schedule()
        self.reset()
        for j, (model_output, sample) in enumerate(zip(model_outputs, samples, strict=True)):
            self.step(model_output, j, sample)

    def order_at(self, step_index: int) -> int:
        """Order of the predictor at `step_index` in an uninterrupted run (warm-up, and lower at the end)."""
        steps = self._require_schedule()
        order = self.config.solver_order
        if self.config.lower_order_final:
            order = min(order, steps - step_index)
        return min(order, min(step_index, self.config.solver_order) + 1)

    # -------------------------------------------------------------------------------------------------- step

    def step(self, model_output: Tensor, step_index: int, sample: Tensor) -> Tensor:
        """Run step `step_index` (it must be `state.step_index`); returns the next sample in `sample`'s dtype."""
        steps = self._require_schedule()
        state = self.state
        if step_index != state.step_index:
            raise ValueError(
                f"step_index {step_index} but the scheduler's state is before step {state.step_index}; run steps "
                "in order, or rebuild the state first (warm_start / load_state)"
            )
        if not 0 <= step_index < steps:
            raise ValueError(f"step_index {step_index} outside [0, {steps})")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")
        if sample.dim() < 2:
            raise ValueError(f"sample must be (B, C, ...), got shape {tuple(sample.shape)}")

        x0 = self._x0_prediction(model_output, step_index, sample)
        if step_index > 0 and step_index - 1 not in self.config.disable_corrector:
            sample = self._corrector(x0, state, sample)
        history = (*state.x0_history, x0)[-self.config.solver_order :]
        order = self.order_at(step_index)
        prev_sample = self._predictor(history, sample, order, step_index)
        self.state = UniPCState(step_index + 1, history, sample, order)
        return prev_sample

    def _require_schedule(self) -> int:
        if self.sigmas is None or self.num_inference_steps is None:
            raise ValueError("set_timesteps must be called before stepping the scheduler")
        return self.num_inference_steps

    def _x0_prediction(self, model_output: Tensor, step_index: int, sample: Tensor) -> Tensor:
        """Flow prediction to data prediction: x0 = x - sigma * v, sigma a CPU 0-dim float32 as in Diffusers."""
        assert self.sigmas is not None
        return sample - self.sigmas[step_index] * model_output

    def _lambda(self, sigma_index: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(alpha, sigma, lambda = log(alpha) - log(sigma)) of one sigma, alpha = 1 - sigma, on `device`."""
        assert self.sigmas is not None
        sigma = self.sigmas[sigma_index].to(device)
        alpha = 1 - sigma
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def _differences(
        self, history: Sequence[Tensor], m0: Tensor, first_index: int, lambda_s0: Tensor, h: Tensor, order: int
    ) -> tuple[Tensor, list[Tensor]]:
        """Ratios r_i = (lambda_{s_i} - lambda_{s0}) / h (plus a trailing 1) and D1_i = (m_i - m0) / r_i for the
        order - 1 earlier x0 predictions; sigma index of m_i is first_index - i."""
        device = m0.device
        rks: list[Tensor] = []
        d1s: list[Tensor] = []
        for i in range(1, order):
            _, _, lambda_si = self._lambda(first_index - i, device)
            rk = (lambda_si - lambda_s0) / h
            rks.append(rk)
            d1s.append((history[-(i + 1)] - m0) / rk)
        rks.append(torch.ones((), device=device))
        return torch.stack(rks), d1s

    def _phi(self, h: Tensor, rks: Tensor, order: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """h_phi_1 = expm1(-h), B(h) and the order x order system (R, b) of the UniPC coefficients."""
        hh = -h  # data prediction
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        factorial_i = 1
        rows: list[Tensor] = []
        rhs: list[Tensor] = []
        for i in range(1, order + 1):
            rows.append(torch.pow(rks, i - 1))
            rhs.append(h_phi_k * factorial_i / b_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        return h_phi_1, b_h, torch.stack(rows), torch.stack(rhs)

    def _predictor(self, history: Sequence[Tensor], x: Tensor, order: int, step_index: int) -> Tensor:
        """UniP: from sigma_{i} to sigma_{i+1} with the last `order` x0 predictions."""
        device = x.device
        m0 = history[-1]
        alpha_t, sigma_t, lambda_t = self._lambda(step_index + 1, device)
        _, sigma_s0, lambda_s0 = self._lambda(step_index, device)
        h = lambda_t - lambda_s0
        rks, d1s = self._differences(history, m0, step_index, lambda_s0, h, order)
        h_phi_1, b_h, rows, rhs = self._phi(h, rks, order)
        x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if not d1s:
            return (x_t_ - alpha_t * b_h * 0).to(x.dtype)
        if order == 2:
            rhos_p = torch.ones(1, dtype=x.dtype, device=device) * 0.5
        else:
            rhos_p = torch.linalg.solve(rows[:-1, :-1], rhs[:-1]).to(device).to(x.dtype)
        pred_res = torch.einsum(_EINSUM, rhos_p, torch.stack(d1s, dim=1))
        return (x_t_ - alpha_t * b_h * pred_res).to(x.dtype)

    def _corrector(self, model_t: Tensor, state: UniPCState, this_sample: Tensor) -> Tensor:
        """UniC: correct the predicted `this_sample` (at sigma_i) with the new x0 prediction `model_t`, from the
        sample the last predictor started at (sigma_{i-1}), at the last predictor's order."""
        assert state.last_sample is not None
        x = state.last_sample
        order = state.last_order
        step_index = state.step_index
        device = this_sample.device
        m0 = state.x0_history[-1]
        alpha_t, sigma_t, lambda_t = self._lambda(step_index, device)
        _, sigma_s0, lambda_s0 = self._lambda(step_index - 1, device)
        h = lambda_t - lambda_s0
        rks, d1s = self._differences(state.x0_history, m0, step_index - 1, lambda_s0, h, order)
        h_phi_1, b_h, rows, rhs = self._phi(h, rks, order)
        if order == 1:
            rhos_c = torch.ones(1, dtype=x.dtype, device=device) * 0.5
        else:
            rhos_c = torch.linalg.solve(rows, rhs).to(device).to(x.dtype)
        x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        corr_res: Tensor | int = torch.einsum(_EINSUM, rhos_c[:-1], torch.stack(d1s, dim=1)) if d1s else 0
        d1_t = model_t - m0
        return (x_t_ - alpha_t * b_h * (corr_res + rhos_c[-1] * d1_t)).to(x.dtype)


__all__ = ["UniPCFlowConfig", "UniPCFlowScheduler", "UniPCState"]
