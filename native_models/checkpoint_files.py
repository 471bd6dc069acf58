"""Which file holds each tensor of a model component: one safetensors file, or shards named by an index.

Everything here reads only safetensors headers (the loader reads the index's JSON and hands its weight map in),
so a sharded folder with a missing shard, a hostile shard, or an index that names a tensor its shard does not
hold is refused (one CheckpointError line) before a byte of tensor data is read: the native plan calls it before
the reference side touches the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from native_models.errors import CheckpointError
from native_models.safetensors_header import TensorInfo, read_safetensors_header


@dataclass(frozen=True)
class TensorSource:
    """Where one stored tensor lives: its file and its header entry (dtype, shape, byte offset)."""

    file: Path
    name: str
    info: TensorInfo


def shard_index(component_dir: Path) -> Path | None:
    """The component's `*.safetensors.index.json`, if it is sharded (the first by name when several exist)."""
    index_files = sorted(component_dir.glob("*.safetensors.index.json"))
    return index_files[0] if index_files else None


def check_weight_map(index_file: Path, weight_map: Any) -> dict[str, str]:
    """An index's `weight_map` (tensor name -> shard file name), checked: a non-empty object whose shards are
    plain .safetensors names in the component folder (an index cannot point outside it)."""
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_file}: 'weight_map' is not a non-empty object")
    for shard in weight_map.values():
        if (not isinstance(shard, str) or not shard.endswith(".safetensors") or Path(shard).name != shard
                or shard.startswith(".")):
            raise CheckpointError(f"{index_file}: shard {str(shard)[:80]!r} is not a .safetensors file "
                                  "name in the component folder")
    return weight_map


def component_files(component_dir: Path, weight_map: dict[str, str] | None) -> list[Path]:
    """The safetensors files of a component: the shards its index's `weight_map` names, or without an index
    every .safetensors file in the folder."""
    if weight_map is not None:
        files = sorted({component_dir / shard for shard in weight_map.values()})
    else:
        files = sorted(component_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors weights in {component_dir}")
    return files


def tensor_sources(component_dir: Path, weight_map: dict[str, str] | None = None,
                   index_file: Path | None = None) -> dict[str, TensorSource]:
    """name -> TensorSource of every tensor of a component, after checking every file's header (all of them,
    before any data is read), that no tensor is stored twice, and that the index's shard for each tensor it
    names holds it."""
    files = component_files(component_dir, weight_map)
    headers = {file: read_safetensors_header(file) for file in files}
    sources: dict[str, TensorSource] = {}
    for file, tensors in headers.items():
        for name, info in tensors.items():
            if name in sources:
                raise CheckpointError(f"{component_dir}: tensor '{name}' is stored twice, in {sources[name].file.name} "
                                      f"and {file.name}")
            sources[name] = TensorSource(file, name, info)
    for name, shard in (weight_map or {}).items():
        if name not in headers[component_dir / shard]:
            raise CheckpointError(f"{index_file or component_dir}: names tensor '{name}' in {shard}, which does not "
                                  "hold it")
    return sources


__all__ = ["TensorSource", "check_weight_map", "component_files", "shard_index", "tensor_sources"]
