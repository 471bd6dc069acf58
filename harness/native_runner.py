"""Runs the native pipeline for a `GenerationRequest`, recording into a trace, and frees it afterwards."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.request import GenerationRequest
from harness.trace import Trace
from native_models.attention import get_attention_backend
from native_models.configs import PipelineConfig
from native_models.pipeline import ComposedPipeline, pipeline_class_for
from native_models.registry import get_configs
from native_models.req import Req

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class NativePlan:
    """What a native run will use, decided from config files alone (before any weights load)."""

    pipeline_cls: type[ComposedPipeline]
    config: PipelineConfig
    batch: Req


def plan_native_run(checkpoint: Path, request: GenerationRequest, model_name: str | None = None) -> NativePlan:
    """Resolve pipeline class and config, and validate the request against the model's static facts.

    Raises CheckpointError / RequestError with one-line messages; reads only JSON.
    """
    pipeline_cls = pipeline_class_for(checkpoint)
    entry = get_configs(model_name or str(checkpoint), pipeline_cls.pipeline_name)
    config = entry.pipeline_config_cls()
    pipeline_cls.configure(config, checkpoint)
    params = entry.sampling_param_cls().updated(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed,
        num_inference_steps=request.steps,
        height=request.height,
        width=request.width,
        guidance_scale=request.guidance_scale,
        true_cfg_scale=request.true_cfg_scale,
        max_sequence_length=request.max_sequence_length,
    )
    batch = Req(
        prompt=[params.prompt],
        negative_prompt=[params.negative_prompt] if params.negative_prompt is not None else None,
        height=params.height,
        width=params.width,
        num_inference_steps=params.num_inference_steps,
        seed=params.seed,
        guidance_scale=params.guidance_scale,
        true_cfg_scale=params.true_cfg_scale,
        max_sequence_length=params.max_sequence_length,
        dtype=DTYPES[request.dtype],
        device=torch.device(request.device),
    )
    config.check_request(batch)
    return NativePlan(pipeline_cls, config, batch)


def run_native(
    checkpoint: Path,
    request: GenerationRequest,
    trace: Trace,
    progress: Callable[[int, int], None] | None = None,
    plan: NativePlan | None = None,
    mutate: Callable[[ComposedPipeline], None] | None = None,
) -> torch.Tensor:
    """Run the native pipeline, recording every stage into `trace`; returns frames (B, C, H, W) in [0, 1].

    `mutate` is applied to the built pipeline before it runs: the hook the fault tests use to break one
    component on purpose without editing its source.
    """
    plan = plan or plan_native_run(checkpoint, request)
    trace.meta.update(
        side="native",
        pipeline_class=plan.pipeline_cls.__name__,
        attention_backend=get_attention_backend(),
        dtype=request.dtype,
        device=request.device,
    )
    pipeline = plan.pipeline_cls(checkpoint, plan.config, dtype=plan.batch.dtype, device=plan.batch.device)
    if mutate is not None:
        mutate(pipeline)
    batch = plan.batch
    batch.recorder = trace
    if progress is not None:
        batch.extra["progress"] = progress
    try:
        batch = pipeline.forward(batch)
        assert batch.output is not None
        return batch.output.detach().to("cpu", torch.float32)
    finally:
        del pipeline
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
