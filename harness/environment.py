"""The environment fingerprint written into every report and trace: what could change the numbers."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
from collections.abc import Iterator
from typing import Any

import torch

# the libraries whose version can change a trace: the reference's (diffusers, transformers, tokenizers, accelerate's
# loading path), the file format's and the array library's
VERSIONED_PACKAGES = ("diffusers", "transformers", "tokenizers", "safetensors", "numpy", "accelerate")


def environment(device: str, dtype: str, attention_backend: str) -> dict[str, object]:
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "dtype": dtype,
        "attention_backend": attention_backend,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    # installed versions, read from package metadata: importing Diffusers (~3 s) only to name its version would
    # also load it into processes that never run it (`diffparity golden verify`, `compare`)
    for package in VERSIONED_PACKAGES:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # the harness can compare stored traces without diffusers
            info[package] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
    return info


def environment_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[dict[str, Any]]:
    """`{key, recorded, current}` for every fingerprint entry that differs (a key missing on one side is None):
    what `golden verify` prints beside its verdict, so a failure after an upgrade names the upgrade."""
    return [{"key": key, "recorded": recorded.get(key), "current": current.get(key)}
            for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]


def format_environment_changes(changes: list[dict[str, Any]]) -> str:
    """'environment as recorded: unchanged' or a short table of what differs."""
    if not changes:
        return "environment as recorded: unchanged"
    width = max(len(change["key"]) for change in changes)
    lines = [f"environment differs from the recording ({len(changes)}):"]
    lines += [f"  {change['key']:<{width}}  {change['recorded']}  ->  {change['current']}" for change in changes]
    return "\n".join(lines)


@contextlib.contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to `count` for the block, then restored: the CPU splits reductions by
    thread count, so the same run on 1 and on 2 threads differs in the last bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
