"""Runs Diffusers' FluxPipeline unmodified and records every intermediate into a Trace.

Only instance-level wrappers and forward hooks are used (nothing in diffusers is patched), so the recorded
numbers are exactly what a user of Diffusers gets. Spatial tensors are recorded in the canonical (B, C, H, W)
layout, unpacked from FLUX's (B, tokens, 4*C) packing with the pipeline's own rule.
"""

from __future__ import annotations

import functools
import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import FluxPipeline

from harness.request import GenerationRequest
from harness.trace import Trace
from references.instance_hooks import InstanceHooks, baseline_tensor, decode_baseline_latents

# fp64 serves calibration only (harness/calibrate.py): the reference in float64 from the fp32 run's noise.
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


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


def torch_dtype(name: str) -> torch.dtype:
    if name not in TORCH_DTYPES:
        raise ValueError(f"unsupported dtype '{name}'; choose one of {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]


def make_generator(request: GenerationRequest) -> torch.Generator:
    """The generator the reference passes to the pipeline: always a CPU generator.

    Diffusers' `randn_tensor` then draws on the CPU and moves the noise to the run's device, so the initial
    noise is the same on every device (a CPU golden and a GPU run start alike); the native side does the same.
    """
    return torch.Generator("cpu").manual_seed(request.seed)


def quiet_libraries() -> None:
    """Keep Diffusers' and transformers' loading bars and advisories off the terminal: the harness reports."""
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _check_pipeline_class(checkpoint: Path) -> str:
    index = Path(checkpoint) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a Diffusers pipeline folder (no model_index.json)")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name != "FluxPipeline":
        raise ValueError(f"{checkpoint} holds a {class_name}, but the FLUX reference runner needs a FluxPipeline")
    return class_name


class _FluxRecorder:
    """Instance-level hooks on one pipeline that write each intermediate into the trace as it is produced."""

    def __init__(
        self,
        pipe: FluxPipeline,
        request: GenerationRequest,
        trace: Trace,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.pipe = pipe
        self.progress = progress
        self.request = request
        self.trace = trace
        self.step = 0
        self.calls_in_step = 0
        self.encode_calls = 0
        self._hooks = InstanceHooks()

    def _unpack(self, packed: torch.Tensor) -> torch.Tensor:
        return unpack_flux_latents(packed, self.request.height, self.request.width, self.pipe.vae_scale_factor)

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
        if self.encode_calls > 1:
            raise RuntimeError("encode_prompt was called more than twice; the runner expects prompt + negative")
        prompt_embeds, pooled_prompt_embeds, _text_ids = result
        prefix = "" if self.encode_calls == 0 else "negative_"
        self.trace.record("encode", f"{prefix}pooled_prompt_embeds", pooled_prompt_embeds)
        self.trace.record("encode", f"{prefix}prompt_embeds", prompt_embeds)
        self.encode_calls += 1

    def _after_set_timesteps(self, args: tuple, kwargs: dict, result: None) -> None:
        scheduler = self.pipe.scheduler
        self.trace.record("timesteps", "sigmas", scheduler.sigmas)
        self.trace.record("timesteps", "timesteps", scheduler.timesteps)

    def _after_prepare_latents(self, args: tuple, kwargs: dict, result: tuple) -> None:
        latents, _image_ids = result
        self.trace.record("latents", "initial", self._unpack(latents))

    def _after_transformer(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        sample = output[0] if isinstance(output, tuple) else output.sample
        if self.calls_in_step >= 2:
            raise RuntimeError(f"transformer ran {self.calls_in_step + 1} times in step {self.step}; expected <= 2")
        field = "transformer_output" if self.calls_in_step == 0 else "transformer_output_uncond"
        self.trace.record("denoise", field, self._unpack(sample), step=self.step)
        self.calls_in_step += 1

    def _after_scheduler_step(self, args: tuple, kwargs: dict, result: Any) -> None:
        model_output = args[0] if args else kwargs["model_output"]
        prev_sample = result[0] if isinstance(result, tuple) else result.prev_sample
        self.trace.record("denoise", "noise_pred", self._unpack(model_output), step=self.step)
        self.trace.record("denoise", "latents", self._unpack(prev_sample), step=self.step)
        self.step += 1
        self.calls_in_step = 0
        if self.progress is not None:
            self.progress(self.step, self.request.steps)

    def _after_vae_decode(self, args: tuple, kwargs: dict, result: Any) -> None:
        latents = args[0] if args else kwargs["z"]
        image = result[0] if isinstance(result, tuple) else result.sample
        self.trace.record("decode", "latents", latents)
        self.trace.record("decode", "image", image)


class _FluxForcer:
    """Teacher forcing of the reference from another reference trace (`baseline`), for calibrating local floors.

    Instance wrappers only: the encode_prompt result is replaced by the baseline's embeddings, every DiT call
    and scheduler step of step i starts from the baseline's latents after step i-1 (the initial latents for
    step 0), and the VAE decodes the baseline's decode input. Installed after `_FluxRecorder`, so the recorder
    sees the forced inputs. Under the same settings the forced run reproduces the baseline bit for bit.
    """

    def __init__(self, pipe: FluxPipeline, request: GenerationRequest, baseline: Trace) -> None:
        self.pipe = pipe
        self.request = request
        self.baseline = baseline
        self.step = 0
        self.encode_calls = 0
        self._hooks = InstanceHooks()

    def _tensor(self, stage: str, field: str, step: int | None = None, like: torch.Tensor | None = None) -> Any:
        return baseline_tensor(self.baseline, stage, field, step, like)

    def _latents_in(self, like: torch.Tensor) -> torch.Tensor:
        """The baseline's latents entering the current step, packed like the pipeline's."""
        spatial = (self._tensor("latents", "initial") if self.step == 0
                   else self._tensor("denoise", "latents", self.step - 1))
        b, c, h, w = spatial.shape
        return self.pipe._pack_latents(spatial, b, c, h, w).to(device=like.device, dtype=like.dtype)

    def install(self) -> None:
        pipe, hooks = self.pipe, self._hooks
        hooks.around(pipe, "encode_prompt", self._encode)
        hooks.around(pipe.scheduler, "step", self._scheduler_step)
        hooks.around(pipe.vae, "decode", functools.partial(decode_baseline_latents, self.baseline))
        hooks.handle(pipe.transformer.register_forward_pre_hook(self._before_transformer, with_kwargs=True))

    def remove(self) -> None:
        self._hooks.remove()

    def _encode(self, original: Any, args: tuple, kwargs: dict) -> Any:
        prompt_embeds, pooled, text_ids = original(*args, **kwargs)
        prefix = "" if self.encode_calls == 0 else "negative_"
        self.encode_calls += 1
        return (self._tensor("encode", f"{prefix}prompt_embeds", like=prompt_embeds),
                self._tensor("encode", f"{prefix}pooled_prompt_embeds", like=pooled), text_ids)

    def _before_transformer(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["hidden_states"] = self._latents_in(kwargs["hidden_states"])
        return args, kwargs

    def _scheduler_step(self, original: Any, args: tuple, kwargs: dict) -> Any:
        if len(args) >= 3:
            args = (*args[:2], self._latents_in(args[2]), *args[3:])
        else:
            kwargs["sample"] = self._latents_in(kwargs["sample"])
        result = original(*args, **kwargs)
        self.step += 1
        return result


def run_flux_reference(
    checkpoint: Path,
    request: GenerationRequest,
    trace: Trace,
    progress: Callable[[int, int], None] | None = None,
    force_from: Trace | None = None,
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
    (`_FluxForcer`): harness/calibrate.py measures local floors this way.

    After the run the pipeline is deleted and, on CUDA, the cache is emptied so the native side can load.
    """
    _check_pipeline_class(checkpoint)
    dtype = torch_dtype(request.dtype)
    device = torch.device(request.device)
    quiet_libraries()
    pipe = FluxPipeline.from_pretrained(str(checkpoint), dtype=dtype, use_safetensors=True)  # never a pickle
    recorder = forcer = None
    try:
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        latents = None
        if dtype == torch.float64:  # randn draws other numbers in float64: start from the fp32 draw, upcast
            channels = pipe.transformer.config.in_channels // 4
            latents, _ = pipe.prepare_latents(request.batch_size, channels, request.height, request.width,
                                              torch.float32, device, make_generator(request))
            latents = latents.to(torch.float64)
        recorder = _FluxRecorder(pipe, request, trace, progress)
        recorder.install()
        if force_from is not None:
            forcer = _FluxForcer(pipe, request, force_from)
            forcer.install()
        pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            true_cfg_scale=request.true_cfg_scale,
            guidance_scale=request.guidance_scale,
            height=request.height,
            width=request.width,
            num_inference_steps=request.steps,
            max_sequence_length=request.max_sequence_length,
            generator=make_generator(request),
            num_images_per_prompt=request.batch_size,
            latents=latents,
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
