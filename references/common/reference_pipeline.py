"""Loading, running and releasing one Diffusers pipeline for a family reference runner.

Every family runner does the same around its own hooks: check the folder holds the expected pipeline class,
load it without pickles in the request's dtype, run it once with the recorder (and, for calibration, the forcer)
installed, stamp the trace's metadata, then remove the hooks and free the pipeline so the native side can load.
Only the family's hook classes and pipeline arguments differ; they are passed in.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

from harness.release import collect_if_held, release_freed_memory
from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from references.common.instance_hooks import PipelineForcer, PipelineRecorder

# fp64 serves calibration only (harness/golden/calibrate.py): the reference in float64 from the fp32 run's noise.
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


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


def check_pipeline_class(checkpoint: Path, expected: str, runner: str) -> None:
    """Refuse a folder that is not a Diffusers pipeline of class `expected` (`runner` names the family's runner)."""
    index = Path(checkpoint) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a Diffusers pipeline folder (no model_index.json)")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name != expected:
        raise ValueError(f"{checkpoint} holds a {class_name}, but the {runner} reference runner needs a {expected}")


def check_single_prompt(request: GenerationRequest, runner: str) -> None:
    """Refuse `extra_prompts` in a runner that passes Diffusers one prompt (its native side would encode more)."""
    if request.extra_prompts:
        raise ValueError(f"the {runner} reference runner takes one prompt per request, got "
                         f"{len(request.prompts)} (extra_prompts)")


def load_pipeline(pipeline_cls: Any, checkpoint: Path, dtype: torch.dtype) -> Any:
    """`pipeline_cls` from `checkpoint` in `dtype`, from safetensors only (never a pickle), with bars off."""
    quiet_libraries()
    pipe = pipeline_cls.from_pretrained(str(checkpoint), dtype=dtype, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Callbacks that see each reference pipeline once it is loaded and its arguments drawn, before any hook is
# installed: `diffparity bench` times the loaded pipeline's components, `--compile reference` compiles its DiT.
_PIPELINE_OBSERVERS: list[Callable[[Any, dict[str, Any]], None]] = []


@contextmanager
def observe_reference_pipelines(callback: Callable[[Any, dict[str, Any]], None]) -> Iterator[None]:
    """Within the block, `callback(pipe, call_kwargs)` runs for every reference pipeline `run_reference_pipeline`
    loads, after `pipe.to(device)` and before the recorded run. It may change the pipeline (compile a module) or
    use it and raise to end the run (the run's cleanup still happens)."""
    _PIPELINE_OBSERVERS.append(callback)
    try:
        yield
    finally:
        _PIPELINE_OBSERVERS.remove(callback)


def compile_pipeline_transformer(pipe: Any, settings: Any) -> None:
    """Regional compile of a loaded pipeline's DiT: Diffusers' own `compile_repeated_blocks` (what its users
    call) when the model declares its blocks, else native_models.compile's equivalent. `settings`: a
    native_models.compile.CompileSettings."""
    from native_models.compile import compile_repeated_blocks

    transformer = pipe.transformer
    if getattr(transformer, "_repeated_blocks", None) and hasattr(transformer, "compile_repeated_blocks"):
        transformer.compile_repeated_blocks(**settings.kwargs())
    else:
        compile_repeated_blocks(transformer, settings)


def _release_cycles(pipe: Any) -> list[weakref.ref]:
    """Drop the reference cycle Diffusers leaves on each model (`cache_context` stores a HookRegistry on the
    module that points back at it) and return weak references to the pipeline and its models: whether deleting
    the pipeline then freed them, or a full collection is still needed."""
    models = [c for c in getattr(pipe, "components", {}).values() if isinstance(c, torch.nn.Module)]
    for model in models:
        for module in model.modules():
            module.__dict__.pop("_diffusers_hook", None)
    refs = [weakref.ref(model) for model in models]
    with contextlib.suppress(TypeError):
        refs.append(weakref.ref(pipe))
    return refs


def run_reference_pipeline(
    pipeline_cls: Any,
    checkpoint: Path,
    request: GenerationRequest,
    trace: Trace,
    *,
    recorder: type[PipelineRecorder],
    forcer: type[PipelineForcer],
    call_kwargs: Callable[[Any], dict[str, Any]],
    progress: Callable[[int, int], None] | None = None,
    force_from: Trace | None = None,
    meta: dict[str, Any] | None = None,
    probe: Any = None,
) -> None:
    """Run `pipeline_cls` once for `request`, recorded into `trace` by `recorder` (forced by `forcer` when
    `force_from` is given), and stamp the trace's metadata (the common fields, then `meta`).

    `probe` (harness/drill/capture.py: `install(pipe)` / `remove()`) is installed last, so it sees the forced
    inputs too; it may end the run early by raising (its exception propagates after the clean-up below).
    `call_kwargs(pipe)` gives the pipeline's arguments (output_type and return_dict aside); it runs before any
    hook is installed, so what it draws or prepares is not recorded. After the run the hooks are removed, the
    pipeline is deleted and, on CUDA, the cache is emptied so the native side can load.
    """
    dtype = torch_dtype(request.dtype)
    device = torch.device(request.device)
    pipe = load_pipeline(pipeline_cls, checkpoint, dtype)
    hooks: list[Any] = []  # recorder, forcer, probe: each with install() / remove()
    try:
        pipe.to(device)
        kwargs = call_kwargs(pipe)
        for observer in list(_PIPELINE_OBSERVERS):
            observer(pipe, kwargs)
        hooks.append(recorder(pipe, request, trace, progress))
        hooks[-1].install()
        if force_from is not None:
            hooks.append(forcer(pipe, force_from))
            hooks[-1].install()
        if probe is not None:
            hooks.append(probe)
            probe.install(pipe)
        pipe(**kwargs, output_type="pt", return_dict=False)
        trace.meta.update(
            {
                "side": "reference",
                "pipeline_class": type(pipe).__name__,
                "diffusers_version": diffusers.__version__,
                "transformers_version": transformers.__version__,
                "torch_version": torch.__version__,
                "dtype": request.dtype,
                "device": str(device),
                **(meta or {}),
            }
        )
        if device.type == "cuda":
            trace.meta["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    finally:
        while hooks:  # the forcer first: it wraps the recorder's wrappers. Popped, so no loop variable keeps the
            hooks.pop().remove()  # last recorder (and through it the whole pipeline) alive past the collection
        still_alive = _release_cycles(pipe)
        del pipe, hooks
        collect_if_held(still_alive)  # freed before the native side loads
        release_freed_memory()
        if device.type == "cuda":
            torch.cuda.empty_cache()
