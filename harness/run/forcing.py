"""Teacher forcing: run native stages from the reference's inputs, so each error is charged where it is made.

Stage level: the denoising stage gets the reference's prompt embeddings (per encoder, in the config's
`text_encoders` order, read from the reference trace under each encoder's `trace_field`, with the real-token mask
under `mask_field` for the encoders that keep one), its sigma and
timestep schedule (installed into the native scheduler) and its initial latents, and, for image-conditioned
pipelines, its image tokens (`encode/image_embeds`) and conditioning channels (`latents/mask` and
`latents/condition`, joined by the config's `join_condition`); the decoding stage gets the reference's final
latents (and takes the free run's image when the free run handed its VAE the same latents: `free_decode_of`).
Step level: denoising step i starts from the reference's latents after step i-1
(the initial latents for step 0), so its records are the local error of that one step. A multistep scheduler
(one with `warm_start`, e.g. Wan's UniPC) also starts step i from the reference's history: its state is rebuilt
from the reference's guided noise predictions and latents of steps 0..i-1.

The forced run calls the pipeline's own stage objects (`DenoisingStage.prepare` / `denoise_step`, the
`DecodingStage`), the same code as the free run, and records into its own trace. Encode, timesteps and
latents are not re-run: they take no input from an earlier native stage, so their free records are local.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

import torch

from harness.trace.keys import RecordKey
from harness.trace.memory import Trace
from native_models.configs import TextEncoderSpec
from native_models.pipeline import ComposedPipeline
from native_models.req import Req
from native_models.stages.decoding import DecodingStage
from native_models.stages.denoising import DenoisingStage

FORCED_STAGES = ("denoise", "decode")
S = TypeVar("S")


class ForcingError(Exception):
    """The reference trace lacks what forcing needs, or the native pipeline cannot be forced."""


def find_stage(pipeline: ComposedPipeline, kind: type[S]) -> S:
    """The pipeline's one stage of class `kind` (or a subclass of it)."""
    found = [stage for _, stage in pipeline.stages if isinstance(stage, kind)]
    if len(found) != 1:
        raise ForcingError(f"{type(pipeline).__name__} has {len(found)} {kind.__name__} stages, expected 1")
    return found[0]


def unsupported_reason(pipeline: ComposedPipeline) -> str | None:
    """Why `pipeline` cannot be teacher-forced (None when it can): forcing needs one denoising and one decoding
    stage, and a scheduler that installs a given schedule (a multistep scheduler also rebuilds its history from
    the reference with `warm_start`, see `run_forced`)."""
    for kind in (DenoisingStage, DecodingStage):
        count = sum(isinstance(stage, kind) for _, stage in pipeline.stages)
        if count != 1:
            return f"{type(pipeline).__name__} has {count} {kind.__name__} stages, forcing needs 1"
    scheduler = find_stage(pipeline, DenoisingStage).scheduler
    if not callable(getattr(scheduler, "set_schedule", None)):
        return f"scheduler {type(scheduler).__name__} cannot install a given schedule (no set_schedule)"
    return None


def _need(reference: Trace, key: RecordKey) -> torch.Tensor:
    tensor = reference.get(key)
    if tensor is None:
        raise ForcingError(f"the reference trace has no record {key.name()}, which forcing feeds to the native side")
    return tensor


