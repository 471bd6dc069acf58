"""Runs Diffusers' WanPipeline (Wan 2.1 text-to-video, Wan 2.2 A14B two experts) and WanImageToVideoPipeline (Wan
2.1 I2V, Wan 2.2 A14B I2V) unmodified and records every intermediate into a Trace.

Only instance-level wrappers and forward hooks are used (nothing in diffusers is patched), so the recorded numbers
are exactly what a user of Diffusers gets. Wan's latents are already spatial in the loop (B, C, T, h, w: the
transformer patchifies and unpatchifies internally), so they are recorded as they are.

Request mapping: `request.frames` is the pipelines' `num_frames` (4k + 1); classifier-free guidance is their
`guidance_scale`, which this runner sets to `request.true_cfg_scale` when the request asks for true CFG (a scale
> 1 and a negative prompt) and to 1.0 (no CFG, one transformer pass) otherwise; `request.true_cfg_scale_2` is
`guidance_scale_2` (two experts; None lets the pipeline use the first scale). `request.guidance_scale` (FLUX's
guidance embedding) has no counterpart in Wan and is not used. The image-to-video pipeline gets `request.image`
as a PIL RGB image and a list of B prompts (`num_videos_per_prompt=1`): WanImageToVideoPipeline repeats the
image tokens by the prompt count, so a string prompt with B videos fails in its DiT (docs/families/wan-i2v.md).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from diffusers.utils import is_ftfy_available

from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from references.common.instance_hooks import PipelineForcer, PipelineRecorder
from references.common.reference_pipeline import (
    check_pipeline_class,
    check_single_prompt,
    make_generator,
    run_reference_pipeline,
)

PIPELINE_CLASS = "WanPipeline"
I2V_PIPELINE_CLASS = "WanImageToVideoPipeline"


def wan_guidance_scale(request: GenerationRequest) -> float:
    """The `guidance_scale` WanPipeline gets: the true-CFG scale under true CFG, else 1.0 (CFG off)."""
    return float(request.true_cfg_scale) if request.do_true_cfg else 1.0


def wan_guidance_scale_2(request: GenerationRequest) -> float | None:
    """The second expert's `guidance_scale_2`: the request's under true CFG, else None (the pipeline then uses
    the first scale; without CFG neither is used)."""
    if request.true_cfg_scale_2 is None or not request.do_true_cfg:
        return None
    return float(request.true_cfg_scale_2)


def wan_experts(pipe: Any) -> list[Any]:
    """The transformers a step can run, by expert index: `transformer_2` only when the pipeline switches to it."""
    second = getattr(pipe, "transformer_2", None)
    if second is None or pipe.config.get("boundary_ratio") is None:
        return [pipe.transformer]
    return [pipe.transformer, second]


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
    """The shared recorder (Wan's loop latents are already canonical), with Wan's one encode call, both experts'
    DiT calls (and which expert ran each step), and the image-to-video inputs: `encode/image_embeds` as the DiT
    gets them (repeated per prompt, in its dtype), `latents/mask` and `latents/condition` from prepare_latents."""

    def install(self) -> None:
        super().install()  # the DiT output hook on pipe.transformer
        experts = wan_experts(self.pipe)
        for module in experts[1:]:
            self._hooks.handle(module.register_forward_hook(self._after_transformer, with_kwargs=True))
        for index, module in enumerate(experts):
            hook = functools.partial(self._before_transformer, index, len(experts))
            self._hooks.handle(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _before_transformer(self, expert: int, count: int, module: Any, args: tuple, kwargs: dict) -> None:
        if self.calls_in_step:  # the unconditional pass of the step: same expert, same image tokens
            return
        image = kwargs.get("encoder_hidden_states_image")
        if self.step == 0 and image is not None:
            self.trace.record("encode", "image_embeds", image)
        if count > 1:
            self.trace.record("denoise", "expert", torch.tensor([expert], dtype=torch.int64), step=self.step)

    def _after_encode(self, args: tuple, kwargs: dict, result: tuple) -> None:
        if self.encode_calls:
            raise RuntimeError("encode_prompt was called twice; the runner expects one call (prompt + negative)")
        prompt_embeds, negative_prompt_embeds = result
        self.trace.record("encode", "prompt_embeds", prompt_embeds)
        if negative_prompt_embeds is not None:
            self.trace.record("encode", "negative_prompt_embeds", negative_prompt_embeds)
        self.encode_calls += 1

    def _after_prepare_latents(self, args: tuple, kwargs: dict, result: torch.Tensor | tuple) -> None:
        if isinstance(result, torch.Tensor):  # text-to-video
            self.trace.record("latents", "initial", result)
            return
        latents, condition = result  # image-to-video: cat([mask (f_t channels), conditioning latents], dim=1)
        mask_channels = self.pipe.vae_scale_factor_temporal
        self.trace.record("latents", "initial", latents)
        self.trace.record("latents", "mask", condition[:, :mask_channels])
        self.trace.record("latents", "condition", condition[:, mask_channels:])


class _WanForcer(PipelineForcer):
    """Teacher forcing of the reference from another reference trace (`baseline`), for calibrating local floors.

    Instance wrappers only: encode_prompt returns the baseline's embeddings; every DiT call of step i gets the
    baseline's latents entering step i (the initial latents for step 0, cast to the DiT's dtype as the pipeline
    does); the scheduler step of step i starts from those latents *and* from the baseline's multistep history:
    the scheduler's state is reset to what it was before step 0 and steps 0..i-1 are replayed (class method,
    so no recorder sees them) with the baseline's guided noise predictions and latents; the VAE decodes the
    baseline's decode input. Installed after `_WanRecorder`, so the recorder sees the forced inputs. Under the
    same settings the forced run reproduces the baseline bit for bit. Both experts are forced; an image-to-video
    DiT also gets the baseline's mask, conditioning latents and image tokens.
    """

    WRAPPED = (("encode_prompt", "pipe"), ("step", "scheduler"), ("decode", "vae"))

    def __init__(self, pipe: WanPipeline, baseline: Trace) -> None:
        super().__init__(pipe, baseline)
        self.initial_state: dict[str, Any] | None = None  # the scheduler's attributes before step 0

    def _latents_in(self, step: int, like: torch.Tensor) -> torch.Tensor:
        """The baseline's latents entering `step`, in `like`'s device and dtype."""
        return self._baseline_latents(step, like)

    def _encode(self, original: Any, args: tuple, kwargs: dict) -> Any:
        prompt_embeds, negative = original(*args, **kwargs)
        forced = self._tensor("encode", "prompt_embeds", like=prompt_embeds)
        if negative is not None:
            negative = self._tensor("encode", "negative_prompt_embeds", like=negative)
        return forced, negative

    def install(self) -> None:
        super().install()
        for module in wan_experts(self.pipe)[1:]:
            self._hooks.handle(module.register_forward_pre_hook(self._before_transformer, with_kwargs=True))

    def _before_transformer(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = kwargs["hidden_states"]
        channels = self.pipe.vae.config.z_dim
        latents = self._latents_in(self.step, hidden[:, :channels])
        if hidden.shape[1] > channels:  # image-to-video: cat([latents, mask, condition]) in the DiT's dtype
            mask = self._tensor("latents", "mask", like=hidden[:, :1])
            condition = self._tensor("latents", "condition", like=hidden[:, :1])
            latents = torch.cat([latents, mask, condition], dim=1)
        kwargs["hidden_states"] = latents
        if kwargs.get("encoder_hidden_states_image") is not None:
            kwargs["encoder_hidden_states_image"] = self._tensor("encode", "image_embeds",
                                                                 like=kwargs["encoder_hidden_states_image"])
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
    T = (frames - 1) // 4 + 1, h, w = H // 8, W // 8; per step `denoise/expert` (int64 (1,), two experts only: 0
    for `transformer`, 1 for `transformer_2`), `denoise/transformer_output` (conditional pass),
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
    check_single_prompt(request, "Wan")
    check_wan_request(request)
    if request.image is not None:
        raise ValueError(f"{checkpoint} is text-to-video (WanPipeline); it takes no conditioning image")
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
            "guidance_scale_2": wan_guidance_scale_2(request),
            "max_sequence_length": request.max_sequence_length,
            "generator": make_generator(request),
            "num_videos_per_prompt": request.batch_size,
        },
        progress=progress, force_from=force_from, probe=probe,
        # WanPipeline's prompt_clean runs ftfy.fix_text only when ftfy is importable: the native side must clean
        # prompts the same way.
        meta={"wan_guidance_scale": guidance_scale, "prompt_clean_ftfy": is_ftfy_available()},
    )


def run_wan_i2v_reference(
    checkpoint: Path,
    request: GenerationRequest,
    trace: Trace,
    progress: Callable[[int, int], None] | None = None,
    force_from: Trace | None = None,
) -> None:
    """Run Diffusers' WanImageToVideoPipeline for `request` (its `image` the conditioning frame) and record every
    stage into `trace`: the records of `run_wan_reference`, plus `encode/image_embeds` (B, 257, D) in the DiT's dtype
    (Wan 2.1 I2V only: CLIP's penultimate hidden state of the image, as the DiT receives it), `latents/mask`
    (B, 4, T, h, w) float32 and `latents/condition` (B, 16, T, h, w) float32 (the VAE-encoded, normalised
    conditioning video: the first frame, then zeros). The RNG recipe is text-to-video's: the initial noise is
    drawn first, and the conditioning latents are the posterior mean (no draw).
    """
    check_pipeline_class(checkpoint, I2V_PIPELINE_CLASS, "Wan image-to-video")
    check_wan_request(request)
    if request.image is None:
        raise ValueError("Wan image-to-video needs a conditioning image (request.image)")
    guidance_scale = wan_guidance_scale(request)
    batch = request.batch_size
    run_reference_pipeline(
        WanImageToVideoPipeline, checkpoint, request, trace, recorder=_WanRecorder, forcer=_WanForcer,
        call_kwargs=lambda pipe: {
            "image": request.image.to_pil(),
            "prompt": [request.prompt] * batch,
            "negative_prompt": [request.negative_prompt] * batch if request.do_true_cfg else None,
            "height": request.height,
            "width": request.width,
            "num_frames": request.frames,
            "num_inference_steps": request.steps,
            "guidance_scale": guidance_scale,
            "guidance_scale_2": wan_guidance_scale_2(request),
            "max_sequence_length": request.max_sequence_length,
            "generator": make_generator(request),
            "num_videos_per_prompt": 1,
        },
        progress=progress, force_from=force_from,
        # WanImageToVideoPipeline calls ftfy unconditionally (the lock installs it); the native side follows ftfy's
        # presence for both pipelines
        meta={"wan_guidance_scale": guidance_scale, "prompt_clean_ftfy": is_ftfy_available(),
              "image": request.image.to_dict()},
    )
