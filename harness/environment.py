"""The environment fingerprint written into every report and trace: what could change the numbers."""

from __future__ import annotations

import importlib.metadata
import platform

import torch


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
    # the installed version, read from package metadata: importing Diffusers (~3 s) only to name its version would
    # also load it into processes that never run it (`diffparity golden verify`, `compare`)
    try:
        info["diffusers"] = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:  # the harness can compare stored traces without diffusers
        info["diffusers"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
    return info
