"""Number formatting shared by the noise detector's verdicts: short reasons and JSON-safe dicts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def fmt(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def round6(value: float) -> float:
    return float(f"{value:.6g}")


def json_safe(value: Any) -> Any:
    """Floats rounded to 6 significant digits, NaN/inf as None, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round6(value) if math.isfinite(value) else None
    return value
