"""Maps checkpoints to the `SamplingParams` / `PipelineConfig` classes of their model family.

A family registers once, at import of its pipeline module, with the Hugging Face ids it is known under and
detectors that recognise it from a path or a pipeline class name (for local folders and renamed copies).
Each entry carries a family name ("flux", "wan"): the key that ties it to its parity cases (`Case.family`),
its case file `cases/test_<family>.py` and its goldens (harness/verdicts/gate.py checks them all). It defaults to the
name of the pipeline module, `native_models/pipelines/<family>.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from native_models.configs import PipelineConfig, SamplingParams
from native_models.errors import CheckpointError


@dataclass(frozen=True)
class ConfigEntry:
    sampling_param_cls: type[SamplingParams]
    pipeline_config_cls: type[PipelineConfig]
    hf_model_paths: tuple[str, ...]
    model_detectors: tuple[Callable[[str], bool], ...]
    family: str = ""


_REGISTRY: list[ConfigEntry] = []


def register_configs(
    sampling_param_cls: type[SamplingParams],
    pipeline_config_cls: type[PipelineConfig],
    hf_model_paths: list[str] | tuple[str, ...] = (),
    model_detectors: list[Callable[[str], bool]] | tuple[Callable[[str], bool], ...] = (),
    family: str | None = None,
) -> None:
    """Register a model family. Registering the same config class twice replaces the earlier entry.

    `family` defaults to the last part of the config class's module name (`native_models.pipelines.flux` ->
    "flux"), so a family module named after its family needs no extra argument.
    """
    family = family if family is not None else pipeline_config_cls.__module__.rsplit(".", 1)[-1]
    if not family or not all(ch.isalnum() or ch in "-_" for ch in family):
        raise ValueError(f"family name {family!r} must be non-empty letters, digits, '-' or '_' (it names files)")
    entry = ConfigEntry(sampling_param_cls, pipeline_config_cls, tuple(hf_model_paths), tuple(model_detectors),
                        family)
    _REGISTRY[:] = [e for e in _REGISTRY if e.pipeline_config_cls is not pipeline_config_cls]
    _REGISTRY.append(entry)


def registered_configs() -> list[ConfigEntry]:
    return list(_REGISTRY)


def get_configs(model_path: str, pipeline_class_name: str) -> ConfigEntry:
    """The entry for a checkpoint: an exact Hugging Face id first, then the detectors on the pipeline class
    name (what model_index.json says the checkpoint is), and only then on the path (a folder named after
    another family must not decide)."""
    for entry in _REGISTRY:
        if model_path in entry.hf_model_paths:
            return entry
    for name in (pipeline_class_name, model_path):
        for entry in _REGISTRY:
            if any(detect(name) for detect in entry.model_detectors):
                return entry
    raise CheckpointError(f"no native model family registered for '{model_path}' ({pipeline_class_name})")
