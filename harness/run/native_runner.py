"""Runs the native pipeline for a `GenerationRequest`, recording into a trace, and frees it afterwards.

One load serves both native runs of a parity check: the free run, then (given the reference trace) the
teacher-forced run (harness/run/forcing.py). `plan_native_run` validates everything that can be checked without
loading weights (configs, component classes, safetensors headers), so a bad checkpoint is a one-line error
before the reference side, which runs first, touches it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from harness.release import collect_if_held
from harness.run.forcing import run_forced, unsupported_reason
from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from native_models.attention import check_attention_selection, get_attention_backend
from native_models.components import (
    MODEL_CLASSES,
    PROCESSOR_CLASSES,
    SCHEDULER_CLASSES,
    TOKENIZER_CLASSES,
    is_known_class,
    load_processor,
    load_scheduler,
    load_tokenizer,
    model_class,
)
from native_models.configs import PipelineConfig
from native_models.errors import CheckpointError, RequestError
from native_models.loader import check_component, read_json, read_model_index
from native_models.parallel.mesh import SINGLE, ParallelMesh
from native_models.pipeline import ComposedPipeline, pipeline_class_for
from native_models.registry import get_configs
from native_models.req import Req
from native_models.safetensors_header import FLOAT_WEIGHT_DTYPES, read_safetensors_header

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LIBRARIES = ("diffusers", "transformers")  # where a checkpoint's components may come from (model_index.json)


@dataclass
class NativePlan:
    """What a native run will use, decided from config files alone (before any weights load)."""

    pipeline_cls: type[ComposedPipeline]
    config: PipelineConfig
    batch: Req
    stored_dtypes: dict[str, list[str]] = field(default_factory=dict)  # component -> float dtypes of its weights


def plan_native_run(checkpoint: Path, request: GenerationRequest, model_name: str | None = None,
                    check_weights: bool = True) -> NativePlan:
    """Resolve pipeline class and config, and validate the request against the model's static facts.

    Raises CheckpointError / RequestError with one-line messages; reads only JSON and safetensors headers.
    `check_weights=False` skips checking every component's config and headers before anything loads (and leaves
    `stored_dtypes` empty): for a rank, whose launcher planned the same folder with the check a moment earlier;
    the loader still checks each component as it loads it.
    """
    check_attention_selection()  # DIFFPARITY_ATTENTION names a backend that can run here, or exit 2
    pipeline_cls = pipeline_class_for(checkpoint)
    stored_dtypes = check_components(checkpoint, pipeline_cls) if check_weights else {}
    entry = get_configs(model_name or str(checkpoint), pipeline_cls.pipeline_name)
    config = entry.pipeline_config_cls()
    pipeline_cls.configure(config, checkpoint)
    conditioning: dict[str, object] = {}  # fields only some families' sampling params have: given when set
    if request.true_cfg_scale_2 is not None:
        conditioning["true_cfg_scale_2"] = request.true_cfg_scale_2
    if request.image is not None:
        conditioning["image"] = request.image.to_pil()
    try:
        params = entry.sampling_param_cls().updated(**conditioning)
    except TypeError:  # the family's SamplingParams has no such field: the model cannot take it
        names = " and ".join({"true_cfg_scale_2": "second CFG scale (--true-cfg-2)", "image": "image (--image)"}[name]
                             for name in conditioning)
        raise RequestError(f"{pipeline_cls.pipeline_name} takes no {names}") from None
    params = params.updated(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed,
        num_inference_steps=request.steps,
        height=request.height,
        width=request.width,
        guidance_scale=request.guidance_scale,
        true_cfg_scale=request.true_cfg_scale,
        max_sequence_length=request.max_sequence_length,
        num_frames=request.frames,
    )
    prompts = [params.prompt, *request.extra_prompts]  # each prompt's images next to each other, as Diffusers
    batch = Req(
        prompt=[prompt for prompt in prompts for _ in range(request.batch_size)],
        negative_prompt=(None if params.negative_prompt is None
                         else [params.negative_prompt] * (request.batch_size * len(prompts))),
        height=params.height,
        width=params.width,
        num_inference_steps=params.num_inference_steps,
        seed=params.seed,
        guidance_scale=params.guidance_scale,
        true_cfg_scale=params.true_cfg_scale,
        max_sequence_length=params.max_sequence_length,
        num_frames=params.num_frames,
        image=getattr(params, "image", None),
        true_cfg_scale_2=getattr(params, "true_cfg_scale_2", None),
        dtype=DTYPES[request.dtype],
        device=torch.device(request.device),
    )
    config.check_request(batch)
    return NativePlan(pipeline_cls, config, batch, stored_dtypes)


def check_components(checkpoint: Path, pipeline_cls: type[ComposedPipeline]) -> dict[str, list[str]]:
    """Every component class in model_index.json is known and comes from diffusers or transformers, the required
    ones are present, each model component's config builds its native class within the size of its weights (on
    the meta device), its safetensors headers are sound and its tensors have the shapes that config needs, the
    scheduler config parses, an image processor's config reads and each tokenizer's files parse and load (no
    tensor data read). Optional components the checkpoint names (a second expert, an image encoder) are checked
    alike. Returns the float dtypes each model component's weights are stored in."""
    components = read_model_index(checkpoint)
    for name, (library, class_name) in components.items():
        if not is_known_class(class_name):
            raise CheckpointError(f"model_index.json names unknown class '{class_name}' for component '{name}'")
        if library not in LIBRARIES:  # Diffusers imports this name: never a path, never another package
            raise CheckpointError(f"{checkpoint / 'model_index.json'}: component '{name}' names library "
                                  f"{library[:80]!r}; a component comes from {' or '.join(LIBRARIES)}")
    missing = [name for name in pipeline_cls._required_config_modules if name not in components]
    if missing:
        raise CheckpointError(f"{checkpoint / 'model_index.json'} lacks required component(s) {', '.join(missing)}")
    stored: dict[str, list[str]] = {}
    optional = [name for name in pipeline_cls._optional_config_modules if name in components]
    for name in (*pipeline_cls._required_config_modules, *optional):
        class_name = components[name][1]
        if class_name in MODEL_CLASSES:
            sources = check_component(model_class(class_name), checkpoint / name)
            stored[name] = sorted({source.info.dtype for source in sources.values()
                                   if source.info.dtype in FLOAT_WEIGHT_DTYPES})
        elif class_name in SCHEDULER_CLASSES:
            load_scheduler(class_name, checkpoint / name)
        elif class_name in PROCESSOR_CLASSES:
            load_processor(class_name, checkpoint / name)
        elif class_name in TOKENIZER_CLASSES:
            check_tokenizer(checkpoint / name)
    return stored


