"""Shared pieces of the published-config builders (references/<family>/published.py).

Those builders make Diffusers folders from the *published* component configs of public checkpoints (real widths,
few layers, random weights), saved by Diffusers/transformers themselves in bf16 and sharded like the public
repositories: a real checkpoint's file layout and numerics at a size this machine can hold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from native_models.tokenizer_cache import cache_root
from references.common.tiny_build import BUILD_INFO_FILE, build_once, config_digest

# Bump when what a builder writes changes: a cached folder of an older build is then built again.
PUBLISHED_BUILD_VERSION = 2


class DefaultDtype:
    """Construct modules directly in `dtype`: a bf16 folder's random init then never holds an fp32 copy."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *_: object) -> None:
        torch.set_default_dtype(self.previous)


# Rows of an embedding table past this many repeat the first ones: the offline tokenizers use a few hundred ids,
# and drawing a billion random numbers for UMT5's 256,384 x 4,096 table costs ~20 s per draw on this machine.
DRAWN_ROWS = 32768


@contextmanager
def unallocated() -> Iterator[None]:
    """Construct modules on the meta device: no memory, and none of the library's random init (transformers draws
    a T5/UMT5 embedding twice: 128 s of normal_ for Wan's text encoder, measured here under load 5);
    `fill_random` then draws each saved tensor once."""
    with torch.device("meta"):
        yield


def fill_random(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Allocate a meta-built `module` on the CPU and draw every saved tensor once, deterministically from `seed`.

    Scales follow PyTorch's default init of a linear or conv layer (uniform within 1/sqrt(fan_in)); embeddings
    draw unit variance; 1-D weights (norm scales) 1 + U(-0.1, 0.1) and biases U(-0.02, 0.02), so no parameter is
    a constant a bug could hide behind. Non-persistent buffers (rotary tables, position ids) are not saved and
    stay unset: the module is only ever saved, never run.
    """
    module.to_empty(device="cpu")
    if hasattr(module, "tie_weights"):  # transformers ties (T5's shared and encoder.embed_tokens) after init
        module.tie_weights()
    generator = torch.Generator().manual_seed(seed)
    embeddings = {name for name, sub in module.named_modules() if isinstance(sub, torch.nn.Embedding)}
    drawn_once: set[int] = set()
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if tensor.data_ptr() in drawn_once:  # a tied tensor, saved under two names
                continue
            drawn_once.add(tensor.data_ptr())
            owner, _, leaf = name.rpartition(".")
            if owner in embeddings:
                drawn = tensor[:DRAWN_ROWS]
                drawn.uniform_(-math.sqrt(3.0), math.sqrt(3.0), generator=generator)
                for start in range(DRAWN_ROWS, tensor.shape[0], DRAWN_ROWS):
                    rows = tensor[start:start + DRAWN_ROWS]
                    rows.copy_(drawn[:rows.shape[0]])
            elif tensor.dim() >= 2:
                bound = 1.0 / math.sqrt(tensor[0].numel())
                tensor.uniform_(-bound, bound, generator=generator)
            elif leaf == "weight" or leaf.endswith("scale"):
                tensor.uniform_(0.9, 1.1, generator=generator)
            elif tensor.is_floating_point():
                tensor.uniform_(-0.02, 0.02, generator=generator)
            else:
                raise ValueError(f"{name}: a saved {tensor.dtype} tensor this builder does not know how to fill")
    return module


def save_published(pipe: Any, out: Path, name: str, sizes: dict[str, Any], shard: str) -> Path:
    """save_pretrained sharded at `shard` (Diffusers writes the *.safetensors.index.json files), then the build
    record: `random_weights` tells `diffparity run --expect auto` to expect noise from this folder."""
    out = Path(out)
    pipe.save_pretrained(out, max_shard_size=shard)
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*.safetensors"))}
    record = {"family": name, "random_weights": True, "stored_dtype": "bf16", "sizes": sizes,
              "build_version": PUBLISHED_BUILD_VERSION,
              "weight_bytes": sum(files.values()), "files": files}
    (out / BUILD_INFO_FILE).write_text(json.dumps(record, indent=1))
    return out


def cached_published(name: str, sizes: dict[str, Any], build: Callable[[Path], Path]) -> Path:
    """The published-config folder `name` at `sizes`, built by `build(folder)` once into the checkpoint cache
    ($DIFFPARITY_CACHE/published/): ~1-2.5 GB each, a minute of building that later runs and other pytest
    workers skip (the build is atomic: a folder is there complete or not at all)."""
    folder = cache_root() / "published" / f"{name}-v{PUBLISHED_BUILD_VERSION}-{config_digest(sizes)}"
    return build_once(folder, build)
