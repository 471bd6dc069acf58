"""Runs Diffusers' WanPipeline (Wan 2.1 text-to-video) unmodified and records every intermediate into a Trace.

Only instance-level wrappers and forward hooks are used (nothing in diffusers is patched), so the recorded numbers
are exactly what a user of Diffusers gets. Wan's latents are already spatial in the loop (B, C, T, h, w: the
transformer patchifies and unpatchifies internally), so they are recorded as they are.

Request mapping: `request.frames` is WanPipeline's `num_frames` (4k + 1); classifier-free guidance is WanPipeline's
`guidance_scale`, which this runner sets to `request.true_cfg_scale` when the request asks for true CFG (a scale
> 1 and a negative prompt) and to 1.0 (no CFG, one transformer pass) otherwise. `request.guidance_scale` (FLUX's
guidance embedding) has no counterpart in Wan and is not used.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import WanPipeline
from diffusers.utils import is_ftfy_available

from harness.request import GenerationRequest
from harness.trace import Trace
from references.flux_runner import make_generator, quiet_libraries, torch_dtype
from references.instance_hooks import InstanceHooks, baseline_tensor, decode_baseline_latents

PIPELINE_CLASS = "WanPipeline"


def wan_guidance_scale(request: GenerationRequest) -> float:
    """The `guidance_scale` WanPipeline gets: the true-CFG scale under true CFG, else 1.0 (CFG off)."""
    return float(request.true_cfg_scale) if request.do_true_cfg else 1.0


def check_wan_request(request: GenerationRequest, spatial_multiple: int = 16, temporal_factor: int = 4) -> None:
    """Refuse what WanPipeline would silently change: frames not 4k + 1 (it rounds), sizes not multiples of 16
    (the VAE's 8 times the patch's 2; it rounds them down, or raises)."""
    if request.frames < 1 or (request.frames - 1) % temporal_factor:
        raise ValueError(f"Wan needs frames = {temporal_factor}k + 1 (1, 5, 9, ...), got {request.frames}")
    if request.height % spatial_multiple or request.width % spatial_multiple:
        raise ValueError(
            f"Wan needs height and width divisible by {spatial_multiple}, got {request.height}x{request.width}"
        )


def _check_pipeline_class(checkpoint: Path) -> None:
    index = Path(checkpoint) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a Diffusers pipeline folder (no model_index.json)")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name != PIPELINE_CLASS:
        raise ValueError(f"{checkpoint} holds a {class_name}, but the Wan reference runner needs a {PIPELINE_CLASS}")


class _WanRecorder:
    """Instance-level hooks on one WanPipeline that write each intermediate into the trace as it is produced."""

    def __init__(
        self,
        pipe: WanPipeline,
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

    def _after_encode(self, args: tuple, kwargs: dict, result: tuple) -> None:
        if self.encode_calls:
            raise RuntimeError("encode_prompt was called twice; the runner expects one call (prompt + negative)")
        prompt_embeds, negative_prompt_embeds = result
        self.trace.record("encode", "prompt_embeds", prompt_embeds)
        if negative_prompt_embeds is not None:
            self.trace.record("encode", "negative_prompt_embeds", negative_prompt_embeds)
        self.encode_calls += 1

    def _after_set_timesteps(self, args: tuple, kwargs: dict, result: None) -> None:
        scheduler = self.pipe.scheduler
        self.trace.record("timesteps", "sigmas", scheduler.sigmas)
        self.trace.record("timesteps", "timesteps", scheduler.timesteps)

    def _after_prepare_latents(self, args: tuple, kwargs: dict, result: torch.Tensor) -> None:
        self.trace.record("latents", "initial", result)

    def _after_transformer(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        sample = output[0] if isinstance(output, tuple) else output.sample
        if self.calls_in_step >= 2:
            raise RuntimeError(f"transformer ran {self.calls_in_step + 1} times in step {self.step}; expected <= 2")
        field = "transformer_output" if self.calls_in_step == 0 else "transformer_output_uncond"
        self.trace.record("denoise", field, sample, step=self.step)
        self.calls_in_step += 1

    def _after_scheduler_step(self, args: tuple, kwargs: dict, result: Any) -> None:
        model_output = args[0] if args else kwargs["model_output"]
        prev_sample = result[0] if isinstance(result, tuple) else result.prev_sample
        self.trace.record("denoise", "noise_pred", model_output, step=self.step)
        self.trace.record("denoise", "latents", prev_sample, step=self.step)
        self.step += 1
        self.calls_in_step = 0
        if self.progress is not None:
            self.progress(self.step, self.request.steps)

    def _after_vae_decode(self, args: tuple, kwargs: dict, result: Any) -> None:
        latents = args[0] if args else kwargs["z"]
        video = result[0] if isinstance(result, tuple) else result.sample
        self.trace.record("decode", "latents", latents)
        self.trace.record("decode", "image", video)


class _WanForcer:
    """Teacher forcing of the reference from another reference trace (`baseline`), for calibrating local floors.

    Instance wrappers only: encode_prompt returns the baseline's embeddings; every DiT call of step i gets the
    baseline's latents entering step i (the initial latents for step 0, cast to the DiT's dtype as the pipeline
    does); the scheduler step of step i starts from those latents *and* from the baseline's multistep history:
    the scheduler's state is reset to what it was before step 0 and steps 0..i-1 are replayed (class method,
    so no recorder sees them) with the baseline's guided noise predictions and latents; the VAE decodes the
    baseline's decode input. Installed after `_WanRecorder`, so the recorder sees the forced inputs. Under the
    same settings the forced run reproduces the baseline bit for bit.
    """

    WRAPPED = (("encode_prompt", "pipe"), ("step", "scheduler"), ("decode", "vae"))

    def __init__(self, pipe: WanPipeline, baseline: Trace) -> None:
        self.pipe = pipe
        self.baseline = baseline
        self.step = 0
        self.initial_state: dict[str, Any] | None = None  # the scheduler's attributes before step 0
        self._hooks = InstanceHooks()

    def _tensor(self, stage: str, field: str, step: int | None = None, like: torch.Tensor | None = None) -> Any:
        return baseline_tensor(self.baseline, stage, field, step, like)

    def _latents_in(self, step: int, like: torch.Tensor) -> torch.Tensor:
        """The baseline's latents entering `step`, in `like`'s device and dtype."""
        if step == 0:
            return self._tensor("latents", "initial", like=like)
        return self._tensor("denoise", "latents", step - 1, like=like)

    def install(self) -> None:
        pipe, hooks = self.pipe, self._hooks
        hooks.around(pipe, "encode_prompt", self._encode)
        hooks.around(pipe.scheduler, "step", self._scheduler_step)
        hooks.around(pipe.vae, "decode", functools.partial(decode_baseline_latents, self.baseline))
        hooks.handle(pipe.transformer.register_forward_pre_hook(self._before_transformer, with_kwargs=True))

    def remove(self) -> None:
        self._hooks.remove()

    def _encode(self, original: Any, args: tuple, kwargs: dict) -> Any:
        prompt_embeds, negative = original(*args, **kwargs)
        forced = self._tensor("encode", "prompt_embeds", like=prompt_embeds)
        if negative is not None:
            negative = self._tensor("encode", "negative_prompt_embeds", like=negative)
        return forced, negative

    def _before_transformer(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["hidden_states"] = self._latents_in(self.step, kwargs["hidden_states"])
        return args, kwargs

    def _rewind_scheduler(self, step: int, like_output: torch.Tensor, like_sample: torch.Tensor) -> None:
        """Put the scheduler in the state the baseline's run had before `step` (multistep history included)."""
        scheduler = self.pipe.scheduler
        wrapped = {name for name, _ in self.WRAPPED}
        if self.initial_state is None:
            self.initial_state = {k: copy.deepcopy(v) for k, v in vars(scheduler).items() if k not in wrapped}
        vars(scheduler).update(copy.deepcopy(self.initial_state))
        for j in range(step):
            output = self._tensor("denoise", "noise_pred", j, like=like_output)
            type(scheduler).step(scheduler, output, scheduler.timesteps[j], self._latents_in(j, like_sample),
                                 return_dict=False)

    def _scheduler_step(self, original: Any, args: tuple, kwargs: dict) -> Any:
        names = ("model_output", "timestep", "sample")
        values = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
        rest = {k: v for k, v in kwargs.items() if k not in names}
        self._rewind_scheduler(self.step, values["model_output"], values["sample"])
        values["sample"] = self._latents_in(self.step, values["sample"])
        result = original(*args[len(names):], **values, **rest)
        self.step += 1
        return result