def check_tokenizer(folder: Path) -> None:
    """A tokenizer folder's JSON files each hold an object (the file named when not), and the tokenizer loads
    (cached after the first load, native_models/tokenizer_cache.py): a corrupt tokenizer.json is refused here,
    not met as a TypeError inside the reference's tokenizer."""
    if not folder.is_dir():
        raise CheckpointError(f"missing tokenizer folder: {folder}")
    for file in sorted(folder.glob("*.json")):
        read_json(file)
    try:
        load_tokenizer(folder)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - the tokenizer libraries raise many types for a bad file
        raise CheckpointError(f"cannot load tokenizer from {folder} ({type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0][:200]})") from None


def check_safetensors_header(file: Path) -> None:
    """Raise CheckpointError unless `file` has a parseable header whose tensors fill exactly its data bytes.

    A truncated download fails here with the same words as the loader ('is not a readable safetensors file').
    """
    read_safetensors_header(file)


def run_native(
    checkpoint: Path,
    request: GenerationRequest,
    trace: Trace,
    progress: Callable[[int, int], None] | None = None,
    plan: NativePlan | None = None,
    mutate: Callable[[ComposedPipeline], None] | None = None,
    reference: Trace | None = None,
    forced_trace: Trace | None = None,
    mesh: ParallelMesh = SINGLE,
) -> torch.Tensor | None:
    """Run the native pipeline, recording every stage into `trace`; returns frames (B, C, H, W) in [0, 1]
    (None on a rank of `mesh` that does not decode: ComposedPipeline.add_decoding_stage).

    With `reference` and `forced_trace`, the same loaded pipeline then runs teacher-forced from the
    reference's inputs (harness/run/forcing.py), recording into `forced_trace` (or, for a pipeline that cannot be
    forced, only `forced_trace.meta["forcing_skipped"]`, the reason). `mutate` is applied to the built
    pipeline before it runs: the hook the fault tests use to break one component on purpose without editing
    its source; it applies to both runs. `mesh`: this rank's place when the pipeline runs on several ranks
    (harness/run/multirank.py launches them; the parallel components load sharded).
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
    pipeline = plan.pipeline_cls(checkpoint, plan.config, dtype=plan.batch.dtype, device=plan.batch.device,
                                 mesh=mesh)
    if mutate is not None:
        mutate(pipeline)
    batch = replace(plan.batch, extra={}, recorder=trace)  # the plan's batch stays untouched for the forced run
    if progress is not None:
        batch.extra["progress"] = progress
    try:
        batch = pipeline.forward(batch)
        frames = None if batch.output is None else batch.output.detach().to("cpu", torch.float32)
        if reference is not None and forced_trace is not None:
            forced_trace.meta.update(trace.meta, side="native-forced")
            reason = unsupported_reason(pipeline)
            if reason is None:
                run_forced(pipeline, plan.batch, reference, forced_trace, free=trace)
            else:  # the parity run goes on without forcing and says why (report["forcing_skipped"])
                forced_trace.meta["forcing_skipped"] = reason
        return frames
    finally:
        still_alive = weakref.ref(pipeline)
        del pipeline, batch
        collect_if_held([still_alive])  # freed before the reference side loads
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
