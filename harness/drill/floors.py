"""Per-module floors and thresholds: what a module's error is judged against.

A module's floor is measured as a stage's is (harness/compare/tolerances.py explains floors and the 3x rule):
the reference against itself under legitimate perturbations, `diffparity calibrate CASE --modules`
(harness/golden/module_floors.py): kernel to kernel (the SDPA math kernel, another thread count) and against
a higher-precision twin of the same module (float64 for an fp32 run, float32 for a bf16 one: the module's own
rounding error). Local floors come from the forced pass (each module fed the baseline's inputs), inherited
floors from the free pass. Floors are stored per component and per module *pattern* (indices starred:
`transformer_blocks.*.attn`), so a calibration holds for a config of any depth.

    threshold = max(FLOOR_MULTIPLE * floor, minimum_threshold(dtype))        (metric: rel_l2)

Where no calibration covers a module the defaults below apply, labelled `default` in the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.compare.tolerances import GOLDEN_DIR, ToleranceError, checkpoint_label, device_class

MODULE_FLOORS_SCHEMA_VERSION = 1
KINDS = ("local", "inherited")

# Uncalibrated thresholds (rel_l2), measured on the tiny checkpoints (CPU). fp32: two correct modules differ by
# summation order only (worst local 1.3e-6, a T5 attention; worst inherited 2.3e-6, a T5 feed-forward), so 1e-5,
# the stage default, still sees a GroupNorm eps change (1.5e-6 to 3e-5 at module level only with a calibrated
# floor). bf16: a module that rounds differently from the reference differs by a few bf16 roundings of its output
# (worst local 1.6e-2, the Wan VAE decode as a whole; worst inherited 1.7e-2), so 5e-2 locally and 1e-1 inherited
# (errors grow through a deep stack); a catalog fault moves its module by >= 0.1 in bf16.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"local": 1e-5, "inherited": 1e-5},
    "bf16": {"local": 5e-2, "inherited": 1e-1},
}


@dataclass(frozen=True)
class Judgement:
    """The floor and threshold one module is judged by, for local or inherited error, and where they came from."""

    floor: float | None
    threshold: float
    source: str  # "calibrated" or "default"


@dataclass
class ModuleFloors:
    """Calibrated floors of a case (component -> pattern -> kind -> {floor, threshold}), or none (defaults)."""

    dtype: str
    entries: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    source: str = "default"

    def judgement(self, component: str, pattern: str, kind: str) -> Judgement:
        """`pattern`: the module's name pattern on the reference side (`generic_name`)."""
        entry = self.entries.get(component, {}).get(pattern, {}).get(kind)
        if entry is not None:
            return Judgement(float(entry["floor"]), float(entry["threshold"]), "calibrated")
        return Judgement(None, DEFAULT_THRESHOLDS.get(self.dtype, DEFAULT_THRESHOLDS["fp32"])[kind], "default")

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "components": sorted(self.entries),
                "defaults": DEFAULT_THRESHOLDS.get(self.dtype, DEFAULT_THRESHOLDS["fp32"])}


def module_floors_path(case: str, dtype: str, device: str, model: str | None = None,
                       root: Path | None = None) -> Path:
    """golden/tolerances/CASE[@MODEL].DTYPE.DEVICE_CLASS.modules.json (beside the stage calibration)."""
    label = checkpoint_label(model)
    stem = case if label == "builtin" else f"{case}@{label}"
    return (root or GOLDEN_DIR) / f"{stem}.{dtype}.{device_class(device)}.modules.json"


def _checked(path: Path, data: Any, case: str, dtype: str) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("schema_version") != MODULE_FLOORS_SCHEMA_VERSION:
        raise ToleranceError(f"{path} is not a module-floor file of schema {MODULE_FLOORS_SCHEMA_VERSION}")
    if (data.get("case"), data.get("dtype")) != (case, dtype):
        raise ToleranceError(f"{path} calibrates case {data.get('case')!r} dtype {data.get('dtype')!r}, "
                             f"not {case!r} {dtype!r}")
    components = data.get("components")
    if not isinstance(components, dict):
        raise ToleranceError(f"{path} lacks a 'components' mapping")
    for component, patterns in components.items():
        if not isinstance(patterns, dict):
            raise ToleranceError(f"{path}: component {str(component)[:40]} is not a mapping")
        for pattern, kinds in patterns.items():
            for kind in KINDS:
                values = kinds.get(kind) if isinstance(kinds, dict) else None
                if values is None:
                    continue
                ok = isinstance(values, dict) and all(
                    isinstance(values.get(k), int | float) and not isinstance(values.get(k), bool)
                    and 0 <= values[k] < math.inf for k in ("floor", "threshold"))
                if not ok:
                    raise ToleranceError(f"{path}: malformed entry {str(pattern)[:60]}/{kind}")
    return data


def load_module_floors(case: str, dtype: str, device: str, model: str | None = None,
                       root: Path | None = None) -> ModuleFloors:
    """The stored module floors of (case, checkpoint, dtype, device class), else defaults only."""
    path = module_floors_path(case, dtype, device, model, root)
    if not path.is_file():
        return ModuleFloors(dtype)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ToleranceError(f"{path} is not a readable module-floor file ({type(exc).__name__})") from None
    data = _checked(path, data, case, dtype)
    try:
        shown = str(path.relative_to(GOLDEN_DIR.parent.parent))
    except ValueError:
        shown = str(path)
    return ModuleFloors(dtype, data["components"], shown)
