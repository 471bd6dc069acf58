"""Bounded storage of one side's module outputs, read back when the other side produces the same output.

A drill compares every module output of a component twice (harness/drill/engine.py): in the module-level
forced pass against the other side's output while both are alive (exact), and in the free pass against an
output recorded earlier. Those earlier outputs are kept here, in a trace (harness/trace/streaming.py): each
tensor up to `full_bytes` is streamed whole to the trace's anonymous spool on disk (memory holds its offset),
a larger one is reduced to a fixed strided sample of `sample_size` elements, compared on those elements only
(`Stored.sampled`). Memory a drill adds is thus bounded whatever the model size: one chunk of float64 per
comparison, one spooled tensor read back at a time, and the samples. A store can be saved as a trace file and
opened again (a multi-rank drill hands its ranks' outputs back that way, harness/drill/multirank.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.trace.memory import Trace
from harness.trace.streaming import TraceReader, TraceWriter

FULL_BYTES = 16 * 1024 * 1024  # tensors up to this size are compared exactly
SAMPLE_SIZE = 65536  # elements kept of a larger tensor: its fixed strided sample
SAMPLED = "#sampled"  # field suffix of a sample record

Key = tuple[str, int, str]  # (module name, call index, output label)


def sample_indices(numel: int, size: int = SAMPLE_SIZE) -> torch.Tensor:
    """`size` evenly spread flat indices of a tensor of `numel` elements (all of them when it is smaller)."""
    if numel <= size:
        return torch.arange(numel)
    return torch.linspace(0, numel - 1, size, dtype=torch.float64).round().to(torch.int64)


def take_sample(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The elements of `tensor` (flattened) at `indices`, as a CPU tensor of its dtype."""
    return tensor.detach().reshape(-1)[indices.to(tensor.device)].to("cpu")


def field_name(key: Key) -> str:
    """A trace field for a key: 'module|call|label' (module names hold dots, never '|' or '/')."""
    name, call, label = key
    return f"{name}|{call}|{label.replace('/', '_')}"


@dataclass(frozen=True)
class Stored:
    """One stored output: the whole tensor (`indices` None) or its sample at `indices`."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    tensor: torch.Tensor
    indices: torch.Tensor | None = None

    @property
    def sampled(self) -> bool:
        return self.indices is not None

    def counterpart(self, other: torch.Tensor) -> torch.Tensor:
        """`other` (a tensor of `shape`) reduced the way this one was: whole, or at the same indices."""
        return other if self.indices is None else take_sample(other, self.indices)


class OutputStore:
    """Module outputs keyed by (module, call, label), in a trace of `stage`: small ones whole, large ones sampled."""

    def __init__(self, stage: str, spool_dir: str | Path | None = None, full_bytes: int = FULL_BYTES,
                 sample_size: int = SAMPLE_SIZE, trace: Trace | None = None) -> None:
        self.stage = stage
        self.full_bytes = full_bytes
        self.sample_size = sample_size
        self.trace = trace if trace is not None else TraceWriter({"kind": "drill-outputs"}, spool_dir)
        self.trace.meta.setdefault("sampled", {})
        self.trace.meta.update(stage=stage, sample_size=sample_size)
        self.whole_bytes = 0  # bytes of the outputs kept whole (in the spool, for a streaming trace)
        self.sampled_count = 0  # outputs reduced to their sample

    @classmethod
    def open(cls, path: Path) -> OutputStore:
        """A store saved with `save` (read lazily)."""
        reader = TraceReader(path)
        return cls(str(reader.meta.get("stage", "denoise")), sample_size=int(reader.meta.get("sample_size",
                                                                                             SAMPLE_SIZE)),
                   trace=reader)

    def put(self, key: Key, tensor: torch.Tensor) -> None:
        tensor = tensor.detach()
        field = field_name(key)
        if tensor.numel() * tensor.element_size() > self.full_bytes:
            indices = sample_indices(tensor.numel(), self.sample_size)
            self.trace.meta["sampled"][field] = list(tensor.shape)
            self.trace.record(self.stage, field + SAMPLED, take_sample(tensor, indices))
            self.sampled_count += 1
        else:
            self.trace.record(self.stage, field, tensor)
            self.whole_bytes += tensor.numel() * tensor.element_size()

    def get(self, key: Key) -> Stored | None:
        from harness.trace.keys import RecordKey

        field = field_name(key)
        shape = self.trace.meta["sampled"].get(field)
        if shape is not None:
            values = self.trace.get(RecordKey(self.stage, field + SAMPLED))
            if values is None:
                return None
            numel = 1
            for size in shape:
                numel *= int(size)
            return Stored(tuple(shape), values.dtype, values, sample_indices(numel, self.sample_size))
        tensor = self.trace.get(RecordKey(self.stage, field))
        return None if tensor is None else Stored(tuple(tensor.shape), tensor.dtype, tensor)

    def save(self, path: Path) -> None:
        self.trace.save(path)

    def close(self) -> None:
        close = getattr(self.trace, "close", None)
        if close is not None:
            close()
