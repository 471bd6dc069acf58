"""Traces that do not hold their records in memory: one streaming to a spool, one reading a file lazily.

- `TraceWriter` streams each record's bytes to an anonymous spool file as it is recorded and keeps only
  (dtype, shape, offset, crc32) in memory, so a 50-step run does not hold 50 steps of tensors;
- `TraceReader` reads a trace file lazily, one record at a time, checking each record's crc32.
`open_trace(meta, spool_dir)` picks `Trace` (in memory) or `TraceWriter`.
"""

from __future__ import annotations

import tempfile
import weakref
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import torch

from harness.trace.file_format import CHUNK, byte_view, read_exact, read_record, read_trace_header
from harness.trace.keys import RecordKey, RecordSpec, TraceError
from harness.trace.memory import Trace


class _FileBacked(Trace):
    """Shared by the writer and the reader: records are `RecordSpec`s into a binary file (`self._file`)."""

    _file: IO[bytes] | None
    _data_start: int
    _index: dict[RecordKey, RecordSpec]
    _where: str

    def _names(self) -> Iterable[RecordKey]:
        return self._index.keys()

    def spec(self, key: RecordKey) -> tuple[torch.dtype, tuple[int, ...]]:
        spec = self._index[key]
        return spec.dtype, spec.shape

    def _handle(self) -> IO[bytes]:
        if self._file is None or self._file.closed:
            raise TraceError(f"{self._where} is closed")
        return self._file

    def _load(self, key: RecordKey) -> torch.Tensor:
        return read_record(self._handle(), self._data_start, self._index[key], self._where, key)

    def _crc32(self, key: RecordKey) -> int:
        return self._index[key].crc32

    def _write_record(self, key: RecordKey, out: IO[bytes]) -> None:
        """Copy the record's bytes in chunks, checking them against their crc32 on the way."""
        spec = self._index[key]
        handle = self._handle()
        crc, done = 0, 0
        while done < spec.nbytes:
            chunk = read_exact(handle, self._data_start + spec.offset + done, min(CHUNK, spec.nbytes - done))
            crc = zlib.crc32(chunk, crc)
            out.write(chunk)
            done += len(chunk)
        if crc != spec.crc32:
            raise TraceError(f"{self._where}: record {key.name()} is corrupt (crc32 mismatch while copying)")

    def close(self) -> None:
        """Release the file (a writer's spool is deleted with it). Reading afterwards raises TraceError."""
        if self._file is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class TraceWriter(_FileBacked):
    """A trace that streams every record to an anonymous spool file as it is recorded (bounded memory).

    Memory held: the index (dtype, shape, offset, crc32 per record) and `meta`. The spool is an unnamed
    temporary file in `spool_dir` (system temp folder when None): it never shows up in an output folder and
    disappears with the process, even one that is killed. `save(path)` writes the safetensors file.
    """

    def __init__(self, meta: dict | None = None, spool_dir: str | Path | None = None,
                 environment: dict | None = None) -> None:
        super().__init__(meta, environment)
        if spool_dir is not None:
            Path(spool_dir).mkdir(parents=True, exist_ok=True)
        # held until close(); unnamed, so deleted by the OS when closed or when the process dies
        self._file = tempfile.TemporaryFile(dir=spool_dir, prefix=".trace-", suffix=".spool", buffering=0)  # noqa: SIM115
        weakref.finalize(self, self._file.close)
        self._data_start = 0
        self._end = 0
        self._index = {}
        self._where = "trace spool"

    def _store(self, key: RecordKey, tensor: torch.Tensor) -> None:
        view = byte_view(tensor)
        handle = self._handle()
        handle.seek(self._end)
        written = 0
        while written < len(view):
            written += handle.write(view[written:]) or 0
        # a re-recorded key leaves its old bytes unused in the spool; `save` copies only live records
        self._index[key] = RecordSpec(tensor.dtype, tuple(tensor.shape), self._end, len(view), zlib.crc32(view))
        self._end += len(view)


class TraceReader(_FileBacked):
    """A trace file opened lazily: the header is checked when opened, each record is read (and its crc32
    checked) when asked for, so reading or comparing traces holds one record at a time.

    Read-only: `record` raises TraceError. `meta` may be edited and is written by `save`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._where = str(self.path)
        self._file = None
        meta, environment, index, data_start = read_trace_header(self.path)
        super().__init__(meta, environment)
        self._index = index
        self._data_start = data_start
        self._file = open(self.path, "rb")  # noqa: SIM115 - held until close(); reads the file validated above
        weakref.finalize(self, self._file.close)

    def record(self, stage: str, field: str, tensor: torch.Tensor, step: int | None = None) -> None:
        raise TraceError(f"{self._where} is a trace read from a file; record into a Trace or a TraceWriter")


def open_trace(meta: dict | None = None, spool_dir: str | Path | None = None) -> Trace:
    """The trace a pipeline run records into: streaming to an anonymous spool in `spool_dir` (the run's output
    folder, so the spool sits on the same disk as the trace it becomes) when given, in memory otherwise."""
    if spool_dir is None:
        return Trace(meta)
    return TraceWriter(meta, spool_dir)
