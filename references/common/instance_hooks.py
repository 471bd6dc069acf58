"""Removable hooks on one Diffusers pipeline instance, shared by the family reference runners.

Diffusers itself is never modified: bound methods are shadowed on the instance (`obj.__dict__[name]`) and
module hooks are registered on the instance's modules; `remove()` undoes both. `PipelineRecorder` and
`PipelineForcer` hold what every family's recorder and teacher-forcer do alike (the same pipeline methods and
loop stages); a family subclass adds only what its pipeline does its own way (prompt encoding, latents layout,
scheduler state).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from harness.run.request import GenerationRequest
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace


class InstanceHooks:
    """Instance-level method wrappers and module hook handles, removed together."""

    def __init__(self) -> None:
        self._wrapped: list[tuple[Any, str]] = []
        self._handles: list[Any] = []

    def after(self, obj: Any, name: str, after: Callable[[tuple, dict, Any], None]) -> None:
        """Shadow `obj.name` with a wrapper that calls `after(args, kwargs, result)` once it returned."""
        original = getattr(obj, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            after(args, kwargs, result)
            return result

        self._shadow(obj, name, wrapper)

    def around(self, obj: Any, name: str, around: Callable[[Any, tuple, dict], Any]) -> None:
        """Shadow `obj.name` with `around(original, args, kwargs)`, which decides what runs and returns."""
        original = getattr(obj, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return around(original, args, kwargs)

        self._shadow(obj, name, wrapper)

    def handle(self, handle: Any) -> None:
        """Keep a module hook handle (from register_forward_hook / register_forward_pre_hook) for removal."""
        self._handles.append(handle)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for obj, name in self._wrapped:
            obj.__dict__.pop(name, None)
        self._handles.clear()
        self._wrapped.clear()

    def _shadow(self, obj: Any, name: str, wrapper: Callable[..., Any]) -> None:
        setattr(obj, name, wrapper)
        self._wrapped.append((obj, name))


def baseline_tensor(
    baseline: Trace, stage: str, field: str, step: int | None = None, like: torch.Tensor | None = None
) -> torch.Tensor:
    """A record of the trace a forced reference run is fed from, in `like`'s device and dtype when given."""
    key = RecordKey(stage, field, step)
    tensor = baseline.get(key)
    if tensor is None:
        raise ValueError(f"forcing needs record {key.name()} in the baseline trace")
    return tensor if like is None else tensor.to(device=like.device, dtype=like.dtype)