def forced_batch(pipeline: ComposedPipeline, template: Req, reference: Trace) -> Req:
    """A fresh batch holding the reference's inputs to denoising: embeddings, schedule, initial latents.

    The reference's schedule is installed into the native scheduler too (`set_schedule`), since the
    scheduler's step reads its own sigmas.
    """
    dtype, device = template.dtype, template.device
    latent_dtype = pipeline.config.latent_dtype(template)

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=device, dtype=dtype)

    def mask(spec: TextEncoderSpec, prefix: str) -> torch.Tensor | None:  # the real-token mask, kept integer
        if spec.mask_field is None:
            return None
        return _need(reference, RecordKey("encode", f"{prefix}{spec.mask_field}")).to(device=device)

    specs = pipeline.config.text_encoders
    batch = replace(template, extra={}, recorder=None, output=None)
    batch.prompt_embeds = [cast(_need(reference, RecordKey("encode", spec.trace_field))) for spec in specs]
    batch.prompt_masks = [mask(spec, "") for spec in specs]
    if batch.do_true_cfg:
        batch.negative_prompt_embeds = [
            cast(_need(reference, RecordKey("encode", f"negative_{spec.trace_field}"))) for spec in specs
        ]
        batch.negative_prompt_masks = [mask(spec, "negative_") for spec in specs]
    image_embeds = reference.get(RecordKey("encode", "image_embeds"))
    if image_embeds is not None:
        batch.image_embeds = cast(image_embeds)
    condition = reference.get(RecordKey("latents", "condition"))
    if condition is not None:
        condition_mask = _need(reference, RecordKey("latents", "mask"))
        joined = pipeline.config.join_condition(condition_mask, condition)
        batch.condition = joined.to(device=device, dtype=latent_dtype)
    initial = _need(reference, RecordKey("latents", "initial"))
    batch.raw_latent_shape = tuple(initial.shape)
    batch.latents = pipeline.config.pack_latents(initial.to(device=device, dtype=latent_dtype))
    sigmas = _need(reference, RecordKey("timesteps", "sigmas")).to(device=device, dtype=torch.float32)
    timesteps = _need(reference, RecordKey("timesteps", "timesteps")).to(device=device)  # the scheduler's dtype
    reason = unsupported_reason(pipeline)
    if reason is not None:
        raise ForcingError(reason)
    scheduler = find_stage(pipeline, DenoisingStage).scheduler
    try:
        scheduler.set_schedule(sigmas, timesteps)
    except ValueError as exc:
        raise ForcingError(f"reference schedule rejected by the native scheduler: {exc}") from None
    batch.sigmas = [float(s) for s in sigmas[:-1].tolist()]
    batch.timesteps = scheduler.timesteps
    batch.num_inference_steps = int(timesteps.shape[0])
    return batch


def run_forced(pipeline: ComposedPipeline, template: Req, reference: Trace, forced: Trace,
               free: Trace | None = None) -> None:
    """Run the forced denoising steps and the forced decode of `pipeline`, recording into `forced`.

    `template` is the request batch before any stage ran (as planned); it is copied, not changed. `free` is the
    same pipeline's free run: when it handed its VAE the forced decode's input bit for bit, the VAE's output is
    taken from it instead of decoding the same latents again (`free_decode_of`).
    """
    denoiser = find_stage(pipeline, DenoisingStage)
    decoder = find_stage(pipeline, DecodingStage)
    batch = forced_batch(pipeline, template, reference)
    batch.recorder = forced
    denoiser.check_inputs(batch)
    inputs = denoiser.prepare(batch)
    assert batch.timesteps is not None and batch.raw_latent_shape is not None  # set by forced_batch
    shape = batch.raw_latent_shape
    latent_dtype = pipeline.config.latent_dtype(batch)
    warm_start = getattr(denoiser.scheduler, "warm_start", None)  # multistep schedulers: rebuild the history
    latents_in = batch.latents
    history: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])  # reference noise_pred, latents in, per step
    last = None
    for step, t in enumerate(batch.timesteps):
        if step > 0:
            previous = _need(reference, RecordKey("denoise", "latents", step - 1))
            latents_in = pipeline.config.pack_latents(previous.to(device=batch.device, dtype=latent_dtype))
        if warm_start is not None:
            warm_start(*history)
        denoiser.denoise_step(inputs, batch, step, t, latents_in)
        if warm_start is not None:
            noise_pred = _need(reference, RecordKey("denoise", "noise_pred", step))
            history[0].append(pipeline.config.pack_latents(noise_pred.to(device=batch.device, dtype=batch.dtype)))
            history[1].append(latents_in)
        last = step
    if last is None:
        raise ForcingError("the reference schedule has no denoising steps")
    final = _need(reference, RecordKey("denoise", "latents", last))
    if tuple(final.shape) != shape:
        raise ForcingError(f"reference final latents {tuple(final.shape)} differ from its initial latents {shape}")
    batch.latents = pipeline.config.pack_latents(final.to(device=batch.device, dtype=latent_dtype))
    decoder.check_inputs(batch)
    latents = decoder.vae_input(batch)
    image = None if free is None else free_decode_of(free, latents)
    if image is None:
        decoder.decode(batch, latents)
    else:
        batch.record(decoder.trace_stage, "image", image)


def free_decode_of(free: Trace, latents: torch.Tensor) -> torch.Tensor | None:
    """The free run's decoded image when its VAE input was `latents` bit for bit (the VAE keeps no state between
    calls, so decoding them again gives the same image), else None. A fp32 run that matches its reference
    exactly skips its second VAE decode this way."""
    own = free.get(RecordKey("decode", "latents"))
    image = free.get(RecordKey("decode", "image"))
    if own is None or image is None or own.dtype != latents.dtype or own.shape != latents.shape:
        return None
    return image if torch.equal(own, latents.detach().cpu()) else None
