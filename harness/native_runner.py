"""Runs the native pipeline for a `GenerationRequest`, recording into a trace, and frees it afterwards.

One load serves both native runs of a parity check: the free run, then (given the reference trace) the
teacher-forced run (harness/forcing.py). `plan_native_run` validates everything that can be checked without
loading weights (configs, component classes, safetensors headers), so a bad checkpoint is a one-line error
before the reference side, which runs first, touches it.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from harness.forcing import run_forced, unsupported_reason
from harness.request import GenerationRequest
from harness.trace import Trace
from native_models.attention import get_attention_backend
from native_models.components import MODEL_CLASSES, is_known_class
from native_models.configs import PipelineConfig
from native_models.errors import CheckpointError
from native_models.loader import read_json, read_model_index
from native_models.pipeline import ComposedPipeline, pipeline_class_for
from native_models.registry import get_configs
from native_models.req import Req

SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # the safetensors format's own cap on the JSON header

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class NativePlan:
    """What a native run will use, decided from config files alone (before any weights load)."""

    pipeline_cls: type[ComposedPipeline]
    config: PipelineConfig
    batch: Req


def plan_native_run(checkpoint: Path, request: GenerationRequest, model_name: str | None = None) -> NativePlan:
    """Resolve pipeline class and config, and validate the request against the model's static facts.

    Raises CheckpointError / RequestError with one-line messages; reads only JSON and safetensors headers.
    """
    pipeline_cls = pipeline_class_for(checkpoint)
    check_components(checkpoint, pipeline_cls)
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


def check_components(checkpoint: Path, pipeline_cls: type[ComposedPipeline]) -> None:
    """Every component class in model_index.json is known, the required ones are present, and each model
    component's safetensors files are complete (headers only, no tensor data read)."""
    components = read_model_index(checkpoint)
    for name, (_, class_name) in components.items():
        if not is_known_class(class_name):
            raise CheckpointError(f"model_index.json names unknown class '{class_name}' for component '{name}'")
    missing = [name for name in pipeline_cls._required_config_modules if name not in components]
    if missing:
        raise CheckpointError(f"{checkpoint / 'model_index.json'} lacks required component(s) {', '.join(missing)}")
    for name in pipeline_cls._required_config_modules:
        if components[name][1] in MODEL_CLASSES:
            for file in weight_files(checkpoint / name):
                check_safetensors_header(file)


def weight_files(component_dir: Path) -> list[Path]:
    """The safetensors files of a component: one file, or the shards its index names."""
    index_files = sorted(component_dir.glob("*.safetensors.index.json"))
    if index_files:
        weight_map = read_json(index_files[0]).get("weight_map", {})
        files = sorted({component_dir / shard for shard in weight_map.values()})
    else:
        files = sorted(component_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors weights in {component_dir}")
    return files


def check_safetensors_header(file: Path) -> None:
    """Raise CheckpointError unless `file` has a parseable header whose tensors fill exactly its data bytes.

    A truncated download fails here with the same words as the loader ('is not a readable safetensors file').
    """
    def bad(reason: str) -> CheckpointError:
        return CheckpointError(f"{file} is not a readable safetensors file ({reason})")

    if not file.is_file():
        raise CheckpointError(f"missing weight shard: {file}")
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise bad(f"{size} bytes, shorter than the 8-byte header length")
            header_len = int.from_bytes(prefix, "little")
            if header_len > min(SAFETENSORS_HEADER_LIMIT, size - 8):
                raise bad(f"header length {header_len} exceeds the file's {size - 8} remaining bytes")
            header = json.loads(handle.read(header_len))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_len = size - 8 - header_len
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise bad(f"tensor '{name}' has no valid data_offsets")
        end = max(end, offsets[1])
    if end != data_len:
        raise bad(f"header declares {end} bytes of tensor data, the file holds {data_len}")


def run_native(
    checkpoint: Path,
    request: GenerationRequest,
    trace: Trace,
    progress: Callable[[int, int], None] | None = None,
    plan: NativePlan | None = None,
    mutate: Callable[[ComposedPipeline], None] | None = None,
    reference: Trace | None = None,
    forced_trace: Trace | None = None,
) -> torch.Tensor:
    """Run the native pipeline, recording every stage into `trace`; returns frames (B, C, H, W) in [0, 1].

    With `reference` and `forced_trace`, the same loaded pipeline then runs teacher-forced from the
    reference's inputs (harness/forcing.py), recording into `forced_trace` (or, for a pipeline that cannot be
    forced, only `forced_trace.meta["forcing_skipped"]`, the reason). `mutate` is applied to the built
    pipeline before it runs: the hook the fault tests use to break one component on purpose without editing
    its source; it applies to both runs.
    """
    if (reference is None) != (forced_trace is None):
        raise ValueError("run_native needs both `reference` and `forced_trace` for a forced run, or neither")
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
    batch = replace(plan.batch, extra={}, recorder=trace)  # the plan's batch stays untouched for the forced run
    if progress is not None:
        batch.extra["progress"] = progress
    try:
        batch = pipeline.forward(batch)
        assert batch.output is not None
        frames = batch.output.detach().to("cpu", torch.float32)
        if reference is not None and forced_trace is not None:
            forced_trace.meta.update(trace.meta, side="native-forced")
            reason = unsupported_reason(pipeline)
            if reason is None:
                run_forced(pipeline, plan.batch, reference, forced_trace)
            else:  # the parity run goes on without forcing and says why (report["forcing_skipped"])
                forced_trace.meta["forcing_skipped"] = reason
        return frames
    finally:
        del pipeline
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