class PipelineRecorder:
    """Instance-level hooks on one pipeline that write each intermediate into the trace as it is produced.

    Records the stages all families share (scheduler timesteps, each DiT pass, each scheduler step, the VAE
    decode). A subclass records `encode` and `latents/initial` and, where the loop's latents are not in the
    canonical layout, converts them in `canonical`.
    """

    def __init__(
        self,
        pipe: Any,
        request: GenerationRequest,
        trace: Trace,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.pipe = pipe
        self.request = request
        self.trace = trace
        self.progress = progress
        self.step = 0
        self.calls_in_step = 0
        self.encode_calls = 0
        self._hooks = InstanceHooks()

    def canonical(self, latents: torch.Tensor) -> torch.Tensor:
        """A denoising-loop tensor in the trace's canonical layout (as is, unless the family packs it)."""
        return latents

    def install(self) -> None:
        pipe, hooks = self.pipe, self._hooks
        hooks.after(pipe, "encode_prompt", self._after_encode)
        hooks.after(pipe.scheduler, "set_timesteps", self._after_set_timesteps)
        hooks.after(pipe, "prepare_latents", self._after_prepare_latents)
        hooks.after(pipe.scheduler, "step", self._after_scheduler_step)
        hooks.after(pipe.vae, "decode", self._after_vae_decode)
        hooks.handle(pipe.transformer.register_forward_hook(self._after_transformer, with_kwargs=True))

    def remove(self) -> None:
        self._hooks.remove()

    def _after_encode(self, args: tuple, kwargs: dict, result: Any) -> None:
        raise NotImplementedError

    def _after_prepare_latents(self, args: tuple, kwargs: dict, result: Any) -> None:
        raise NotImplementedError

    def _after_set_timesteps(self, args: tuple, kwargs: dict, result: None) -> None:
        scheduler = self.pipe.scheduler
        self.trace.record("timesteps", "sigmas", scheduler.sigmas)
        self.trace.record("timesteps", "timesteps", scheduler.timesteps)

    def _after_transformer(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        sample = output[0] if isinstance(output, tuple) else output.sample
        if self.calls_in_step >= 2:
            raise RuntimeError(f"transformer ran {self.calls_in_step + 1} times in step {self.step}; expected <= 2")
        field = "transformer_output" if self.calls_in_step == 0 else "transformer_output_uncond"
        self.trace.record("denoise", field, self.canonical(sample), step=self.step)
        self.calls_in_step += 1

    def _after_scheduler_step(self, args: tuple, kwargs: dict, result: Any) -> None:
        model_output = args[0] if args else kwargs["model_output"]
        prev_sample = result[0] if isinstance(result, tuple) else result.prev_sample
        self.trace.record("denoise", "noise_pred", self.canonical(model_output), step=self.step)
        self.trace.record("denoise", "latents", self.canonical(prev_sample), step=self.step)
        self.step += 1
        self.calls_in_step = 0
        if self.progress is not None:
            self.progress(self.step, self.request.steps)

    def _after_vae_decode(self, args: tuple, kwargs: dict, result: Any) -> None:
        latents = args[0] if args else kwargs["z"]
        image = result[0] if isinstance(result, tuple) else result.sample
        self.trace.record("decode", "latents", latents)
        self.trace.record("decode", "image", image)


class PipelineForcer:
    """Teacher forcing of the reference from another reference trace (`baseline`), for calibrating local floors.

    Instance wrappers only, installed after the recorder so that it sees the forced inputs: the VAE decodes the
    baseline's decode input (the same for every family); a subclass forces `encode_prompt`, the DiT's input
    (`_before_transformer`) and says where the latents entering a step come from (`_latents_in`, used by the
    scheduler step, which advances `step`).
    """

    def __init__(self, pipe: Any, baseline: Trace) -> None:
        self.pipe = pipe
        self.baseline = baseline
        self.step = 0
        self._hooks = InstanceHooks()

    def _tensor(self, stage: str, field: str, step: int | None = None, like: torch.Tensor | None = None) -> Any:
        return baseline_tensor(self.baseline, stage, field, step, like)

    def install(self) -> None:
        pipe, hooks = self.pipe, self._hooks
        hooks.around(pipe, "encode_prompt", self._encode)
        hooks.around(pipe.scheduler, "step", self._scheduler_step)
        hooks.around(pipe.vae, "decode", self._decode)
        hooks.handle(pipe.transformer.register_forward_pre_hook(self._before_transformer, with_kwargs=True))

    def remove(self) -> None:
        self._hooks.remove()

    def _encode(self, original: Any, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError

    def _before_transformer(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        raise NotImplementedError

    def _baseline_latents(self, step: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """The baseline's latents entering `step` (its initial latents, else the previous step's output), as
        recorded (canonical layout); in `like`'s device and dtype when given."""
        if step == 0:
            return self._tensor("latents", "initial", like=like)
        return self._tensor("denoise", "latents", step - 1, like=like)

    def _latents_in(self, like: torch.Tensor) -> torch.Tensor:
        """The baseline's latents entering step `self.step`, as the pipeline holds them (a family whose pipeline
        packs its latents overrides this)."""
        return self._baseline_latents(self.step, like)

    def _scheduler_step(self, original: Any, args: tuple, kwargs: dict) -> Any:
        """`scheduler.step` on the baseline's latents of this step (its `sample`, third positional or keyword);
        advances `step`. A scheduler with history (Wan's UniPC) overrides this."""
        if len(args) >= 3:
            args = (*args[:2], self._latents_in(args[2]), *args[3:])
        else:
            kwargs["sample"] = self._latents_in(kwargs["sample"])
        result = original(*args, **kwargs)
        self.step += 1
        return result

    def _decode(self, original: Any, args: tuple, kwargs: dict) -> Any:
        """`vae.decode` run on the baseline's `decode/latents` instead of the pipeline's own input."""
        if args:
            args = (self._tensor("decode", "latents", like=args[0]), *args[1:])
        else:
            kwargs["z"] = self._tensor("decode", "latents", like=kwargs["z"])
        return original(*args, **kwargs)
