"""Runs Diffusers' ZImagePipeline unmodified and records every intermediate into a Trace.

Only instance-level wrappers and forward hooks are used (nothing in diffusers is patched), so the recorded numbers
are exactly what a user of Diffusers gets. Z-Image's loop latents are spatial (B, 16, h, w) float32 already; its
DiT takes and returns lists (one (C, 1, h, w) tensor per sample, both CFG halves in one call), which the recorder
stacks; its prompt embeddings are a list of one (L_i, D) tensor per prompt, recorded zero-padded to the longest
with the mask of real tokens (`encode/prompt_embeds_mask`), the layout the native side keeps.

Request mapping: `request.prompts` is ZImagePipeline's `prompt` list, `request.batch_size` its
`num_images_per_prompt`. Classifier-free guidance is ZImagePipeline's `guidance_scale` (on when > 0, and then
`pos + s (pos - neg)`): it is `request.true_cfg_scale` when the request asks for true CFG (a scale > 1 and a
negative prompt, given once per prompt) and 0.0 (off, one pass) otherwise. `cfg_normalization` and
`cfg_truncation` keep their defaults (off, 1.0). `request.guidance_scale` (FLUX's embedding) has no counterpart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import ZImagePipeline
from torch.nn.utils.rnn import pad_sequence

from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from references.common.instance_hooks import PipelineForcer, PipelineRecorder
from references.common.reference_pipeline import check_pipeline_class, make_generator, run_reference_pipeline

PIPELINE_CLASS = "ZImagePipeline"


def zimage_guidance_scale(request: GenerationRequest) -> float:
    """The `guidance_scale` ZImagePipeline gets: the true-CFG scale under true CFG, else 0.0 (CFG off)."""
    return float(request.true_cfg_scale) if request.do_true_cfg else 0.0


def check_zimage_request(request: GenerationRequest, multiple: int = 16) -> None:
    """ZImagePipeline refuses sizes its VAE x 2 does not divide; say so before loading anything."""
    if request.height % multiple or request.width % multiple:
        raise ValueError(
            f"Z-Image needs height and width divisible by {multiple}, got {request.height}x{request.width}"
        )


def padded_with_mask(states: list[torch.Tensor], repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One (L_i, D) tensor per prompt, each repeated `repeats` times (ZImagePipeline's num_images_per_prompt) ->
    (B, L_max, D) zero-padded and the int64 mask (B, L_max) of real tokens."""
    rows = [row for row in states for _ in range(repeats)]
    padded = pad_sequence(rows, batch_first=True, padding_value=0.0)
    mask = torch.zeros(padded.shape[:2], dtype=torch.long, device=padded.device)
    for i, row in enumerate(rows):
        mask[i, : row.shape[0]] = 1
    return padded, mask


def stacked(samples: list[torch.Tensor]) -> torch.Tensor:
    """The DiT's per-sample outputs (C, 1, h, w) -> (B, C, h, w)."""
    return torch.stack(samples).squeeze(2)


