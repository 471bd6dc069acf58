"""Calibration of a user's checkpoint, stored by the checkpoint's identity and found again by it.

`diffparity calibrate --model DIR` measures the floors of every record on that checkpoint at a small request
(harness/golden/calibrate.py: the reference against itself under another attention kernel and thread count, and
in float64 when the checkpoint fits in memory at 8 bytes a parameter; otherwise the floors are kernel-to-kernel
only and say so). The file is keyed by the checkpoint's identity (harness/golden/checkpoint_identity.py: tensors,
semantic configs and tokenizers, not the folder's name or path), so a later `run --model` of the same weights, from
any path or a renamed copy, uses it, and one of other weights never does. Files live under
$DIFFPARITY_CACHE/calibrations/ (default ~/.cache/diffparity): a user's measurements, not the project's goldens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.compare.tolerances import (
    ToleranceError,
    ToleranceSpec,
    device_class,
    load_tolerance_spec,
    read_calibration,
)
from harness.golden.checkpoint_identity import checkpoint_identity
from native_models.safetensors_header import read_safetensors_header
from native_models.tokenizer_cache import cache_root

FP64_BYTES = 8
FP64_HEADROOM = 1.5  # the fp64 reference holds weights plus activations and the baseline's trace beside them
GIB = 1024**3
NO_CALIBRATION = ("no calibration for this checkpoint: thresholds are the dtype defaults; "
                  "`diffparity calibrate --model DIR` measures its floors")


def calibrations_dir() -> Path:
    return cache_root() / "calibrations"


def identity_digest(checkpoint: Path) -> tuple[str, str]:
    """(sha256 digest, how it was taken: "content" or "headers") of the checkpoint's identity."""
    identity = checkpoint_identity(checkpoint)
    return identity["digest"], identity["kind"]


def model_calibration_path(family: str, digest: str, dtype: str, device: str, root: Path | None = None) -> Path:
    """$DIFFPARITY_CACHE/calibrations/FAMILY-DIGEST16.DTYPE.DEVICE_CLASS.json"""
    return (root or calibrations_dir()) / f"{family}-{digest[:16]}.{dtype}.{device_class(device)}.json"


def parameter_count(checkpoint: Path) -> int:
    """Elements of every tensor in the checkpoint's safetensors files, from their headers alone."""
    return sum(info.numel for file in sorted(checkpoint.rglob("*.safetensors"))
               for info in read_safetensors_header(file).values())


def available_bytes(device: str) -> int:
    """Memory the fp64 reference could use now: the GPU's free memory, else the host's MemAvailable."""
    import torch

    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def fp64_fits(checkpoint: Path, dtype: str, device: str) -> tuple[bool, str]:
    """Whether the fp64 perturbation runs, and the sentence the calibration stores about it."""
    if dtype != "fp32":
        return False, f"kernel-to-kernel only: the fp64 reference measures fp32 rounding, not {dtype}'s"
    need = parameter_count(checkpoint) * FP64_BYTES * FP64_HEADROOM
    have = available_bytes(device)
    if need > have:
        return False, (f"kernel-to-kernel only: the fp64 reference would need about {need / GIB:.1f} GiB, "
                       f"{have / GIB:.1f} GiB available on {device}")
    return True, f"kernel-to-kernel and fp64 (about {need / GIB:.1f} GiB needed, {have / GIB:.1f} GiB available)"


def annotate(document: dict[str, Any], family: str, digest: str, kind: str, floors: str, model: str) -> None:
    """Add what ties a calibration document to its checkpoint and how its floors were measured."""
    document["family"] = family
    document["checkpoint"] = model
    document["checkpoint_identity"] = {"digest": digest, "kind": kind}
    document["floors"] = floors


def model_tolerance_spec(family: str, checkpoint: Path, dtype: str, device: str,
                         root: Path | None = None) -> ToleranceSpec:
    """The calibration stored for this checkpoint's identity, dtype and device class, else the defaults; either
    way `calibration` says which (report["tolerances"]["calibration"])."""
    digest, _ = identity_digest(checkpoint)
    path = model_calibration_path(family, digest, dtype, device, root)
    if not path.is_file():
        return ToleranceSpec(dtype, calibration={"used": False, "identity": digest[:16], "note": NO_CALIBRATION})
    data = read_calibration(path)
    recorded = (data.get("checkpoint_identity") or {}).get("digest")
    if recorded != digest or data.get("dtype") != dtype:
        raise ToleranceError(f"{path} calibrates checkpoint {str(recorded)[:16]} in {data.get('dtype')!r}, "
                             f"not {digest[:16]} in {dtype!r}")
    spec = ToleranceSpec.from_calibration(data, str(path))
    info = {"used": True, "path": str(path), "identity": digest[:16], "floors": data.get("floors"),
            "measured_on": data.get("checkpoint"), "requests": data.get("requests")}
    return ToleranceSpec(spec.dtype, spec.calibrated, spec.floors, spec.source, calibration=info)


def case_tolerance_spec(case: str, dtype: str, device: str, model: str | None) -> ToleranceSpec:
    """A case run's tolerances (harness/compare/tolerances.py), saying which calibration they come from."""
    spec = load_tolerance_spec(case, dtype, device, model)
    if spec.calibrated:
        info: dict[str, Any] = {"used": True, "path": spec.source, "note": f"case {case}'s stored calibration"}
    else:
        info = {"used": False, "note": NO_CALIBRATION if model else f"case {case} has no stored calibration for "
                f"{dtype} on {device_class(device)}: thresholds are the dtype defaults"}
    return ToleranceSpec(spec.dtype, spec.calibrated, spec.floors, spec.source, calibration=info)
