"""The trace: named tensors of one pipeline run, keyed by (stage, field, step), in a canonical layout.

Both sides write the same keys. Canonical layouts: spatial latents (B, C, H, W) never packed tokens; text
embeddings (B, L, D); pooled embeddings (B, D); sigmas (N+1,) with the terminal sigma; timesteps (N,) on the
scheduler's 0..1000 scale; decoded images (B, C, H, W) as the VAE returns them (about [-1, 1]).

Three kinds of trace share one read API (`get`, `[]`, `in`, `keys` in pipeline order, `items`, `meta`,
`environment`, `save`):
- `Trace` keeps its records in memory (small uses and tests);
- `TraceWriter` streams each record's bytes to an anonymous spool file as it is recorded and keeps only
  (dtype, shape, offset, crc32) in memory, so a 50-step run does not hold 50 steps of tensors;
- `TraceReader` reads a trace file lazily, one record at a time, checking each record's crc32.
`open_trace(meta, spool_dir)` picks the first or the second. The file format is plain safetensors (see
`save`); this module's own header checks turn a truncated, foreign or other-version file into one line.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import weakref
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from harness.file_modes import default_file_mode

STAGES = ("encode", "timesteps", "latents", "denoise", "decode")
# 2: adds the environment fingerprint, a crc32 per record and the "format" marker; records in pipeline order.
SCHEMA_VERSION = 2
FORMAT = "diffparity-trace"

# Within a stage (and within one denoising step) records are ordered as the pipeline produces them.
FIELD_ORDER = {
    "encode": ("pooled_prompt_embeds", "prompt_embeds", "negative_pooled_prompt_embeds", "negative_prompt_embeds"),
    "timesteps": ("sigmas", "timesteps"),
    "latents": ("initial",),
    "denoise": ("transformer_output", "transformer_output_uncond", "noise_pred", "latents"),
    "decode": ("latents", "image"),
}

# safetensors dtype names of the dtypes a trace may hold
DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}

_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on the JSON header
_CHUNK = 8 * 1024 * 1024  # bytes copied at a time when a trace file is written from a spool or another file
_MAX_DIMS, _MAX_DIM = 8, 2**48  # a record has at most 5 axes; larger numbers are a hostile or corrupt header


class TraceError(Exception):
    """A trace file is unreadable, truncated, corrupt, of another schema version, or not a trace at all."""


@dataclass(frozen=True)
class RecordKey:
    """Identifies one recorded tensor. `step` is None outside the denoising loop."""

    stage: str
    field: str
    step: int | None = None

    def name(self) -> str:
        return f"{self.stage}/{self.field}" if self.step is None else f"{self.stage}/{self.field}/{self.step}"

    @classmethod
    def parse(cls, name: str) -> RecordKey:
        parts = name.split("/")
        if len(parts) not in (2, 3) or parts[0] not in STAGES or not parts[1]:
            raise TraceError(f"'{name[:120]}' is not a trace record name (stage/field[/step])")
        step = None
        if len(parts) == 3:
            plain = parts[2].isascii() and parts[2].isdigit() and len(parts[2]) <= 18
            if not plain or str(int(parts[2])) != parts[2]:
                raise TraceError(f"'{name[:120]}' has a step that is not a plain non-negative integer")
            step = int(parts[2])
        return cls(parts[0], parts[1], step)

    def order(self) -> tuple[int, int, int, str]:
        """Sort key in pipeline order: stage, then step, then the field's place within the stage."""
        fields = FIELD_ORDER.get(self.stage, ())
        field_rank = fields.index(self.field) if self.field in fields else len(fields)
        return (STAGES.index(self.stage), -1 if self.step is None else self.step, field_rank, self.field)


