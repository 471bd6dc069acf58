"""Loading Diffusers-format checkpoints into native modules.

A checkpoint is a folder with `model_index.json` and one sub-folder per component (its `config.json` plus
`*.safetensors`, possibly sharded with an index). It can also be named by a Hugging Face id already present in
the local cache (never downloaded). Native modules keep Diffusers' (and transformers') parameter names, so a
state dict loads strictly; a module may declare `convert_checkpoint_keys` when it fuses or ties parameters.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from native_models.errors import CheckpointError
from native_models.safetensors_header import FLOAT_WEIGHT_DTYPES, read_safetensors_header

JSON_FILE_LIMIT = 64 * 1024 * 1024  # config, index and model_index files are kilobytes; a shard index ~1 MB
# A model built from config.json may hold at most this many elements more than its checkpoint's tensors:
# tied weights are counted twice, and non-persistent buffers (rotary tables...) are not in the file.
BUILD_SLACK_NUMEL = 2**20


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


def weight_files(component_dir: Path) -> list[Path]:
    """The safetensors files of a component: one file, or the shards its index names (plain file names in
    the component folder: an index cannot point outside it)."""
    index_files = sorted(component_dir.glob("*.safetensors.index.json"))
    if index_files:
        weight_map = read_json(index_files[0]).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_files[0]}: 'weight_map' is not a non-empty object")
        for shard in weight_map.values():
            if (not isinstance(shard, str) or not shard.endswith(".safetensors") or Path(shard).name != shard
                    or shard.startswith(".")):
                raise CheckpointError(f"{index_files[0]}: shard {str(shard)[:80]!r} is not a .safetensors file "
                                      "name in the component folder")
        files = sorted({component_dir / shard for shard in weight_map.values()})
    else:
        files = sorted(component_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors weights in {component_dir}")
    return files


def checkpoint_tensors(component_dir: Path) -> dict[str, Any]:
    """name -> TensorInfo of every tensor in the component's files, headers checked, no data read."""
    tensors: dict[str, Any] = {}
    for file in weight_files(component_dir):
        tensors.update(read_safetensors_header(file))
    return tensors


def load_state_dict(component_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of one component, from one safetensors file or a sharded set named by an index.

    Each header is checked first (read_safetensors_header), so a truncated, hostile or pickled file is refused
    before its data is read; nothing is ever unpickled.
    """
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(component_dir):
        read_safetensors_header(file)
        try:
            # Read the bytes ourselves: memory-mapped loads land at unaligned addresses and take another CPU
            # matmul path than the reference's (field notes, section 3), which costs ~1e-7 of spurious error.
            from safetensors.torch import load

            state.update(load(file.read_bytes()))
        except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, OverflowError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{file} is not a readable safetensors file ({message})") from None
    return state


class _BuildBudget:
    """Counts the elements of every parameter and buffer registered while a model is built and stops the
    build once they exceed `limit`: a config.json declaring 10**9 layers or a width of 10**9 fails at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.numel = 0

    def __call__(self, module: torch.nn.Module, name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            self.numel += value.numel()
            if self.numel > self.limit:
                raise _OverBudget(self.numel)


class _ConfigTooLarge(CheckpointError):
    """config.json describes a model far larger than its weights."""


class _OverBudget(Exception):
    def __init__(self, numel: int) -> None:
        super().__init__(numel)
        self.numel = numel


class _SkipInitOnMeta(TorchFunctionMode):
    """Meta tensors hold no values, so `torch.nn.init` has nothing to do; skipping it also keeps torch off its
    meta path for in-place random fills, which imports torch._dynamo (about 1.5 s in every native process)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        if getattr(func, "__module__", "") == "torch.nn.init":
            return args[0] if args else (kwargs or {}).get("tensor")
        return func(*args, **(kwargs or {}))


def check_build_size(cls: type, config: dict[str, Any], component_dir: Path, checkpoint_numel: int) -> None:
    """Build `cls` from `config` on the meta device (no memory allocated) and raise CheckpointError when it
    would hold far more elements than the checkpoint's tensors, or cannot be built at all."""
    from torch.nn.modules import module as torch_module

    budget = _BuildBudget(2 * checkpoint_numel + BUILD_SLACK_NUMEL)
    hooks = (torch_module.register_module_parameter_registration_hook(budget),
             torch_module.register_module_buffer_registration_hook(budget))
    try:
        with torch.device("meta"), _SkipInitOnMeta():
            cls.from_config(config)  # type: ignore[attr-defined]
    except _OverBudget as exc:
        raise _ConfigTooLarge(
            f"{component_dir / 'config.json'}: {cls.__name__} built from it would hold over {exc.numel} elements, "
            f"its weights hold {checkpoint_numel} (a config value far too large?)"
        ) from None
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{component_dir / 'config.json'}: cannot build {cls.__name__} ({first})") from None
    finally:
        for hook in hooks:
            hook.remove()


def check_component(cls: type, component_dir: Path) -> dict[str, Any]:
    """Everything about a model component that can be checked without reading weights: config.json parses and
    builds `cls` within the size of the checkpoint, the safetensors headers are sound. Returns the config."""
    config = read_json(component_dir / "config.json")
    try:
        tensors = checkpoint_tensors(component_dir)
    except CheckpointError as weights_error:
        # a config that cannot build is named first (with the slack alone as its size budget), then the weights
        with contextlib.suppress(_ConfigTooLarge):
            check_build_size(cls, config, component_dir, 0)
        raise weights_error from None
    check_build_size(cls, config, component_dir, sum(info.numel for info in tensors.values()))
    return config


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Each tensor has its parameter's shape, a floating parameter gets a float16/bfloat16/float32/float64
    tensor, and no floating tensor holds NaN or infinity; CheckpointError (one line) names the first that
    does not."""
    expected = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    float_dtypes = {torch.float64, torch.float32, torch.float16, torch.bfloat16}
    for name, tensor in state.items():
        target = expected.get(name)
        if target is None:
            continue  # reported with the other unexpected keys
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(f"{where}: tensor '{name}' has shape {list(tensor.shape)}, the model built from "
                                  f"config.json needs {list(target.shape)}")
        if target.is_floating_point() and tensor.dtype not in float_dtypes:
            raise CheckpointError(f"{where}: tensor '{name}' is {tensor.dtype}, a weight must be one of "
                                  f"{', '.join(FLOAT_WEIGHT_DTYPES)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{where}: tensor '{name}' holds {bad} non-finite value(s) (NaN or infinity)")


def load_component(
    cls: type[M], component_dir: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> M:
    """Build `cls` from the component's config.json and load its weights strictly, under Diffusers' names."""
    config = check_component(cls, component_dir)
    try:
        model = cls.from_config(config)  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{component_dir / 'config.json'}: cannot build {cls.__name__} ({exc})") from None
    state = load_state_dict(component_dir)
    convert = getattr(model, "convert_checkpoint_keys", None)
    if convert is not None:
        state = convert(state)
    check_state(model, state, component_dir)
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


__all__ = ["check_component", "load_component", "load_state_dict", "read_json", "read_model_index",
           "resolve_checkpoint", "load_file", "weight_files"]
