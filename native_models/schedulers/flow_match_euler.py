"""Flow-matching Euler sampler: the FLUX.1 path of Diffusers' FlowMatchEulerDiscreteScheduler, bit for bit.

Sigma schedules are built with the same numpy dtypes and operation order as Diffusers (float64 input sigmas
rounded to float32 before shifting, float32 shift arithmetic, torch float32 for timesteps), because a one-ulp
difference in a sigma moves every later latent. Options that FLUX.1 does not use raise ValueError instead of
silently sampling differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from native_models.config_dict import split_config

# Options of Diffusers' scheduler that change the numbers and are not reproduced here.
UNSUPPORTED_FLAGS = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "stochastic_sampling",
    "invert_sigmas",
    "use_flow_sigmas",  # read by FluxPipeline: it would drop the default sigma list
)
# Keys Diffusers accepts that only matter for the unsupported flags above.
IGNORED_KEYS = frozenset({"sigma_min", "sigma_max"})
# Upper bounds of integer config values: far above any real scheduler (1000 training steps, 4096 tokens), far
# below what would allocate gigabytes (the training sigma table has num_train_timesteps entries).
MAX_CONFIG_INT = {"num_train_timesteps": 100_000, "base_image_seq_len": 2**31, "max_image_seq_len": 2**31}


def _refuse_unsupported_flag(key: str, value: Any) -> None:
    """A flag of UNSUPPORTED_FLAGS is accepted (and ignored) only when off: on, it would sample differently."""
    if key in UNSUPPORTED_FLAGS and value:
        raise ValueError(f"scheduler option {key}={value!r} is not supported (only the FLUX.1 path)")


@dataclass(frozen=True)
class FlowMatchEulerConfig:
    """Scheduler hyper-parameters, with Diffusers' defaults for keys a scheduler_config.json leaves out."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float | None = 0.5
    max_shift: float | None = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    time_shift_type: str = "exponential"
    shift_terminal: float | None = None
    ignored: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> FlowMatchEulerConfig:
        """Parse a Diffusers scheduler config; unknown keys and unsupported options raise ValueError."""
        values, ignored = split_config(
            cls, config, IGNORED_KEYS | set(UNSUPPORTED_FLAGS), "FlowMatchEulerDiscreteScheduler",
            check_key=_refuse_unsupported_flag,
        )
        parsed = cls(**values, ignored=ignored)
        parsed.check_values()
        if parsed.time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {parsed.time_shift_type!r}")
        return parsed

    def check_values(self) -> None:
        """Types and ranges, so a hostile or mistyped config is one ValueError naming the key, not a TypeError
        deep in set_timesteps or a schedule of 10**12 training steps allocated."""
        for name in ("num_train_timesteps", "base_image_seq_len", "max_image_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONFIG_INT[name]:
                raise ValueError(f"{name} must be an integer in 1..{MAX_CONFIG_INT[name]}, got {value!r}")
        for name in ("shift", "base_shift", "max_shift", "shift_terminal"):
            value = getattr(self, name)
            if value is None and name != "shift":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
        if not isinstance(self.use_dynamic_shifting, bool):
            raise ValueError(f"use_dynamic_shifting must be true or false, got {self.use_dynamic_shifting!r}")
        if self.base_image_seq_len == self.max_image_seq_len:
            raise ValueError(f"base_image_seq_len and max_image_seq_len are both {self.max_image_seq_len}: "
                             "the resolution shift would divide by zero")


def flux_default_sigmas(num_inference_steps: int) -> list[float]:
    """FluxPipeline's default sigma list: np.linspace(1, 1/N, N) in float64 (rounded to float32 later)."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    return np.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()


class FlowMatchEulerScheduler:
    """Euler steps along the flow x_t = (1 - sigma) x_0 + sigma * noise, from sigma = 1 down to 0.

    After `set_timesteps`: `sigmas` (N + 1, float32, last is 0) and `timesteps` (N, float32, sigma * T).
    `step(model_output, i, sample)` moves `sample` from sigmas[i] to sigmas[i + 1].
    """

    def __init__(self, config: FlowMatchEulerConfig) -> None:
        self.config = config
        self.num_train_timesteps = config.num_train_timesteps
        self.sigmas: torch.Tensor | None = None
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self.sigma_max, self.sigma_min = self._training_sigma_range()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FlowMatchEulerScheduler:
        return cls(FlowMatchEulerConfig.from_dict(config))

    def _training_sigma_range(self) -> tuple[float, float]:
        """First and last training sigma, computed in torch float32 like Diffusers' constructor.

        Without dynamic shifting the training sigmas are already shifted (and shifted again in set_timesteps).
        """
        t_count = self.num_train_timesteps
        steps = np.linspace(1, t_count, t_count, dtype=np.float32)[::-1].copy()
        sigmas = torch.from_numpy(steps) / t_count  # (T,) float32, from 1 down to 1/T
        if not self.config.use_dynamic_shifting:
            shift = self.config.shift
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        return sigmas[0].item(), sigmas[-1].item()

    def compute_mu(self, image_seq_len: int) -> float:
        """FLUX's resolution-dependent shift: linear in the token count, through (base_len, base) and (max_len, max)."""
        base_shift, max_shift = self.config.base_shift, self.config.max_shift
        if base_shift is None or max_shift is None:
            raise ValueError(f"compute_mu needs base_shift and max_shift, got {base_shift!r} and {max_shift!r}")
        base_len, max_len = self.config.base_image_seq_len, self.config.max_image_seq_len
        slope = (max_shift - base_shift) / (max_len - base_len)
        intercept = base_shift - slope * base_len
        return image_seq_len * slope + intercept

    def _time_shift(self, mu: float, t: np.ndarray) -> np.ndarray:
        """Resolution shift of the sigmas (exponent sigma = 1.0 as Diffusers calls it), in t's numpy dtype."""
        factor = math.exp(mu) if self.config.time_shift_type == "exponential" else mu
        return factor / (factor + (1 / t - 1) ** 1.0)

    def _stretch_to_terminal(self, t: np.ndarray) -> np.ndarray:
        """Rescale 1 - t so the last sigma lands on shift_terminal."""
        one_minus_t = 1 - t
        if one_minus_t[-1] == 0:
            # Diffusers divides 0 by 0 here and returns NaN sigmas; refuse instead.
            raise ValueError(f"shift_terminal={self.config.shift_terminal} needs a last sigma below 1, got {t[-1]}")
        scale = one_minus_t[-1] / (1 - self.config.shift_terminal)
        return 1 - (one_minus_t / scale)

    def set_timesteps(
        self,
        num_inference_steps: int,
        mu: float | None,
        sigmas: list[float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        """Build `self.sigmas` (N + 1, float32) and `self.timesteps` (N, float32) as Diffusers' set_timesteps does.

        `sigmas` is the pipeline's unshifted list (FLUX: `flux_default_sigmas(N)`); None spaces the timesteps
        linearly between the training range (Diffusers' default when a pipeline passes no sigmas).
        """
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("mu is required when use_dynamic_shifting is true (got None)")
        if sigmas is not None and len(sigmas) != num_inference_steps:
            raise ValueError(f"got {len(sigmas)} sigmas for num_inference_steps={num_inference_steps}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")

        if sigmas is None:
            # float64 all the way to the final float32 cast, as in Diffusers.
            t_count = self.num_train_timesteps
            steps = np.linspace(self.sigma_max * t_count, self.sigma_min * t_count, num_inference_steps)
            shifted = steps / t_count
        else:
            shifted = np.array(sigmas).astype(np.float32)  # float32 arithmetic from here on

        if cfg.use_dynamic_shifting:
            shifted = self._time_shift(mu, shifted)
        else:
            shifted = cfg.shift * shifted / (1 + (cfg.shift - 1) * shifted)
        if cfg.shift_terminal:
            shifted = self._stretch_to_terminal(shifted)

        sigma_t = torch.from_numpy(shifted).to(dtype=torch.float32, device=device)  # (N,)
        self.timesteps = sigma_t * self.num_train_timesteps  # (N,) float32
        self.sigmas = torch.cat([sigma_t, torch.zeros(1, device=sigma_t.device)])  # (N + 1,), terminal 0
        self.num_inference_steps = num_inference_steps

    def set_schedule(self, sigmas: torch.Tensor, timesteps: torch.Tensor) -> None:
        """Install a given schedule instead of computing one: `sigmas` (N + 1, terminal included) and
        `timesteps` (N,). The harness's teacher-forced run feeds the reference's schedule this way, so a wrong
        schedule is charged to timestep preparation and not to every denoising step after it."""
        if sigmas.ndim != 1 or timesteps.ndim != 1 or sigmas.shape[0] != timesteps.shape[0] + 1:
            raise ValueError(
                f"need sigmas (N + 1,) and timesteps (N,), got {tuple(sigmas.shape)} and {tuple(timesteps.shape)}"
            )
        if timesteps.shape[0] < 1:
            raise ValueError("an installed schedule needs at least one step")
        self.sigmas = sigmas.to(torch.float32)
        self.timesteps = timesteps.to(torch.float32)
        self.num_inference_steps = int(timesteps.shape[0])

    def step(self, model_output: torch.Tensor, step_index: int, sample: torch.Tensor) -> torch.Tensor:
        """One Euler step: sample + (sigma_{i+1} - sigma_i) * model_output, returned in model_output's dtype.

        Like Diffusers, the sample is upcast to float32 but model_output is not: the product with the float32
        0-dim dt is formed in model_output's dtype (bf16 for FLUX), then added to the float32 sample.
        """
        if self.sigmas is None or self.num_inference_steps is None:
            raise ValueError("step called before set_timesteps")
        if not 0 <= step_index < self.num_inference_steps:
            raise ValueError(f"step_index {step_index} outside [0, {self.num_inference_steps})")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")
        sigma = self.sigmas[step_index]  # 0-dim float32
        sigma_next = self.sigmas[step_index + 1]
        prev = sample.to(torch.float32) + (sigma_next - sigma) * model_output
        return prev.to(model_output.dtype)


__all__ = ["FlowMatchEulerConfig", "FlowMatchEulerScheduler", "flux_default_sigmas"]
