"""A `GenerationRequest` from the JSON a golden stores, every field type-checked (a golden may come from anywhere)."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from harness.golden.errors import GoldenCorrupt
from harness.run.request import GenerationRequest
from harness.run.request_image import RequestImage


def request_from_dict(data: Any, path: Path | None = None) -> GenerationRequest:
    """A GenerationRequest from its JSON form, every field type-checked (a golden may come from anywhere)."""
    where = f"{path}: " if path is not None else ""
    if not isinstance(data, dict):
        raise GoldenCorrupt(f"{where}the request is not a JSON object")
    names = {f.name for f in fields(GenerationRequest)}
    unknown = sorted(set(data) - names)
    if unknown or "prompt" not in data:
        raise GoldenCorrupt(f"{where}the request has unknown fields {unknown} or no prompt")
    checks = {
        "prompt": lambda v: isinstance(v, str),
        "negative_prompt": lambda v: v is None or isinstance(v, str),
        "seed": lambda v: is_int(v),
        "steps": lambda v: is_int(v, 1),
        "height": lambda v: is_int(v, 1),
        "width": lambda v: is_int(v, 1),
        "frames": lambda v: is_int(v, 1),
        "max_sequence_length": lambda v: is_int(v, 1),
        "guidance_scale": lambda v: as_number(v) is not None and math.isfinite(float(v)) and not isinstance(v, str),
        "true_cfg_scale": lambda v: as_number(v) is not None and math.isfinite(float(v)) and not isinstance(v, str),
        "true_cfg_scale_2": lambda v: v is None or (as_number(v) is not None and math.isfinite(float(v))
                                                    and not isinstance(v, str)),
        "image": lambda v: v is None or isinstance(v, dict),
        "dtype": lambda v: v in ("fp32", "bf16"),
        "device": lambda v: isinstance(v, str) and v.split(":")[0] in ("cpu", "cuda"),
        "extra_prompts": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
    }
    defaults = {f.name: f.default for f in fields(GenerationRequest)}
    for name, value in data.items():
        check = checks.get(name) or _like(defaults[name])
        if not check(value):
            raise GoldenCorrupt(f"{where}request field {name} = {str(value)[:40]!r} is invalid")
    try:
        if data.get("image") is not None:  # the same pixels again: regenerated or re-read, sha256 checked
            data = {**data, "image": RequestImage.from_dict(data["image"])}
        return GenerationRequest(**data)
    except (TypeError, ValueError) as exc:
        raise GoldenCorrupt(f"{where}the request is invalid ({_one_line(exc)})") from None


def _like(default: Any) -> Any:
    """A type check for a request field this module has no rule for: the JSON type of its default."""
    if isinstance(default, bool):
        return lambda v: isinstance(v, bool)
    if isinstance(default, int):
        return lambda v: is_int(v)
    if isinstance(default, float):
        return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if isinstance(default, str):
        return lambda v: isinstance(v, str)
    return lambda v: v is None or isinstance(v, str | int | float)


def is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def _one_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]
