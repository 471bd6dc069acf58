"""A golden in memory: the reference trace of a case at its default request, whole or summarised per record.

A golden holds every record of the reference trace: whole tensors when the trace is small (`FULL_GOLDEN_LIMIT`,
the tiny cases), else, per record above `SMALL_RECORD_LIMIT`, statistics, a strided sample and the sha256 of the
whole tensor (a *compact* golden: large cases); the tolerance floors of the case, dtype and device class (the
calibration in golden/tolerances/, copied in); the environment fingerprint of the recording process, the command
that made it, the checkpoint's identity (harness/golden/checkpoint_identity.py).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.compare.tolerances import ToleranceSpec
from harness.golden.errors import GoldenError
from harness.golden.request_json import request_from_dict
from harness.run.request import GenerationRequest
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace

FULL_GOLDEN_LIMIT = 1024 * 1024  # a reference trace up to 1 MiB is stored whole (the tiny cases: 0.1-0.4 MiB)
SMALL_RECORD_LIMIT = 16 * 1024  # in a compact golden, records up to 16 KiB (schedules, pooled embeddings) stay whole
SAMPLE_ELEMENTS = 4096  # a compact record keeps every k-th element, k = ceil(numel / SAMPLE_ELEMENTS)
STAT_NAMES = ("mean", "std", "rms", "min", "max", "nonfinite")


@dataclass(frozen=True)
class GoldenRecord:
    """One reference record: whole (`tensor`), or summarised (`sample` = flat[::stride], `stats`, `sha256`)."""

    key: RecordKey
    dtype: torch.dtype
    shape: tuple[int, ...]
    sha256: str  # of the whole tensor's little-endian bytes
    stats: dict[str, float]
    tensor: torch.Tensor | None = None
    sample: torch.Tensor | None = None
    stride: int | None = None

    @property
    def full(self) -> bool:
        return self.tensor is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Golden:
    """A golden: `info` (case, family, dtype, device_class, request, checkpoint, environment, command, created,
    tolerances, compact) and the records in pipeline order."""

    info: dict[str, Any]
    records: dict[RecordKey, GoldenRecord]
    sha256: str = ""
    path: Path | None = None

    @property
    def case(self) -> str:
        return self.info["case"]

    @property
    def dtype(self) -> str:
        return self.info["dtype"]

    @property
    def device_class(self) -> str:
        return self.info["device_class"]

    @property
    def compact(self) -> bool:
        return bool(self.info["compact"])

    def request(self) -> GenerationRequest:
        return request_from_dict(self.info["request"], self.path)

    def reference_trace(self) -> Trace:
        """The whole records as an in-memory trace (what teacher forcing reads its inputs from)."""
        trace = Trace({"case": self.case, "request": self.info["request"], "side": "reference-golden"},
                      self.info["environment"])
        for key, record in self.records.items():
            if record.tensor is not None:
                trace.record(key.stage, key.field, record.tensor, key.step)
        return trace

    def tolerance_spec(self) -> ToleranceSpec:
        """The floors stored in the golden (copied from golden/tolerances/ when it was recorded), else defaults."""
        stored = self.info.get("tolerances")
        if stored is None:
            return ToleranceSpec(self.dtype)
        source = f"golden {self.path or self.case} (floors of {stored['source']})"
        return ToleranceSpec.from_calibration(stored, source)

    def check_for(self, case: str, dtype: str, device_cls: str) -> None:
        """Refuse a golden recorded for another case, dtype or device class than the one asked for."""
        found = (self.case, self.dtype, self.device_class)
        if found != (case, dtype, device_cls):
            raise GoldenError(f"{self.path}: golden is for case {found[0]} {found[1]} on {found[2]}, not for "
                              f"{case} {dtype} on {device_cls}")


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(tensor)).hexdigest()


def record_stats(tensor: torch.Tensor) -> dict[str, float]:
    """mean, std, rms, min, max over the finite elements (float64), and the count of non-finite ones."""
    values = tensor.detach().to(torch.float64).reshape(-1)
    finite = values[torch.isfinite(values)]
    nonfinite = float(values.numel() - finite.numel())
    if finite.numel() == 0:
        return {"mean": math.nan, "std": math.nan, "rms": math.nan, "min": math.nan, "max": math.nan,
                "nonfinite": nonfinite}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std(unbiased=False)),
        "rms": float(finite.square().mean().sqrt()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "nonfinite": nonfinite,
    }


def sample_stride(numel: int, elements: int = SAMPLE_ELEMENTS) -> int:
    return max(1, math.ceil(numel / elements))


def strided_sample(tensor: torch.Tensor, stride: int) -> torch.Tensor:
    return tensor.detach().to("cpu").reshape(-1)[::stride].contiguous()


def golden_from_trace(trace: Trace, info: dict[str, Any], full_limit: int = FULL_GOLDEN_LIMIT,
                      small_limit: int = SMALL_RECORD_LIMIT, sample_elements: int = SAMPLE_ELEMENTS) -> Golden:
    """A golden of a reference trace: whole when the trace fits `full_limit` bytes, else compact (records above
    `small_limit` bytes kept as statistics, sha256 and a strided sample of about `sample_elements`)."""
    total = sum(math.prod(shape) * dtype.itemsize for dtype, shape in (trace.spec(k) for k in trace))
    compact = total > full_limit
    records: dict[RecordKey, GoldenRecord] = {}
    for key, tensor in trace.items():
        tensor = tensor.detach().to("cpu").contiguous()
        base = {"key": key, "dtype": tensor.dtype, "shape": tuple(tensor.shape), "sha256": tensor_sha256(tensor),
                "stats": record_stats(tensor)}
        if not compact or tensor.numel() * tensor.element_size() <= small_limit:
            records[key] = GoldenRecord(**base, tensor=tensor.clone())
        else:
            stride = sample_stride(tensor.numel(), sample_elements)
            records[key] = GoldenRecord(**base, sample=strided_sample(tensor, stride), stride=stride)
    return Golden({**info, "compact": compact}, records)
