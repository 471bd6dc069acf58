"""Loading Diffusers-format checkpoints into native modules, at the cost of one copy of the weights.

A checkpoint is a folder with `model_index.json` and one sub-folder per component (its `config.json` plus
`*.safetensors`, possibly sharded with an index). It can also be named by a Hugging Face id already present in
the local cache (never downloaded). Native modules keep Diffusers' (and transformers') parameter names, so a
state dict loads strictly; a module may declare `convert_checkpoint_keys` when it renames, drops or ties keys.

A component loads in four steps, each in its own module: every header is checked and every tensor located
(checkpoint_files.py); the model is built with its parameters on the meta device and their run dtypes planned
by its own cast rules (meta_build.py); names, shapes and dtypes are checked against the headers (here); then each
tensor is copied once from the memory-mapped file into its parameter, in the run's dtype and device, and checked
for NaN/infinity on the way (mapped_safetensors.py, materialise.py). No random init, no fp32 model beside a
bf16 one, no state dict held beside the model.
"""

from __future__ import annotations

import contextlib
import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from native_models.build_memo import BoundedMemo, config_key
from native_models.checkpoint_files import (
    TensorSource,
    check_weight_map,
    component_files,
    shard_index,
    tensor_sources,
)
from native_models.errors import CheckpointError
from native_models.mapped_safetensors import FLOAT_DTYPES, TORCH_DTYPES, MappedSafetensors
from native_models.materialise import Origin, materialise, meta_tensors, state_slots
from native_models.meta_build import ConfigTooLarge, build_empty, build_on_meta, check_build_size, plan_dtypes
from native_models.safetensors_header import FLOAT_WEIGHT_DTYPES

JSON_FILE_LIMIT = 64 * 1024 * 1024  # config, index and model_index files are kilobytes; a shard index ~1 MB
# (class, config.json, every header entry and its file) of components whose names, shapes and dtypes were found
# to fit the model: checked again only when one of those changes (native_models/build_memo.py)
CHECKED_COMPONENTS: BoundedMemo[bool] = BoundedMemo()


class NativeComponent(Protocol):
    """What a native model class offers to the loader."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NativeComponent: ...


M = TypeVar("M", bound=torch.nn.Module)


def resolve_checkpoint(path_or_id: str | Path) -> Path:
    """A local folder holding `model_index.json`, or a Hugging Face id resolved from the offline cache only."""
    try:
        candidate = Path(path_or_id).expanduser()
    except RuntimeError:  # '~nosuchuser/...': no home folder to expand to
        raise CheckpointError(f"checkpoint folder not found: {path_or_id}") from None
    try:
        is_dir = candidate.is_dir()
    except OSError as exc:  # a name too long for the file system, a folder without permission
        raise CheckpointError(f"checkpoint folder {str(candidate)[:200]} cannot be read ({exc.strerror})") from None
    if is_dir:
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
        if path.is_symlink() or path.exists():
            raise CheckpointError(f"{path} is not a regular file (a folder, a device or a symlink loop)")
        raise CheckpointError(f"missing file: {path}")
    try:
        if path.stat().st_size > JSON_FILE_LIMIT:
            raise CheckpointError(f"{path} is {path.stat().st_size} bytes, not a config file (limit {JSON_FILE_LIMIT})")
        data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not valid JSON ({first})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to infinity
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


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


def _weight_map(component_dir: Path) -> tuple[Path | None, dict[str, str] | None]:
    """The component's shard index and its checked weight map, or (None, None) for an unsharded component."""
    index_file = shard_index(component_dir)
    if index_file is None:
        return None, None
    return index_file, check_weight_map(index_file, read_json(index_file).get("weight_map"))


def weight_files(component_dir: Path) -> list[Path]:
    """The safetensors files of a component: one file, or the shards its index names (plain file names in
    the component folder: an index cannot point outside it)."""
    return component_files(component_dir, _weight_map(component_dir)[1])


def component_sources(component_dir: Path) -> dict[str, TensorSource]:
    """name -> where it is stored, for every tensor of a component: headers of every file checked, and the
    shard index agreeing with them (checkpoint_files.tensor_sources); no tensor data read."""
    index_file, weight_map = _weight_map(component_dir)
    return tensor_sources(component_dir, weight_map, index_file)


def checkpoint_tensors(component_dir: Path) -> dict[str, Any]:
    """name -> TensorInfo of every tensor in the component's files, headers checked, no data read."""
    return {name: source.info for name, source in component_sources(component_dir).items()}


