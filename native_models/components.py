"""Which native class builds each component class named in a checkpoint's `model_index.json`.

Model classes are imported lazily, so importing the runtime stays cheap and a family's modules load only when
a checkpoint needs them. Tokenizers are the one thing taken from transformers (allowed: no numerics); a cache
of them lets a run tokenize without importing transformers.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from native_models.errors import CheckpointError
from native_models.loader import load_component, read_json
from native_models.parallel.mesh import ParallelMesh

# Diffusers/transformers class name -> "module:NativeClass"
MODEL_CLASSES: dict[str, str] = {
    "CLIPTextModel": "native_models.models.clip_text:CLIPTextModel",
    "CLIPVisionModel": "native_models.models.clip_vision:CLIPVisionModel",
    "CLIPVisionModelWithProjection": "native_models.models.clip_vision:CLIPVisionModelWithProjection",
    "T5EncoderModel": "native_models.models.t5_encoder:T5EncoderModel",
    "UMT5EncoderModel": "native_models.models.t5_encoder:UMT5EncoderModel",
    "Qwen2_5_VLForConditionalGeneration": "native_models.models.qwen_text:Qwen2_5_VLForConditionalGeneration",
    "Qwen3Model": "native_models.models.qwen_text:Qwen3Model",
    "Qwen3ForCausalLM": "native_models.models.qwen_text:Qwen3ForCausalLM",
    "FluxTransformer2DModel": "native_models.models.flux_transformer:FluxTransformer2DModel",
    "WanTransformer3DModel": "native_models.models.wan_transformer:WanTransformer3DModel",
    "QwenImageTransformer2DModel": "native_models.models.qwenimage_transformer:QwenImageTransformer2DModel",
    "ZImageTransformer2DModel": "native_models.models.zimage_transformer:ZImageTransformer2DModel",
    "AutoencoderKL": "native_models.models.autoencoder_kl:AutoencoderKL",
    "AutoencoderKLWan": "native_models.models.autoencoder_kl_wan:AutoencoderKLWan",
    "AutoencoderKLQwenImage": "native_models.models.autoencoder_kl_qwenimage:AutoencoderKLQwenImage",
}
SCHEDULER_CLASSES: dict[str, str] = {
    "FlowMatchEulerDiscreteScheduler": "native_models.schedulers.flow_match_euler:FlowMatchEulerScheduler",
    "UniPCMultistepScheduler": "native_models.schedulers.unipc_flow:UniPCFlowScheduler",
}
TOKENIZER_CLASSES = {
    "CLIPTokenizer", "CLIPTokenizerFast", "T5Tokenizer", "T5TokenizerFast", "AutoTokenizer", "TokenizersBackend",
    "Qwen2Tokenizer", "Qwen2TokenizerFast",  # Qwen-Image (Qwen2.5-VL) and Z-Image (Qwen3)
}
# Image preprocessors, computed natively from their preprocessor_config.json (no transformers import). transformers
# 5 without torchvision names the CLIP one `CLIPImageProcessorPil`; both names compute the same (PIL backend).
PROCESSOR_CLASSES: dict[str, str] = {
    "CLIPImageProcessor": "native_models.clip_image_processor:CLIPImageProcessor",
    "CLIPImageProcessorPil": "native_models.clip_image_processor:CLIPImageProcessor",
}


def _import(target: str) -> Any:
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def model_class(class_name: str) -> type:
    """The native model class for a Diffusers/transformers model class name in MODEL_CLASSES."""
    return _import(MODEL_CLASSES[class_name])


def is_known_class(class_name: str) -> bool:
    return (class_name in MODEL_CLASSES or class_name in SCHEDULER_CLASSES or class_name in TOKENIZER_CLASSES
            or class_name in PROCESSOR_CLASSES)


def load_tokenizer(folder: Path) -> Any:
    """A tokenizer saved in Diffusers layout: as transformers builds it, read from the tokenizer cache when this
    folder was loaded before (native_models/tokenizer_cache.py), else loaded offline through transformers."""
    if not folder.is_dir():
        raise CheckpointError(f"missing tokenizer folder: {folder}")
    from native_models.tokenizer_cache import load_cached_tokenizer

    return load_cached_tokenizer(folder, load_transformers_tokenizer)


def load_transformers_tokenizer(folder: Path) -> Any:
    """The tokenizer in `folder` through transformers' AutoTokenizer, offline."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad folder
        raise CheckpointError(f"cannot load tokenizer from {folder} ({str(exc).splitlines()[0]})") from None


def load_scheduler(class_name: str, folder: Path) -> Any:
    config = read_json(folder / "scheduler_config.json")
    try:
        return _import(SCHEDULER_CLASSES[class_name]).from_config(config)
    except (KeyError, TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:  # a config value of a wrong type
        raise CheckpointError(f"{folder / 'scheduler_config.json'}: {exc}") from None


def load_processor(class_name: str, folder: Path) -> Any:
    """An image processor built natively from its preprocessor_config.json."""
    return _import(PROCESSOR_CLASSES[class_name]).from_pretrained(folder)


def load_native_component(
    name: str, class_name: str, checkpoint: Path, dtype: torch.dtype, device: torch.device,
    mesh: ParallelMesh | None = None, native_class: str | None = None,
) -> Any:
    """Build component `name` of a checkpoint with the native class for `class_name`.

    With a parallel `mesh`, a model component is loaded whole and keeps only this rank's shard (its class's
    `_tp_plan` / `_sp_plan`, native_models/parallel). `native_class` ("module:Class") replaces the class
    MODEL_CLASSES names for a model component (a pipeline's reduced variant, `ComposedPipeline._native_classes`).
    """
    folder = checkpoint / name
    if not folder.is_dir():
        raise CheckpointError(f"model_index.json names component '{name}' but {folder} does not exist")
    if class_name in MODEL_CLASSES:
        cls = _import(native_class or MODEL_CLASSES[class_name])
        if mesh is not None and mesh.is_parallel:
            from native_models.parallel.plan import load_parallel_component

            return load_parallel_component(cls, folder, mesh, dtype=dtype, device=device)
        return load_component(cls, folder, dtype=dtype, device=device)
    if class_name in SCHEDULER_CLASSES:
        return load_scheduler(class_name, folder)
    if class_name in TOKENIZER_CLASSES:
        return load_tokenizer(folder)
    if class_name in PROCESSOR_CLASSES:
        return load_processor(class_name, folder)
    raise CheckpointError(f"model_index.json names unknown class '{class_name}' for component '{name}'")
