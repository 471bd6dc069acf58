"""Runs Diffusers' FluxPipeline unmodified and records every intermediate into a Trace.

Only instance-level wrappers and forward hooks are used (nothing in diffusers is patched), so the recorded
numbers are exactly what a user of Diffusers gets. Spatial tensors are recorded in the canonical (B, C, H, W)
layout, unpacked from FLUX's (B, tokens, 4*C) packing with the pipeline's own rule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxPipeline

from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from references.common.instance_hooks import PipelineForcer, PipelineRecorder
from references.common.reference_pipeline import (
    check_pipeline_class,
    check_single_prompt,
    make_generator,
    quiet_libraries,
    run_reference_pipeline,
    torch_dtype,
)

# make_generator, quiet_libraries and torch_dtype live in reference_pipeline; scripts and tests import them from here
__all__ = [
    "flux_pipeline_kwargs", "make_generator", "quiet_libraries", "run_flux_reference", "torch_dtype",
    "unpack_flux_latents",
]


def unpack_flux_latents(packed: torch.Tensor, height: int, width: int, vae_scale_factor: int) -> torch.Tensor:
    """(B, (h/2)*(w/2), 4*C) packed tokens -> (B, C, h, w), h = 2*(height // (2*vae_scale_factor)).

    Same arithmetic as `FluxPipeline._unpack_latents`: each token holds a 2x2 patch, channel-major (c, dy, dx).
    """
    if packed.ndim != 3 or packed.shape[-1] % 4:
        raise ValueError(f"expected packed latents (B, tokens, 4*C), got shape {tuple(packed.shape)}")
    batch, tokens, channels = packed.shape
    h = 2 * (int(height) // (vae_scale_factor * 2))
    w = 2 * (int(width) // (vae_scale_factor * 2))
    if tokens != (h // 2) * (w // 2):
        raise ValueError(f"{tokens} packed tokens do not match a {height}x{width} image ({h // 2}x{w // 2} patches)")
    x = packed.view(batch, h // 2, w // 2, channels // 4, 2, 2)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels // 4, h, w)


def flux_pipeline_kwargs(request: GenerationRequest) -> dict[str, Any]:
    """FluxPipeline's arguments for `request` (output_type and return_dict aside): one mapping for every caller
    that must generate exactly as the reference run does (scripts/evaluate_digits.py)."""
    return {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "true_cfg_scale": request.true_cfg_scale,
        "guidance_scale": request.guidance_scale,
        "height": request.height,
        "width": request.width,
        "num_inference_steps": request.steps,
        "max_sequence_length": request.max_sequence_length,
        "generator": make_generator(request),
        "num_images_per_prompt": request.batch_size,
    }


class _FluxRecorder(PipelineRecorder):
    """The shared recorder, with FLUX's packed loop latents unpacked to (B, C, H, W) and both encode calls."""

    def canonical(self, latents: torch.Tensor) -> torch.Tensor:
        return unpack_flux_latents(latents, self.request.height, self.request.width, self.pipe.vae_scale_factor)

    def _after_encode(self, args: tuple, kwargs: dict, result: tuple) -> None:
        if self.encode_calls > 1:
            raise RuntimeError("encode_prompt was called more than twice; the runner expects prompt + negative")
        prompt_embeds, pooled_prompt_embeds, _text_ids = result
        prefix = "" if self.encode_calls == 0 else "negative_"
        self.trace.record("encode", f"{prefix}pooled_prompt_embeds", pooled_prompt_embeds)
        self.trace.record("encode", f"{prefix}prompt_embeds", prompt_embeds)
        self.encode_calls += 1

    def _after_prepare_latents(self, args: tuple, kwargs: dict, result: tuple) -> None:
        latents, _image_ids = result
        self.trace.record("latents", "initial", self.canonical(latents))


class _FluxForcer(PipelineForcer):
    """Teacher forcing of the reference from another reference trace (`baseline`), for calibrating local floors.

    Instance wrappers only: the encode_prompt result is replaced by the baseline's embeddings, every DiT call
    and scheduler step of step i starts from the baseline's latents after step i-1 (the initial latents for
    step 0), and the VAE decodes the baseline's decode input. Installed after `_FluxRecorder`, so the recorder
    sees the forced inputs. Under the same settings the forced run reproduces the baseline bit for bit.
    """

    def __init__(self, pipe: FluxPipeline, baseline: Trace) -> None:
        super().__init__(pipe, baseline)
        self.encode_calls = 0

    def _latents_in(self, like: torch.Tensor) -> torch.Tensor:
        """The baseline's latents entering the current step, packed like the pipeline's."""
        spatial = self._baseline_latents(self.step)
        b, c, h, w = spatial.shape
        return self.pipe._pack_latents(spatial, b, c, h, w).to(device=like.device, dtype=like.dtype)

    def _encode(self, original: Any, args: tuple, kwargs: dict) -> Any:
        prompt_embeds, pooled, text_ids = original(*args, **kwargs)
        prefix = "" if self.encode_calls == 0 else "negative_"
        self.encode_calls += 1
        return (self._tensor("encode", f"{prefix}prompt_embeds", like=prompt_embeds),
                self._tensor("encode", f"{prefix}pooled_prompt_embeds", like=pooled), text_ids)

    def _before_transformer(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["hidden_states"] = self._latents_in(kwargs["hidden_states"])
        return args, kwargs


def _fp64_start_latents(pipe: FluxPipeline, request: GenerationRequest) -> torch.Tensor | None:
    """For a float64 run, the fp32 run's packed initial noise upcast (randn draws other numbers in float64)."""
    if torch_dtype(request.dtype) != torch.float64:
        return None
    channels = pipe.transformer.config.in_channels // 4
    latents, _ = pipe.prepare_latents(request.batch_size, channels, request.height, request.width,
                                      torch.float32, torch.device(request.device), make_generator(request))
    return latents.to(torch.float64)


def run_flux_reference(
    checkpoint: Path,
    request: GenerationRequest,
    trace: Trace,
    progress: Callable[[int, int], None] | None = None,
    force_from: Trace | None = None,
    probe: Any = None,
) -> None:
    """Run Diffusers' FluxPipeline for `request` and record every stage into `trace`.

    RNG recipe (what a native implementation must reproduce for identical initial noise): one generator,
    `g = torch.Generator("cpu").manual_seed(request.seed)` on every device (see `make_generator`); then a
    single draw
    `torch.randn((B, C, 2*(H//(2*s)), 2*(W//(2*s))), generator=g, device=g.device, dtype=dtype).to(request.device)`
    where B = request.batch_size (Diffusers' num_images_per_prompt: one draw for the whole batch from one
    generator), C = transformer.config.in_channels // 4 (16), s = 2**(len(vae.config.block_out_channels) - 1)
    (8 for FLUX), H, W = request.height, request.width, and dtype the pipeline dtype (fp32 or bf16: the draw itself is
    made in that dtype, not drawn in fp32 and cast). The noise is drawn spatial (B, C, h, w) and packed
    afterwards; `latents/initial` records it in that spatial layout. No other random numbers are drawn
    (FlowMatchEulerDiscreteScheduler.step is deterministic without stochastic_sampling).

    With `force_from` (another reference trace of the same request), the run is teacher-forced from it
    (`_FluxForcer`): harness/golden/calibrate.py measures local floors this way.

    After the run the pipeline is deleted and, on CUDA, the cache is emptied so the native side can load.
    """
    check_pipeline_class(checkpoint, "FluxPipeline", "FLUX")
    check_single_prompt(request, "FLUX")
    run_reference_pipeline(
        FluxPipeline, checkpoint, request, trace, recorder=_FluxRecorder, forcer=_FluxForcer,
        call_kwargs=lambda pipe: flux_pipeline_kwargs(request) | {"latents": _fp64_start_latents(pipe, request)},
        progress=progress, force_from=force_from, probe=probe,
    )
