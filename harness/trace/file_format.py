"""The trace file: plain safetensors whose `__metadata__` says what it is, read with every header checked.

`__metadata__` holds `format` ("diffparity-trace"), `schema_version`, `meta` (JSON), `environment` (JSON) and
`crc32` (JSON: record name -> crc32 of its bytes); records follow in pipeline order. Any safetensors reader can
open the file; the checks here turn a truncated, foreign or other-version file into one line (TraceError), and
each record read is checked against its crc32.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import IO, Any

import torch

from harness.trace.keys import DTYPES_BY_NAME, FORMAT, SCHEMA_VERSION, RecordKey, RecordSpec, TraceError

_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on the JSON header
CHUNK = 8 * 1024 * 1024  # bytes copied at a time when a trace file is written from a spool or another file
_MAX_DIMS, _MAX_DIM = 8, 2**48  # a record has at most 5 axes; larger numbers are a hostile or corrupt header


def byte_view(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without a copy."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def tensor_from_bytes(buffer: bytearray, spec: RecordSpec) -> torch.Tensor:
    if spec.nbytes == 0:
        return torch.empty(spec.shape, dtype=spec.dtype)
    return torch.frombuffer(buffer, dtype=spec.dtype).reshape(spec.shape)


def read_exact(handle: IO[bytes], offset: int, nbytes: int) -> bytearray:
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


def numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def read_trace_header(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[RecordKey, RecordSpec], int]:
    """(meta, environment, index of the records, where the data section starts) of a trace file, every header
    entry checked; TraceError (one line) for anything that is not a readable trace of this schema version."""
    header, data_start, size = _read_header(path)
    metadata = _check_metadata(path, header)
    meta = _json_field(path, metadata, "meta")
    environment = _json_field(path, metadata, "environment")
    index = _check_records(path, header, _json_field(path, metadata, "crc32"), size - data_start)
    return meta, environment, index, data_start


def read_record(handle: IO[bytes], data_start: int, spec: RecordSpec, where: str, key: RecordKey) -> torch.Tensor:
    """One record's tensor from an open trace file (or spool), its bytes checked against their crc32."""
    try:
        buffer = read_exact(handle, data_start + spec.offset, spec.nbytes)
    except TraceError as exc:
        raise TraceError(f"{where}: record {key.name()}: {exc}") from None
    if zlib.crc32(buffer) != spec.crc32:
        raise TraceError(f"{where}: record {key.name()} is corrupt (crc32 {zlib.crc32(buffer):08x}, "
                         f"the header says {spec.crc32:08x})")
    return tensor_from_bytes(buffer, spec)


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
        if end - begin != numel(shape) * dtype.itemsize:
            raise TraceError(f"{path}: record {name} spans {end - begin} bytes, but {dtype} {list(shape)} needs "
                             f"{numel(shape) * dtype.itemsize}")
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