@dataclass(frozen=True)
class RecordSpec:
    """Where one record's bytes live (in a spool or a file's data section) and how to rebuild the tensor."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int


def _checked_key(stage: str, field: str, step: int | None) -> RecordKey:
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'; stages are {', '.join(STAGES)}")
    if not field or "/" in field:
        raise ValueError(f"record {stage}/{field}: a field name must be non-empty and contain no '/'")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"record {stage}/{field}: step must be a non-negative int or None, got {step!r}")
    return RecordKey(stage, field, step)


def _cpu_contiguous(stage: str, field: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"record {stage}/{field}: expected a tensor, got {type(tensor).__name__}")
    if tensor.dtype not in DTYPE_NAMES:
        raise ValueError(f"record {stage}/{field}: dtype {tensor.dtype} cannot be stored in a trace")
    return tensor.detach().to("cpu").contiguous()


def _byte_view(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without a copy."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def _tensor_from_bytes(buffer: bytearray, spec: RecordSpec) -> torch.Tensor:
    if spec.nbytes == 0:
        return torch.empty(spec.shape, dtype=spec.dtype)
    return torch.frombuffer(buffer, dtype=spec.dtype).reshape(spec.shape)


def _read_exact(handle: IO[bytes], offset: int, nbytes: int) -> bytearray:
    buffer = bytearray(nbytes)
    handle.seek(offset)
    view = memoryview(buffer)
    done = 0
    while done < nbytes:
        got = handle.readinto(view[done:])
        if not got:
            break
        done += got
    if done != nbytes:
        raise TraceError(f"wanted {nbytes} bytes at offset {offset}, the file ended after {done}")
    return buffer


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
        key = _checked_key(stage, field, step)
        self._store(key, _cpu_contiguous(stage, field, tensor))

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
        out.write(_byte_view(self._records[key]))

    def _crc32(self, key: RecordKey) -> int:
        return zlib.crc32(_byte_view(self._records[key]))

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
            nbytes = _numel(shape) * dtype.itemsize
            header[key.name()] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                                  "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-(8 + len(header_bytes)) % 8)  # data starts 8-byte aligned, as safetensors writes
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(len(header_bytes).to_bytes(8, "little"))
                out.write(header_bytes)
                for key in keys:
                    self._write_record(key, out)
            os.chmod(tmp, default_file_mode())  # mkstemp makes 0600
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def load(path: str | Path) -> Trace:
        """Read a whole trace file into an in-memory `Trace` (`TraceReader` reads one record at a time)."""
        reader = TraceReader(path)
        try:
            trace = Trace(reader.meta, reader.environment)
            for key, tensor in reader.items():
                trace._records[key] = tensor
            return trace
        finally:
            reader.close()


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


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
        spec = self._index[key]
        try:
            buffer = _read_exact(self._handle(), self._data_start + spec.offset, spec.nbytes)
        except TraceError as exc:
            raise TraceError(f"{self._where}: record {key.name()}: {exc}") from None
        if zlib.crc32(buffer) != spec.crc32:
            raise TraceError(f"{self._where}: record {key.name()} is corrupt (crc32 {zlib.crc32(buffer):08x}, "
                             f"the header says {spec.crc32:08x})")
        return _tensor_from_bytes(buffer, spec)

    def _crc32(self, key: RecordKey) -> int:
        return self._index[key].crc32

    def _write_record(self, key: RecordKey, out: IO[bytes]) -> None:
        """Copy the record's bytes in chunks, checking them against their crc32 on the way."""
        spec = self._index[key]
        handle = self._handle()
        crc, done = 0, 0
        while done < spec.nbytes:
            chunk = _read_exact(handle, self._data_start + spec.offset + done, min(_CHUNK, spec.nbytes - done))
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
        view = _byte_view(tensor)
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
        header, data_start, size = _read_header(self.path)
        metadata = _check_metadata(self.path, header)
        super().__init__(_json_field(self.path, metadata, "meta"), _json_field(self.path, metadata, "environment"))
        self._index = _check_records(self.path, header, _json_field(self.path, metadata, "crc32"),
                                     size - data_start)
        self._data_start = data_start
        self._file = open(self.path, "rb")  # noqa: SIM115 - held until close(); reads the file validated above
        weakref.finalize(self, self._file.close)

    def record(self, stage: str, field: str, tensor: torch.Tensor, step: int | None = None) -> None:
        raise TraceError(f"{self._where} is a trace read from a file; record into a Trace or a TraceWriter")


def _read_header(path: Path) -> tuple[dict, int, int]:
    """The parsed safetensors header, where the data section starts, and the file size."""
    try:
        return _read_header_checked(path)
    except OSError as exc:  # a name too long for the file system, no permission, an I/O error
        raise TraceError(f"{str(path)[:200]} cannot be read ({exc.strerror or exc})") from None


def _refuse_foreign(path: Path, start: bytes) -> None:
    """Name a pickle or a zip archive for what it is, once the bytes did not read as a safetensors header (only
    then: the first 8 bytes of a real trace are its header length, which may begin with the same bytes)."""
    if start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise TraceError(f"{path} is a Python pickle, not a safetensors trace (pickles are never loaded)")
    if start[:4] == b"PK\x03\x04":
        raise TraceError(f"{path} is a zip archive (torch.save?), not a safetensors trace")