def run_wan_reference(
    checkpoint: Path,
    request: GenerationRequest,
    trace: Trace,
    progress: Callable[[int, int], None] | None = None,
    force_from: Trace | None = None,
) -> None:
    """Run Diffusers' WanPipeline for `request` and record every stage into `trace`.

    Records (canonical layouts; B = 1): `encode/prompt_embeds` (B, L, D) and, under true CFG,
    `encode/negative_prompt_embeds` (each prompt's states past its token count zeroed by the pipeline);
    `timesteps/sigmas` (N + 1, float32) and `timesteps/timesteps` (N, int64); `latents/initial` (B, C, T, h, w),
    T = (frames - 1) // 4 + 1, h, w = H // 8, W // 8; per step `denoise/transformer_output` (conditional pass),
    `denoise/transformer_output_uncond` (true CFG), `denoise/noise_pred` (guided), `denoise/latents` (after the
    UniPC step), all (B, C, T, h, w); `decode/latents` (entering vae.decode, after the denormalisation
    latents / (1 / std) + mean) and `decode/image` (B, 3, frames, H, W), the VAE output clamped to [-1, 1].

    RNG recipe (for identical initial noise): `g = torch.Generator("cpu").manual_seed(request.seed)` on every
    device (see `make_generator`); one draw `torch.randn((1, C, T, h, w), generator=g, dtype=torch.float32)`
    moved to the run's device: WanPipeline draws float32 noise and keeps float32 latents whatever the model
    dtype. No other random numbers are drawn (UniPC is deterministic).

    With `force_from` (another reference trace of the same request), the run is teacher-forced from it
    (`_WanForcer`): harness/calibrate.py measures local floors this way. `request.dtype` may be "fp64" there
    (the latents stay float32, drawn as in the fp32 run; the models run in float64).

    After the run the pipeline is deleted and, on CUDA, the cache is emptied so the native side can load.
    """
    _check_pipeline_class(checkpoint)
    check_wan_request(request)
    dtype = torch_dtype(request.dtype)
    device = torch.device(request.device)
    quiet_libraries()
    pipe = WanPipeline.from_pretrained(str(checkpoint), dtype=dtype, use_safetensors=True)  # never a pickle
    recorder = forcer = None
    try:
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        recorder = _WanRecorder(pipe, request, trace, progress)
        recorder.install()
        if force_from is not None:
            forcer = _WanForcer(pipe, force_from)
            forcer.install()
        guidance_scale = wan_guidance_scale(request)
        pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt if request.do_true_cfg else None,
            height=request.height,
            width=request.width,
            num_frames=request.frames,
            num_inference_steps=request.steps,
            guidance_scale=guidance_scale,
            max_sequence_length=request.max_sequence_length,
            generator=make_generator(request),
            output_type="pt",
            return_dict=False,
        )
        trace.meta.update(
            {
                "side": "reference",
                "pipeline_class": type(pipe).__name__,
                "diffusers_version": diffusers.__version__,
                "transformers_version": transformers.__version__,
                "torch_version": torch.__version__,
                "dtype": request.dtype,
                "device": str(device),
                "wan_guidance_scale": guidance_scale,
                # WanPipeline's prompt_clean runs ftfy.fix_text only when ftfy is importable: the native side
                # must clean prompts the same way.
                "prompt_clean_ftfy": is_ftfy_available(),
            }
        )
        if device.type == "cuda":
            trace.meta["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    finally:
        if forcer is not None:
            forcer.remove()
        if recorder is not None:
            recorder.remove()
        del pipe, recorder, forcer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
