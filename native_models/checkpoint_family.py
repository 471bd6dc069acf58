"""Which registered family runs a checkpoint, read from its `model_index.json`, and that checkpoint's defaults.

`diffparity run --model DIR` names no case: the pipeline class in `model_index.json` decides. Only the class name
counts here (not the folder's name: a folder called "flux-copy" holding a WanPipeline is Wan), and the class must
both have a native pipeline (`EntryClass` of a module in native_models/pipelines/) and match a registered family's
detectors (native_models/registry.py), so a family added by its own files is found without a change here.
"""

from __future__ import annotations

from pathlib import Path

from native_models.configs import SamplingParams
from native_models.errors import CheckpointError
from native_models.loader import read_json
from native_models.pipeline import discover_pipelines
from native_models.registry import ConfigEntry, registered_configs


def registered_pipelines() -> dict[str, str]:
    """Diffusers pipeline class name -> family, for every native pipeline a registered family claims."""
    entries = registered_configs() if discover_pipelines() else []  # discovery imports (registers) every family
    found = {}
    for class_name in sorted(discover_pipelines()):
        for entry in entries:
            if any(detect(class_name) for detect in entry.model_detectors):
                found[class_name] = entry.family
                break
    return found


def family_for_checkpoint(checkpoint: Path) -> ConfigEntry:
    """The registry entry of the family whose native pipeline mirrors `model_index.json`'s `_class_name`."""
    class_name = read_json(checkpoint / "model_index.json").get("_class_name")
    if not isinstance(class_name, str) or not class_name:
        raise CheckpointError(f"{checkpoint / 'model_index.json'} has no _class_name naming its pipeline")
    known = registered_pipelines()
    if class_name not in known:
        listed = ", ".join(f"{name} ({family})" for name, family in known.items()) or "none"
        raise CheckpointError(f"{checkpoint / 'model_index.json'} names pipeline '{class_name[:80]}', which no "
                              f"registered family runs; registered: {listed}")
    for entry in registered_configs():
        if entry.family == known[class_name]:
            return entry
    raise CheckpointError(f"family {known[class_name]!r} of '{class_name}' is no longer registered")


def checkpoint_defaults(checkpoint: Path) -> tuple[ConfigEntry, SamplingParams]:
    """The checkpoint's family and its request defaults (the family's SamplingParams for this checkpoint)."""
    entry = family_for_checkpoint(checkpoint)
    return entry, entry.sampling_param_cls.for_checkpoint(checkpoint)
