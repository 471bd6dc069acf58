"""Will this request fit in memory? An estimate of the largest activations, checked before either side runs.

The request limits (native_models/limits.py) only bound a request structurally (sides <= 8192 px): within
them a tiny model at 2048x2048 needs one 2.3 GB attention score matrix, and at 4096x4096 one of 35 GB. What
decides whether a run can finish is memory, so the run is refused (RequestError, exit 2) when the estimate
exceeds what this process can still get, and warned about when it takes more than half of it.

The estimate reads only config.json files and assumes the geometry of the families here (FLUX, Wan): a VAE
that scales 8x per side, a DiT token per 2x2 latent patch (16x16 pixels), Wan's 4 frames per latent frame. Its
parts do not coexist, so the peak is their maximum:
- DiT attention with the 'math' kernel (the CPU default; it materialises the scores): batch x heads x
  tokens^2 x 4 bytes, twice (scores and their softmax);
- VAE mid-block attention (one head over every latent pixel of a frame): latent_pixels^2 x 4 bytes, twice;
- VAE decoder convolutions at each resolution: batch x frames x pixels / 4^level x channels x 4 bytes,
  three alive at once (input, output, residual).
"""

from __future__ import annotations

import math
import resource
from pathlib import Path
from typing import Any

from harness.run.request import GenerationRequest
from native_models.attention import get_attention_backend
from native_models.errors import RequestError
from native_models.loader import read_json

PIXELS_PER_TOKEN_SIDE = 16  # 8x VAE, then 2x2 patches (FLUX packing, Wan's patch_size (1, 2, 2))
VAE_SCALE = 8
FRAMES_PER_LATENT_FRAME = 4
FLOAT_BYTES = 4  # scores and VAE activations are float32 on the CPU (bf16 runs upcast the VAE and softmax)
WARN_SHARE = 0.5


def _number(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _channels(vae: dict[str, Any]) -> list[int]:
    """Decoder channels per resolution level, full resolution first (AutoencoderKL, or Wan's base_dim x mult)."""
    blocks = vae.get("block_out_channels")
    if isinstance(blocks, list) and blocks and all(isinstance(c, int) and c > 0 for c in blocks):
        return list(blocks)
    base = _number(vae, "base_dim", 128)
    mults = vae.get("dim_mult") if isinstance(vae.get("dim_mult"), list) else [1, 2, 4, 4]
    return [base * m for m in mults if isinstance(m, int) and m > 0] or [base]


def materialises_scores(device: str) -> bool:
    """Whether the native attention holds whole score matrices: the 'math' kernel, the CPU default
    (native_models/attention.py); SDPA and flash-attn on CUDA work in tiles."""
    backend = get_attention_backend()
    return backend == "math" or (backend == "auto" and device == "cpu")


def estimate_peak_bytes(checkpoint: Path, request: GenerationRequest) -> tuple[int, str]:
    """(bytes, what needs them) of the largest activation the request needs on either side."""
    transformer = read_json(checkpoint / "transformer" / "config.json") if (checkpoint / "transformer").is_dir() else {}
    vae = read_json(checkpoint / "vae" / "config.json") if (checkpoint / "vae").is_dir() else {}
    batch, frames = request.batch_size, max(request.frames, 1)
    latent_frames = (frames - 1) // FRAMES_PER_LATENT_FRAME + 1
    side = PIXELS_PER_TOKEN_SIDE
    tokens = latent_frames * math.ceil(request.height / side) * math.ceil(request.width / side)
    tokens += request.max_sequence_length if "joint_attention_dim" in transformer else 0  # FLUX joint attention
    heads = _number(transformer, "num_attention_heads", 24)
    parts: dict[str, int] = {}
    if materialises_scores(request.device):
        parts[f"DiT attention scores ({heads} heads x {tokens} tokens^2)"] = 2 * batch * heads * tokens**2 * FLOAT_BYTES
        latent_pixels = math.ceil(request.height / VAE_SCALE) * math.ceil(request.width / VAE_SCALE)
        parts[f"VAE attention over {latent_pixels} latent pixels"] = 2 * batch * latent_pixels**2 * FLOAT_BYTES
    pixels = batch * frames * request.height * request.width
    conv = max(channels * pixels // 4**level for level, channels in enumerate(_channels(vae)))
    parts["VAE decoder activations"] = 3 * conv * FLOAT_BYTES
    what = max(parts, key=parts.__getitem__)
    return parts[what], what


def available_bytes() -> int:
    """Memory this process can still get: the least of the machine's available memory, the address-space
    limit left (ulimit -v) and the cgroup's limit left (a container)."""
    limits = []
    meminfo = _read_fields(Path("/proc/meminfo"))
    if "MemAvailable" in meminfo:
        limits.append(meminfo["MemAvailable"] * 1024)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    status = _read_fields(Path("/proc/self/status"))
    if soft != resource.RLIM_INFINITY and "VmSize" in status:
        limits.append(max(soft - status["VmSize"] * 1024, 0))
    cgroup = Path("/sys/fs/cgroup")
    try:
        maximum = (cgroup / "memory.max").read_text().strip()
        if maximum.isdigit():
            limits.append(max(int(maximum) - int((cgroup / "memory.current").read_text()), 0))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else 1 << 62


def _read_fields(path: Path) -> dict[str, int]:
    fields: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            value = rest.split()
            if value and value[0].isdigit():
                fields[name] = int(value[0])
    except OSError:
        pass
    return fields


def check_memory(checkpoint: Path, request: GenerationRequest, available: int | None = None) -> str | None:
    """Raise RequestError when the request's estimated peak exceeds the memory available; returns a warning
    line when it takes more than half of it (None otherwise)."""
    peak, what = estimate_peak_bytes(checkpoint, request)
    room = available_bytes() if available is None else available
    size = f"{request.height}x{request.width}" + (f"x{request.frames} frames" if request.frames > 1 else "")
    if peak > room:
        raise RequestError(f"{size} needs about {peak / 2**30:.1f} GiB for the {what}, only "
                           f"{room / 2**30:.1f} GiB of memory is available: choose a smaller size")
    if peak > WARN_SHARE * room:
        return (f"warning: {size} needs about {peak / 2**30:.1f} GiB for the {what}, more than half of the "
                f"{room / 2**30:.1f} GiB available")
    return None


__all__ = ["available_bytes", "check_memory", "estimate_peak_bytes"]