def load_state_dict(component_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of one component, from one safetensors file or a sharded set named by an index, each an
    aligned copy in its stored dtype (for tests and tools; loading a model does not build this dict).

    Every header is checked first (component_sources), so a truncated, hostile or pickled file is
    refused before its data is read; nothing is ever unpickled.
    """
    sources = component_sources(component_dir)
    state: dict[str, torch.Tensor] = {}
    for file in sorted({source.file for source in sources.values()}):
        with MappedSafetensors(file) as mapped:
            for name, source in sources.items():
                if source.file == file:
                    state[name] = mapped.view(source.info).clone()
    return state


def _checked_component(cls: type, component_dir: Path) -> tuple[dict[str, Any], dict[str, TensorSource]]:
    config = read_json(component_dir / "config.json")
    try:
        sources = component_sources(component_dir)
    except CheckpointError as weights_error:
        # a config that cannot build is named first (with the slack alone as its size budget), then the weights
        with contextlib.suppress(ConfigTooLarge):
            check_build_size(cls, config, component_dir, 0)
        raise weights_error from None
    check_build_size(cls, config, component_dir, sum(source.info.numel for source in sources.values()))
    return config, sources


def check_component(cls: type, component_dir: Path) -> dict[str, TensorSource]:
    """Everything about a model component that can be checked without reading weights: config.json parses and
    builds `cls` within the size of the checkpoint, the safetensors headers (every shard) and the shard index
    are sound, and every stored tensor has the shape and a dtype the model built from config.json needs (a
    `latent_channels` edited in config.json is named here, before Diffusers loads anything). Returns where each
    stored tensor lives (name -> TensorSource: file and header entry), read once for the check."""
    config, sources = _checked_component(cls, component_dir)
    key = config_key(cls, config, tuple((name, source.file, source.info) for name, source in sorted(sources.items())))
    if CHECKED_COMPONENTS.get(key):
        return sources
    model = build_empty(cls, config, component_dir)  # parameters on the meta device: no memory, no data read
    state: dict[str, torch.Tensor] = {}
    files: dict[int, Path] = {}
    for name, source in sources.items():
        stand_in = torch.empty(source.info.shape, dtype=TORCH_DTYPES[source.info.dtype], device="meta")
        state[name] = stand_in
        files[id(stand_in)] = source.file
    convert = getattr(model, "convert_checkpoint_keys", None)
    if convert is not None:
        state = convert(state)
    check_state(model, state, component_dir, files)
    CHECKED_COMPONENTS.put(key, True)
    return sources


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path,
                files: dict[int, Path] | None = None) -> None:
    """From shapes and dtypes alone (no data read): each tensor has its parameter's shape, a floating parameter
    gets a float16/bfloat16/float32/float64 tensor, and the names match the model's exactly; CheckpointError
    (one line) names the first tensor that does not (and its file, from `files`: id(tensor) -> file)."""
    files = files or {}
    slots = state_slots(model)
    for name, tensor in state.items():
        slot = slots.get(name)
        if slot is None:
            continue  # reported with the other unexpected keys
        target = slot.current
        place = files.get(id(tensor), where)
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(f"{place}: tensor '{name}' has shape {list(tensor.shape)}, the model built from "
                                  f"config.json needs {list(target.shape)}")
        if target.is_floating_point() and tensor.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{place}: tensor '{name}' is {tensor.dtype}, a weight must be one of "
                                  f"{', '.join(FLOAT_WEIGHT_DTYPES)}")
    missing = [key for key in slots if key not in state]
    unexpected = [key for key in state if key not in slots]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match {type(model).__name__} "
            f"({len(missing)} missing, e.g. [{', '.join(missing[:3])}]; "
            f"{len(unexpected)} unexpected, e.g. [{', '.join(unexpected[:3])}])"
        )


def resident_bytes(cls: type, component_dir: Path, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of parameters and buffers the component will hold once loaded in `dtype` (its class's fp32-kept
    parts included), from config.json and the headers alone: whether a run, or an fp64 calibration, fits in
    memory can be decided before anything loads."""
    config, _ = _checked_component(cls, component_dir)
    model = build_on_meta(cls, config)
    plan_dtypes(model, dtype)
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def load_component(
    cls: type[M], component_dir: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> M:
    """Build `cls` from the component's config.json and load its weights strictly, under Diffusers' names,
    straight into `dtype` (each class's fp32-kept parts aside) on `device`.

    Stored weights of another floating dtype are cast as Diffusers casts them (bf16 files upcast in an fp32
    run). Raises CheckpointError (one line) for anything that does not fit, before reading any tensor data,
    except NaN/infinity, found while copying.
    """
    config, sources = _checked_component(cls, component_dir)
    device = torch.device(device)
    model = build_empty(cls, config, component_dir)
    plan_dtypes(model, dtype)
    with contextlib.ExitStack() as stack:
        maps = {file: stack.enter_context(MappedSafetensors(file))
                for file in sorted({source.file for source in sources.values()})}
        state: dict[str, torch.Tensor] = {}
        origins: dict[int, Origin] = {}
        for name, source in sources.items():
            mapped = maps[source.file]
            view = state[name] = mapped.view(source.info)
            origins[id(view)] = Origin(source.file, name, partial(mapped.release, source.info))
        convert = getattr(model, "convert_checkpoint_keys", None)
        if convert is not None:
            state = convert(state)
        check_state(model, state, component_dir, {key: origin.file for key, origin in origins.items()})
        materialise(model, state, origins, device, component_dir)
        del state, origins
    left = list(meta_tensors(model))
    if left:
        raise CheckpointError(f"{component_dir}: {cls.__name__} left {len(left)} tensor(s) unloaded, e.g. {left[:3]} "
                              "(a buffer computed from a parameter at build time?)")
    return model.to(device).eval()  # moves the buffers computed at build time; the parameters are there already


__all__ = ["check_component", "check_state", "checkpoint_tensors", "component_sources", "load_component",
           "load_state_dict", "read_json", "read_model_index", "resident_bytes", "resolve_checkpoint", "weight_files"]
