"""Loading Diffusers-format checkpoints into native modules.

A checkpoint is a folder with `model_index.json` and one sub-folder per component (its `config.json` plus
`*.safetensors`, possibly sharded with an index). It can also be named by a Hugging Face id already present in
the local cache (never downloaded). Native modules keep Diffusers' (and transformers') parameter names, so a
state dict loads strictly; a module may declare `convert_checkpoint_keys` when it fuses or ties parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from native_models.errors import CheckpointError


class NativeComponent(Protocol):
    """What a native model class offers to the loader."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NativeComponent: ...


M = TypeVar("M", bound=torch.nn.Module)


def resolve_checkpoint(path_or_id: str | Path) -> Path:
    """A local folder holding `model_index.json`, or a Hugging Face id resolved from the offline cache only."""
    candidate = Path(path_or_id).expanduser()
    if candidate.is_dir():
        if not (candidate / "model_index.json").is_file():
            raise CheckpointError(f"{candidate} has no model_index.json: not a Diffusers pipeline folder")
        return candidate
    text = str(path_or_id)
    looks_like_repo_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_repo_id:
        raise CheckpointError(f"checkpoint folder not found: {candidate}")
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(text, local_files_only=True))
    except Exception:  # noqa: BLE001 - any hub failure means "not in the local cache"
        raise CheckpointError(
            f"'{text}' is neither a local folder nor a Hugging Face id in the offline cache"
        ) from None
    if not (local / "model_index.json").is_file():
        raise CheckpointError(f"cached snapshot of '{text}' has no model_index.json")
    return local


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning every failure into a one-line CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def read_model_index(folder: Path) -> dict[str, tuple[str, str]]:
    """Components named by `model_index.json`: name -> (library, class). Null entries are left out."""
    index = read_json(folder / "model_index.json")
    components: dict[str, tuple[str, str]] = {}
    for name, value in index.items():
        if name.startswith("_"):
            continue
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            components[name] = (value[0], value[1])
        elif isinstance(value, list) and (value == [None, None] or None in value):
            continue
    return components


def load_state_dict(component_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of one component, from one safetensors file or a sharded set named by an index."""
    files = sorted(component_dir.glob("*.safetensors"))
    index_files = sorted(component_dir.glob("*.safetensors.index.json"))
    if index_files:
        weight_map = read_json(index_files[0]).get("weight_map", {})
        files = sorted({component_dir / shard for shard in weight_map.values()})
    if not files:
        raise CheckpointError(f"no .safetensors weights in {component_dir}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"missing weight shard: {file}")
        try:
            # Read the bytes ourselves: memory-mapped loads land at unaligned addresses and take another CPU
            # matmul path than the reference's (field notes, section 3), which costs ~1e-7 of spurious error.
            from safetensors.torch import load

            state.update(load(file.read_bytes()))
        except (SafetensorError, OSError, ValueError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{file} is not a readable safetensors file ({message})") from None
    return state


def load_component(
    cls: type[M], component_dir: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> M:
    """Build `cls` from the component's config.json and load its weights strictly, under Diffusers' names."""
    config = read_json(component_dir / "config.json")
    try:
        model = cls.from_config(config)  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{component_dir / 'config.json'}: cannot build {cls.__name__} ({exc})") from None
    state = load_state_dict(component_dir)
    convert = getattr(model, "convert_checkpoint_keys", None)
    if convert is not None:
        state = convert(state)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:3])
        unexpected = ", ".join(result.unexpected_keys[:3])
        raise CheckpointError(
            f"{component_dir}: weights do not match {cls.__name__} "
            f"({len(result.missing_keys)} missing, e.g. [{missing}]; "
            f"{len(result.unexpected_keys)} unexpected, e.g. [{unexpected}])"
        )
    return model.to(device=device, dtype=dtype).eval()


__all__ = ["load_component", "load_state_dict", "read_json", "read_model_index", "resolve_checkpoint", "load_file"]