def _read_header_checked(path: Path) -> tuple[dict, int, int]:
    if not path.exists():
        raise TraceError(f"trace file not found: {path}")
    if not path.is_file():
        raise TraceError(f"{path} is not a file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = handle.read(8)
        if size == 0:
            raise TraceError(f"{path} is empty (0 bytes), not a trace file")
        header_len = int.from_bytes(start, "little")
        if size < 8 or header_len > min(size - 8, _HEADER_LIMIT):
            _refuse_foreign(path, start)
            if size < 8:
                raise TraceError(f"{path} is not a safetensors trace ({size} bytes, shorter than the 8-byte header "
                                 "size)")
            raise TraceError(f"{path} is not a safetensors trace, or is truncated (header length {header_len} "
                             f"does not fit in a {size}-byte file)")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        _refuse_foreign(path, start)
        raise TraceError(f"{path} is not a safetensors trace (header is not JSON: {_first_line(exc)})") from None
    if not isinstance(header, dict):
        raise TraceError(f"{path} is not a safetensors trace (header is a JSON {type(header).__name__})")
    return header, 8 + header_len, size


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to infinity, which no report can hold
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _check_metadata(path: Path, header: dict) -> dict:
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or "schema_version" not in metadata:
        raise TraceError(f"{path} is a safetensors file but not a diffparity trace (no schema_version in its "
                         "metadata)")
    version = metadata["schema_version"]
    if metadata.get("format", FORMAT) != FORMAT:
        raise TraceError(f"{path} is a '{str(metadata.get('format'))[:60]}' file, not a {FORMAT}")
    if version != str(SCHEMA_VERSION):
        raise TraceError(f"{path} has trace schema version {str(version)[:20]}; this harness reads version "
                         f"{SCHEMA_VERSION}")
    return metadata


def _json_field(path: Path, metadata: dict, name: str) -> dict:
    try:
        value = json.loads(metadata[name], parse_constant=_reject_constant, parse_float=_finite_float)
    except KeyError:
        raise TraceError(f"{path} lacks the '{name}' metadata of a version {SCHEMA_VERSION} trace") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise TraceError(f"{path}: metadata '{name}' is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(value, dict):
        raise TraceError(f"{path}: metadata '{name}' is a JSON {type(value).__name__}, expected an object")
    return value


def _check_records(path: Path, header: dict, checksums: dict, data_size: int) -> dict[RecordKey, RecordSpec]:
    """Every tensor entry: a record name, a known dtype, a shape matching its byte range, ranges that tile the
    data section exactly (anything else is a truncated or foreign file), and a crc32."""
    index: dict[RecordKey, RecordSpec] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            key = RecordKey.parse(name)
        except TraceError as exc:
            raise TraceError(f"{path}: {exc}") from None
        try:
            dtype = DTYPES_BY_NAME[entry["dtype"]]
            shape = tuple(entry["shape"])
            begin, end = entry["data_offsets"]
            if (len(shape) > _MAX_DIMS or not all(isinstance(s, int) and 0 <= s <= _MAX_DIM for s in shape)
                    or not all(isinstance(o, int) for o in (begin, end)) or not (0 <= begin <= end)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise TraceError(f"{path}: record {name} has a malformed header entry {str(entry)[:120]}") from None
        if end - begin != _numel(shape) * dtype.itemsize:
            raise TraceError(f"{path}: record {name} spans {end - begin} bytes, but {dtype} {list(shape)} needs "
                             f"{_numel(shape) * dtype.itemsize}")
        if not isinstance(checksums.get(name), int):
            raise TraceError(f"{path}: record {name} has no crc32 in the metadata")
        index[key] = RecordSpec(dtype, shape, begin, end - begin, checksums[name])
    expected = 0
    for key, spec in sorted(index.items(), key=lambda item: item[1].offset):
        if spec.offset != expected:
            raise TraceError(f"{path}: record {key.name()} starts at byte {spec.offset} of the data, expected "
                             f"{expected} (overlapping or gapped records)")
        expected += spec.nbytes
    if expected > data_size:
        raise TraceError(f"{path} is truncated: its records need {expected} data bytes, the file holds {data_size}")
    if expected < data_size:
        raise TraceError(f"{path} has {data_size - expected} bytes after its last record (not a trace file?)")
    return index


def open_trace(meta: dict | None = None, spool_dir: str | Path | None = None) -> Trace:
    """The trace a pipeline run records into: streaming to an anonymous spool in `spool_dir` (the run's output
    folder, so the spool sits on the same disk as the trace it becomes) when given, in memory otherwise."""
    if spool_dir is None:
        return Trace(meta)
    return TraceWriter(meta, spool_dir)
