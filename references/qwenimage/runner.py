"""Runs Diffusers' QwenImagePipeline unmodified and records every intermediate into a Trace.

Only instance-level wrappers and forward hooks are used (nothing in diffusers is patched), so the recorded numbers
are exactly what a user of Diffusers gets. Loop tensors are recorded in the canonical spatial layout (B, 16, h, w),
unpacked from the pipeline's (B, tokens, 64) packing with the pipeline's own `_unpack_latents`.

Request mapping: `request.prompts` (the prompt and any `extra_prompts`) is QwenImagePipeline's `prompt` list,
`request.batch_size` its `num_images_per_prompt`; true CFG (a scale > 1 and a negative prompt) is its
`true_cfg_scale` with the negative prompt given once per prompt (QwenImagePipeline encodes prompts and negatives
in separate calls, so their batch sizes must match); without true CFG no negative prompt is passed (one pass).
`request.guidance_scale` is not passed: Qwen-Image has no guidance embedding (Diffusers would only warn).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import QwenImagePipeline

from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from references.common.instance_hooks import PipelineForcer, PipelineRecorder
from references.common.reference_pipeline import (
    check_pipeline_class,
    make_generator,
    run_reference_pipeline,
    torch_dtype,
)

PIPELINE_CLASS = "QwenImagePipeline"


def check_qwenimage_request(request: GenerationRequest, checkpoint: Path, multiple: int = 16) -> None:
    """Refuse what QwenImagePipeline would silently get wrong: sizes not multiples of 16 (the VAE's 8 times the 2x2
    packing; it only warns and rounds down), one step under a terminal shift (NaN sigmas), and several prompts with
    several images each (diffusers 0.42.1's encode_prompt repeats the (prompts, L) mask along the wrong axis: its
    rows come out p0, p1, p0, p1 against embeddings p0, p0, p1, p1, so images get another prompt's mask)."""
    if request.height % multiple or request.width % multiple:
        raise ValueError(
            f"Qwen-Image needs height and width divisible by {multiple}, got {request.height}x{request.width}"
        )
    scheduler = json.loads((Path(checkpoint) / "scheduler" / "scheduler_config.json").read_text())
    if scheduler.get("shift_terminal") and request.steps < 2:
        raise ValueError(f"Qwen-Image's scheduler (shift_terminal={scheduler['shift_terminal']}) gives NaN sigmas "
                         f"for {request.steps} step: use at least 2")
    if request.extra_prompts and request.batch_size > 1:
        raise ValueError("QwenImagePipeline (diffusers 0.42.1) pairs prompt masks with the wrong images when "
                         f"several prompts ({len(request.prompts)}) each get several images ({request.batch_size}): "
                         "no reference to compare with")


def canonical_latents(pipe: Any, packed: torch.Tensor, request: GenerationRequest) -> torch.Tensor:
    """(B, tokens, 64) -> (B, 16, h, w), through QwenImagePipeline._unpack_latents (which adds a frame axis)."""
    return pipe._unpack_latents(packed, request.height, request.width, pipe.vae_scale_factor).squeeze(2)


def real_token_mask(mask: torch.Tensor | None, embeds: torch.Tensor) -> torch.Tensor:
    """The pipeline's prompt mask as recorded: the pipeline drops an all-ones mask (None), which means ones."""
    if mask is None:
        return torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return mask


class _QwenImageRecorder(PipelineRecorder):
    """The shared recorder with Qwen-Image's packed loop latents unpacked, its two encode calls (prompt, negative)
    with their masks, and the decoded video's one frame."""

    def canonical(self, latents: torch.Tensor) -> torch.Tensor:
        return canonical_latents(self.pipe, latents, self.request)

    def _after_encode(self, args: tuple, kwargs: dict, result: tuple) -> None:
        if self.encode_calls > 1:
            raise RuntimeError("encode_prompt was called more than twice; the runner expects prompt + negative")
        prompt_embeds, mask = result
        prefix = "" if self.encode_calls == 0 else "negative_"
        self.trace.record("encode", f"{prefix}prompt_embeds", prompt_embeds)
        self.trace.record("encode", f"{prefix}prompt_embeds_mask", real_token_mask(mask, prompt_embeds))
        self.encode_calls += 1

    def _after_prepare_latents(self, args: tuple, kwargs: dict, result: torch.Tensor) -> None:
        self.trace.record("latents", "initial", self.canonical(result))

    def _after_vae_decode(self, args: tuple, kwargs: dict, result: Any) -> None:
        latents = args[0] if args else kwargs["z"]
        video = result[0] if isinstance(result, tuple) else result.sample
        self.trace.record("decode", "latents", latents)  # (B, 16, 1, h, w), denormalised
        self.trace.record("decode", "image", video[:, :, 0])  # the one frame the pipeline keeps (P:714)


class _QwenImageForcer(PipelineForcer):
    """Teacher forcing of the reference from another reference trace (`baseline`), for calibrating local floors.

    Instance wrappers only: encode_prompt returns the baseline's embeddings and mask (None when all ones, as the
    pipeline returns it), every DiT call and scheduler step of step i starts from the baseline's latents entering
    step i, and the VAE decodes the baseline's decode input. Installed after the recorder, so the recorder sees the
    forced inputs. Under the same settings the forced run reproduces the baseline bit for bit.
    """

    def __init__(self, pipe: QwenImagePipeline, baseline: Trace) -> None:
        super().__init__(pipe, baseline)
        self.encode_calls = 0

    def _latents_in(self, like: torch.Tensor) -> torch.Tensor:
        spatial = self._baseline_latents(self.step)
        b, c, h, w = spatial.shape
        return self.pipe._pack_latents(spatial, b, c, h, w).to(device=like.device, dtype=like.dtype)

    def _encode(self, original: Any, args: tuple, kwargs: dict) -> Any:
        embeds, mask = original(*args, **kwargs)
        prefix = "" if self.encode_calls == 0 else "negative_"
        self.encode_calls += 1
        forced_mask = self._tensor("encode", f"{prefix}prompt_embeds_mask").to(embeds.device)
        return (self._tensor("encode", f"{prefix}prompt_embeds", like=embeds),
                None if bool(forced_mask.bool().all()) else forced_mask)

    def _before_transformer(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["hidden_states"] = self._latents_in(kwargs["hidden_states"])
        return args, kwargs


def _fp64_start_latents(pipe: QwenImagePipeline, request: GenerationRequest) -> torch.Tensor | None:
    """For a float64 run, the fp32 run's packed initial noise upcast (randn draws other numbers in float64)."""
    if torch_dtype(request.dtype) != torch.float64:
        return None
    channels = pipe.transformer.config.in_channels // 4
    latents = pipe.prepare_latents(len(request.prompts) * request.batch_size, channels, request.height,
                                   request.width, torch.float32, torch.device(request.device),
                                   make_generator(request))  # fmt: skip
    return latents.to(torch.float64)


def qwenimage_pipeline_kwargs(request: GenerationRequest) -> dict[str, Any]:
    """QwenImagePipeline's arguments for `request` (output_type and return_dict aside)."""
    prompts = list(request.prompts)
    return {
        "prompt": prompts,
        "negative_prompt": [request.negative_prompt] * len(prompts) if request.do_true_cfg else None,
        "true_cfg_scale": request.true_cfg_scale,
        "height": request.height,
        "width": request.width,
        "num_inference_steps": request.steps,
        "max_sequence_length": request.max_sequence_length,
        "generator": make_generator(request),
        "num_images_per_prompt": request.batch_size,
    }


def run_qwenimage_reference(
    checkpoint: Path,
    request: GenerationRequest,
    trace: Trace,
    progress: Callable[[int, int], None] | None = None,
    force_from: Trace | None = None,
) -> None:
    """Run Diffusers' QwenImagePipeline for `request` and record every stage into `trace`.

    Records (B = len(request.prompts) x request.batch_size): `encode/prompt_embeds` (B, L, D) (each prompt's real
    tokens after the 34 template tokens, zero-padded to the longest) and `encode/prompt_embeds_mask` (B, L) int64
    (ones where the pipeline passed None), the same with `negative_` under true CFG; `timesteps/sigmas` (N + 1) and
    `timesteps/timesteps` (N), float32; `latents/initial` and per step `denoise/transformer_output`
    (`_uncond` under true CFG), `denoise/noise_pred` (after the norm-preserving CFG) and `denoise/latents`, all
    (B, 16, h, w); `decode/latents` (B, 16, 1, h, w) entering vae.decode (after `z / (1 / std) + mean`) and
    `decode/image` (B, 3, H, W), frame 0 of the VAE's output.

    RNG recipe: `g = torch.Generator("cpu").manual_seed(request.seed)`; one draw
    `torch.randn((B, 1, 16, h, w), generator=g, dtype=model dtype)` (the same numbers as (B, 16, h, w)), packed;
    nothing else is random. With `force_from` the run is teacher-forced from that trace (calibration); with
    `request.dtype` "fp64" the fp32 run's noise is upcast.
    """
    check_pipeline_class(checkpoint, PIPELINE_CLASS, "Qwen-Image")
    check_qwenimage_request(request, checkpoint)
    run_reference_pipeline(
        QwenImagePipeline, checkpoint, request, trace, recorder=_QwenImageRecorder, forcer=_QwenImageForcer,
        call_kwargs=lambda pipe: qwenimage_pipeline_kwargs(request) | {"latents": _fp64_start_latents(pipe, request)},
        progress=progress, force_from=force_from,
    )