class _ZImageRecorder(PipelineRecorder):
    """The shared recorder with Z-Image's one encode call (list embeddings), its one DiT call per step on the
    doubled CFG batch (positives first), and its list outputs stacked."""

    def _after_encode(self, args: tuple, kwargs: dict, result: tuple) -> None:
        if self.encode_calls:
            raise RuntimeError("encode_prompt was called twice; the runner expects one call (prompt + negative)")
        prompt_embeds, negative_prompt_embeds = result
        for prefix, states in (("", prompt_embeds), ("negative_", negative_prompt_embeds)):
            if states:
                padded, mask = padded_with_mask(list(states), self.request.batch_size)
                self.trace.record("encode", f"{prefix}prompt_embeds", padded)
                self.trace.record("encode", f"{prefix}prompt_embeds_mask", mask)
        self.encode_calls += 1

    def _after_prepare_latents(self, args: tuple, kwargs: dict, result: torch.Tensor) -> None:
        self.trace.record("latents", "initial", result)

    def _after_transformer(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        samples = output[0] if isinstance(output, tuple) else output.sample
        if self.calls_in_step:
            raise RuntimeError(f"transformer ran twice in step {self.step}; ZImagePipeline batches CFG in one call")
        batch = len(self.request.prompts) * self.request.batch_size
        self.trace.record("denoise", "transformer_output", stacked(samples[:batch]), step=self.step)
        if len(samples) > batch:
            self.trace.record("denoise", "transformer_output_uncond", stacked(samples[batch:]), step=self.step)
        self.calls_in_step += 1


class _ZImageForcer(PipelineForcer):
    """Teacher forcing of the reference from another reference trace (`baseline`), for calibrating local floors.

    Instance wrappers only: encode_prompt returns the baseline's per-prompt embeddings (cut by its mask), the DiT
    call and the scheduler step of step i start from the baseline's latents entering step i (cast and doubled as
    the pipeline does), and the VAE decodes the baseline's decode input. Installed after the recorder, so the
    recorder sees the forced inputs. Under the same settings the forced run reproduces the baseline bit for bit.
    """

    def __init__(self, pipe: ZImagePipeline, baseline: Trace, repeats: int = 1) -> None:
        super().__init__(pipe, baseline)
        self.repeats = repeats  # images per prompt: the baseline's rows i * repeats are the prompts' own

    def _prompt_list(self, prefix: str, like: list[torch.Tensor]) -> list[torch.Tensor]:
        padded = self._tensor("encode", f"{prefix}prompt_embeds", like=like[0])
        mask = self._tensor("encode", f"{prefix}prompt_embeds_mask").bool()
        rows = range(0, padded.shape[0], self.repeats)
        return [padded[i][mask[i].to(padded.device)] for i in rows]

    def _encode(self, original: Any, args: tuple, kwargs: dict) -> Any:
        prompt_embeds, negative = original(*args, **kwargs)
        forced = self._prompt_list("", prompt_embeds)
        return forced, (self._prompt_list("negative_", negative) if negative else negative)

    def _before_transformer(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        images = args[0]
        latents = self._latents_in(images[0]).to(images[0].dtype)  # (B, C, h, w)
        doubled = latents.repeat(len(images) // latents.shape[0], 1, 1, 1)
        return (list(doubled.unsqueeze(2).unbind(0)), *args[1:]), kwargs


def zimage_pipeline_kwargs(request: GenerationRequest) -> dict[str, Any]:
    """ZImagePipeline's arguments for `request` (output_type and return_dict aside)."""
    prompts = list(request.prompts)
    return {
        "prompt": prompts,
        "negative_prompt": [request.negative_prompt] * len(prompts) if request.do_true_cfg else None,
        "guidance_scale": zimage_guidance_scale(request),
        "height": request.height,
        "width": request.width,
        "num_inference_steps": request.steps,
        "max_sequence_length": request.max_sequence_length,
        "generator": make_generator(request),
        "num_images_per_prompt": request.batch_size,
    }


def run_zimage_reference(
    checkpoint: Path,
    request: GenerationRequest,
    trace: Trace,
    progress: Callable[[int, int], None] | None = None,
    force_from: Trace | None = None,
) -> None:
    """Run Diffusers' ZImagePipeline for `request` and record every stage into `trace`.

    Records (B = len(request.prompts) x request.batch_size): `encode/prompt_embeds` (B, L, D), each prompt's
    hidden_states[-2] at its real tokens, zero-padded to the longest, and `encode/prompt_embeds_mask` (B, L) int64,
    the same with `negative_` under CFG; `timesteps/sigmas` (N + 1) and `timesteps/timesteps` (N), float32;
    `latents/initial` and per step `denoise/transformer_output` (`_uncond` under CFG: the second half of the one
    DiT call), `denoise/noise_pred` (the negated, guided float32 prediction the scheduler steps with) and
    `denoise/latents`, all (B, 16, h, w) (latents float32); `decode/latents` (B, 16, h, w), `z / scaling_factor +
    shift_factor`, and `decode/image` (B, 3, H, W).

    RNG recipe: `g = torch.Generator("cpu").manual_seed(request.seed)`; one draw `torch.randn((B, 16, h, w),
    generator=g, dtype=torch.float32)` whatever the model dtype; nothing else is random. With `force_from` the run
    is teacher-forced from that trace (calibration).
    """
    check_pipeline_class(checkpoint, PIPELINE_CLASS, "Z-Image")
    check_zimage_request(request)
    guidance_scale = zimage_guidance_scale(request)

    def forcer(pipe: ZImagePipeline, baseline: Trace) -> _ZImageForcer:
        return _ZImageForcer(pipe, baseline, repeats=request.batch_size)

    run_reference_pipeline(
        ZImagePipeline, checkpoint, request, trace, recorder=_ZImageRecorder, forcer=forcer,  # type: ignore[arg-type]
        call_kwargs=lambda pipe: zimage_pipeline_kwargs(request), progress=progress, force_from=force_from,
        meta={"zimage_guidance_scale": guidance_scale},
    )
