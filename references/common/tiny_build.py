"""What every tiny checkpoint builder shares: per-component seeding, the zero-weight guard, the build record, and
the build-once cache under $DIFFPARITY_CACHE/checkpoints.

A tiny checkpoint is a pure function of (family, build version, seed, config): the builders in tiny_flux.py and
tiny_wan.py differ only in the components they make, so the rules that keep the result reproducible and the
cache safe under concurrent pytest workers live here once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.lifetime import sweep_stale_folders, tracked
from native_models.tokenizer_cache import cache_root

BUILD_INFO_FILE = "diffparity_build.json"


def seed_component(seed: int, index: int) -> None:
    """Seed the global RNG per component, so resizing one component leaves the others' weights unchanged."""
    torch.manual_seed(seed * 16 + index)


def reinit_zero_weights(module: torch.nn.Module) -> list[str]:
    """Give all-zero weight matrices (and all-zero modulation tables) small random values, so no stage of a random
    model is silent. Diffusers 0.42 initialises none for FLUX or Wan (checked by the tests); the guard is for other
    versions."""
    fixed = []
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2 and not param.any():
                param.normal_(0.0, param[0].numel() ** -0.5)
                fixed.append(name)
    return fixed


def randomise_constant_parameters(module: torch.nn.Module, seed: int, index: int) -> list[str]:
    """Give every parameter whose values are all equal (norm weights of 1, norm biases of 0, constant tables)
    random values around that constant, drawn from a generator of its own (seed, component index).

    Architectures initialise norm affine parameters to exactly 1 and 0: on such a checkpoint a dropped norm
    weight, or `norm_q` loaded into `norm_k`, changes no bit of any trace. A nonzero constant c becomes
    c * exp(0.5 z) (same sign, median c, about c/2.7 to 2.7c, as trained norm weights spread), a zero one 0.2 z:
    activations keep their usual range while every weight becomes visible to parity.

    The values are computed in float64 and rounded once to the parameter's dtype, so every x86-64 machine builds
    the same bytes. float32 `exp` is not correctly rounded and its last bit depends on the machine (two CPUs with
    the same torch build disagreed on about 1% of elements, so every golden recorded on one named "another
    checkpoint" on the other); a one-ulp float64 disagreement changes the float32 result only for a value within
    2**-29 float32 ulp of a rounding midpoint.
    """
    generator = torch.Generator().manual_seed(seed * 16 + index + 7919)  # independent of the init's RNG stream
    changed = []
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.numel() < 2 or not bool((param == param.reshape(-1)[0]).all()):
                continue
            constant = float(param.reshape(-1)[0])
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32).double()
            values = constant * torch.exp(0.5 * noise) if constant != 0 else 0.2 * noise
            param.copy_(values.to(param.dtype))
            changed.append(name)
    return changed


def finish_random_component(module: torch.nn.Module, seed: int, index: int) -> None:
    """The last step of every tiny builder's components: no all-zero matrix, no constant parameter (seed slot
    `index`), eval mode."""
    reinit_zero_weights(module)
    randomise_constant_parameters(module, seed, index)
    module.eval()


def config_digest(config: dict[str, Any]) -> str:
    """Short stable hash of a builder config, for cache folder names."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


def save_checkpoint(pipe: Any, out_dir: Path, build_version: int, seed: int, config: dict[str, Any]) -> Path:
    """save_pretrained (safetensors) plus the build record: what made this folder, to rebuild or compare it."""
    import diffusers
    import transformers

    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    info = {
        "build_version": build_version,
        "random_weights": True,  # `diffparity run --model DIR --expect auto` then expects noise
        "seed": seed,
        "config": config,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    (out_dir / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out_dir


def checkpoint_folder(family: str, build_version: int, seed: int, digest: str | None) -> Path:
    """The cache folder of a tiny checkpoint; a non-default config adds its digest to the name."""
    name = f"{family}-tiny-v{build_version}-seed{seed}"
    if digest is not None:
        name += f"-{digest}"
    return cache_root() / "checkpoints" / name


def config_checkpoint_dir(family: str, build_version: int, seed: int, config: Any, default: Any) -> Path:
    """A tiny checkpoint's cache folder for `config` (a dataclass with `digest()`); the default config's name
    carries no config hash."""
    is_default = config is None or config == default
    return checkpoint_folder(family, build_version, seed, None if is_default else config.digest())


def build_once(final: Path, build: Callable[[Path], Any]) -> Path:
    """`final`, built by `build(folder)` on first use.

    Builds into a temporary sibling folder and renames it into place, so concurrent callers (pytest-xdist
    workers) see either no folder or a complete one; a loser of the race discards its own copy.
    """
    if (final / "model_index.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_folders(final.parent, (final.name,), sep=".")  # a build killed outright (SIGKILL) left its folder
    # .NAME.PID.xxxx: a stop signal removes it on the way out (harness/lifetime.py), a later build sweeps it
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", dir=final.parent))
    with tracked(tmp):  # removed on every way out, a stop signal included (harness/lifetime.py)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "model_index.json").is_file():
                raise RuntimeError(f"cannot create {final}: it exists but is not a checkpoint; delete it") from None
    return final
