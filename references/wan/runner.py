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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import WanPipeline
from diffusers.utils import is_ftfy_available

from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from references.common.instance_hooks import PipelineForcer, PipelineRecorder
from references.common.reference_pipeline import check_pipeline_class, make_generator, run_reference_pipeline

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


class _WanRecorder(PipelineRecorder):
    """The shared recorder (Wan's loop latents are already canonical), with Wan's one encode call."""

    def _after_encode(self, args: tuple, kwargs: dict, result: tuple) -> None:
        if self.encode_calls:
            raise RuntimeError("encode_prompt was called twice; the runner expects one call (prompt + negative)")
        prompt_embeds, negative_prompt_embeds = result
        self.trace.record("encode", "prompt_embeds", prompt_embeds)
        if negative_prompt_embeds is not None:
            self.trace.record("encode", "negative_prompt_embeds", negative_prompt_embeds)
        self.encode_calls += 1

    def _after_prepare_latents(self, args: tuple, kwargs: dict, result: torch.Tensor) -> None:
        self.trace.record("latents", "initial", result)


class _WanForcer(PipelineForcer):
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
        super().__init__(pipe, baseline)
        self.initial_state: dict[str, Any] | None = None  # the scheduler's attributes before step 0

    def _latents_in(self, step: int, like: torch.Tensor) -> torch.Tensor:
        """The baseline's latents entering `step`, in `like`'s device and dtype."""
        if step == 0:
            return self._tensor("latents", "initial", like=like)
        return self._tensor("denoise", "latents", step - 1, like=like)

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
    probe: Any = None,
) -> None:
    """Run Diffusers' WanPipeline for `request` and record every stage into `trace`.

    Records (canonical layouts; B = request.batch_size, WanPipeline's num_videos_per_prompt):
    `encode/prompt_embeds` (B, L, D) and, under true CFG,
    `encode/negative_prompt_embeds` (each prompt's states past its token count zeroed by the pipeline);
    `timesteps/sigmas` (N + 1, float32) and `timesteps/timesteps` (N, int64); `latents/initial` (B, C, T, h, w),
    T = (frames - 1) // 4 + 1, h, w = H // 8, W // 8; per step `denoise/transformer_output` (conditional pass),
    `denoise/transformer_output_uncond` (true CFG), `denoise/noise_pred` (guided), `denoise/latents` (after the
    UniPC step), all (B, C, T, h, w); `decode/latents` (entering vae.decode, after the denormalisation
    latents / (1 / std) + mean) and `decode/image` (B, 3, frames, H, W), the VAE output clamped to [-1, 1].

    RNG recipe (for identical initial noise): `g = torch.Generator("cpu").manual_seed(request.seed)` on every
    device (see `make_generator`); one draw `torch.randn((B, C, T, h, w), generator=g, dtype=torch.float32)`
    moved to the run's device: WanPipeline draws float32 noise and keeps float32 latents whatever the model
    dtype. No other random numbers are drawn (UniPC is deterministic).

    With `force_from` (another reference trace of the same request), the run is teacher-forced from it
    (`_WanForcer`): harness/golden/calibrate.py measures local floors this way. `request.dtype` may be "fp64" there
    (the latents stay float32, drawn as in the fp32 run; the models run in float64).

    After the run the pipeline is deleted and, on CUDA, the cache is emptied so the native side can load.
    """
    check_pipeline_class(checkpoint, PIPELINE_CLASS, "Wan")
    check_wan_request(request)
    guidance_scale = wan_guidance_scale(request)
    run_reference_pipeline(
        WanPipeline, checkpoint, request, trace, recorder=_WanRecorder, forcer=_WanForcer,
        call_kwargs=lambda pipe: {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt if request.do_true_cfg else None,
            "height": request.height,
            "width": request.width,
            "num_frames": request.frames,
            "num_inference_steps": request.steps,
            "guidance_scale": guidance_scale,
            "max_sequence_length": request.max_sequence_length,
            "generator": make_generator(request),
            "num_videos_per_prompt": request.batch_size,
        },
        progress=progress, force_from=force_from, probe=probe,
        # WanPipeline's prompt_clean runs ftfy.fix_text only when ftfy is importable: the native side must clean
        # prompts the same way.
        meta={"wan_guidance_scale": guidance_scale, "prompt_clean_ftfy": is_ftfy_available()},
    )
