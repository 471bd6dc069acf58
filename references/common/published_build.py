"""Shared pieces of the published-config builders (references/<family>/published.py).

Those builders make Diffusers folders from the *published* component configs of public checkpoints (real widths,
few layers, random weights), saved by Diffusers/transformers themselves in bf16 and sharded like the public
repositories: a real checkpoint's file layout and numerics at a size this machine can hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from references.common.tiny_build import BUILD_INFO_FILE


class DefaultDtype:
    """Construct modules directly in `dtype`: a bf16 folder's random init then never holds an fp32 copy."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *_: object) -> None:
        torch.set_default_dtype(self.previous)


def save_published(pipe: Any, out: Path, name: str, sizes: dict[str, Any], shard: str) -> Path:
    """save_pretrained sharded at `shard` (Diffusers writes the *.safetensors.index.json files), then the build
    record: `random_weights` tells `diffparity run --expect auto` to expect noise from this folder."""
    out = Path(out)
    pipe.save_pretrained(out, max_shard_size=shard)
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*.safetensors"))}
    record = {"family": name, "random_weights": True, "stored_dtype": "bf16", "sizes": sizes,
              "weight_bytes": sum(files.values()), "files": files}
    (out / BUILD_INFO_FILE).write_text(json.dumps(record, indent=1))
    return out
