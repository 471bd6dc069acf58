"""The in-memory trace: named tensors of one pipeline run, keyed by (stage, field, step), in a canonical layout.

Three kinds of trace share one read API (`get`, `[]`, `in`, `keys` in pipeline order, `items`, `meta`,
`environment`, `save`): `Trace` here keeps its records in memory (small uses and tests); `TraceWriter` and
`TraceReader` (harness/trace/streaming.py) keep them in a spool or a file. The file format is
harness/trace/file_format.py.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from harness.files import atomic_output
from harness.trace.file_format import byte_view, numel, read_record, read_trace_header
from harness.trace.keys import DTYPE_NAMES, FORMAT, SCHEMA_VERSION, RecordKey, checked_key, cpu_contiguous


def current_environment(meta: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint of this process for a trace whose meta names its device, dtype and attention backend."""
    from harness.environment import environment

    request = meta.get("request") if isinstance(meta.get("request"), dict) else {}
    return environment(
        str(meta.get("device") or request.get("device") or "cpu"),
        str(meta.get("dtype") or request.get("dtype") or "unknown"),
        str(meta.get("attention_backend") or "unrecorded"),
    )


class Trace:
    """An ordered collection of records plus free-form metadata (case, seed, dtype...), held in memory.

    Records are detached CPU copies in the dtype they were produced in; comparison upcasts to float64.
    `environment` is the fingerprint of the process that recorded it; when None it is taken at `save` time.
    Subclasses change where the records live, not what a caller sees.
    """

    def __init__(self, meta: dict | None = None, environment: dict | None = None) -> None:
        self.meta: dict = dict(meta or {})
        self.environment: dict | None = dict(environment) if environment is not None else None
        self._records: dict[RecordKey, torch.Tensor] = {}

    # --- writing ---------------------------------------------------------------------------------------------

    def record(self, stage: str, field: str, tensor: torch.Tensor, step: int | None = None) -> None:
        """Store one tensor; the signature matches the native runtime's `Recorder` protocol."""
        key = checked_key(stage, field, step)
        self._store(key, cpu_contiguous(stage, field, tensor))

    def _store(self, key: RecordKey, tensor: torch.Tensor) -> None:
        # a copy: the producer may update its tensor in place after recording it
        self._records[key] = tensor.clone()

    # --- reading ---------------------------------------------------------------------------------------------

    def _names(self) -> Iterable[RecordKey]:
        return self._records.keys()

    def _load(self, key: RecordKey) -> torch.Tensor:
        return self._records[key]

    def spec(self, key: RecordKey) -> tuple[torch.dtype, tuple[int, ...]]:
        """(dtype, shape) of a record without loading it."""
        tensor = self._records[key]
        return tensor.dtype, tuple(tensor.shape)

    def __getitem__(self, key: RecordKey) -> torch.Tensor:
        if key not in self:
            raise KeyError(key)
        return self._load(key)

    def get(self, key: RecordKey) -> torch.Tensor | None:
        return self._load(key) if key in self else None

    def __contains__(self, key: object) -> bool:
        return key in self._names()

    def __len__(self) -> int:
        return len(list(self._names()))

    def keys(self) -> list[RecordKey]:
        """Record keys in pipeline order."""
        return sorted(self._names(), key=RecordKey.order)

    def __iter__(self) -> Iterator[RecordKey]:
        return iter(self.keys())

    def items(self) -> Iterator[tuple[RecordKey, torch.Tensor]]:
        """(key, tensor) in pipeline order; file-backed traces load one tensor per iteration."""
        for key in self.keys():
            yield key, self._load(key)

    # --- files -----------------------------------------------------------------------------------------------

    def _write_record(self, key: RecordKey, out: IO[bytes]) -> None:
        out.write(byte_view(self._records[key]))

    def _crc32(self, key: RecordKey) -> int:
        return zlib.crc32(byte_view(self._records[key]))

    def save(self, path: str | Path) -> None:
        """Write the trace as one safetensors file, records in pipeline order (atomic: a temporary file in the
        same folder renamed into place, so a reader never sees half a trace).

        `__metadata__` holds `format`, `schema_version`, `meta` (JSON), `environment` (JSON) and `crc32` (JSON:
        record name -> crc32 of its bytes). Any safetensors reader can open the file.
        """
        path = Path(path)
        keys = self.keys()
        specs = {key: self.spec(key) for key in keys}
        environment = self.environment if self.environment is not None else current_environment(self.meta)
        header: dict[str, Any] = {
            "__metadata__": {
                "format": FORMAT,
                "schema_version": str(SCHEMA_VERSION),
                "meta": json.dumps(self.meta, default=str),
                "environment": json.dumps(environment, default=str),
                "crc32": json.dumps({key.name(): self._crc32(key) for key in keys}),
            }
        }
        offset = 0
        for key in keys:
            dtype, shape = specs[key]
            nbytes = numel(shape) * dtype.itemsize
            header[key.name()] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                                  "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-(8 + len(header_bytes)) % 8)  # data starts 8-byte aligned, as safetensors writes
        with atomic_output(path) as out:
            out.write(len(header_bytes).to_bytes(8, "little"))
            out.write(header_bytes)
            for key in keys:
                self._write_record(key, out)

    @staticmethod
    def load(path: str | Path) -> Trace:
        """Read a whole trace file into an in-memory `Trace` (`TraceReader` reads one record at a time)."""
        path = Path(path)
        meta, environment, index, data_start = read_trace_header(path)
        trace = Trace(meta, environment)
        with open(path, "rb") as handle:
            for key in sorted(index, key=RecordKey.order):
                trace._records[key] = read_record(handle, data_start, index[key], str(path), key)
        return trace
