"""The golden file: safetensors whose metadata is hashed with everything else, read with every byte checked.

A golden file is a safetensors file (one tensor per record: the record itself, or its sample) whose metadata
holds `format` ("diffparity-golden"), `schema_version`, `golden` (JSON: the golden's info and record
descriptions) and `golden_sha256`: the sha256 of the whole file with that value zeroed. Every byte is covered,
so an edited golden reads as corrupt (GoldenCorrupt, exit 2), never as a parity failure. Writes are atomic
(temporary file, rename); nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from harness.compare.tolerances import FLOOR_METRIC
from harness.files import write_bytes_atomic
from harness.golden.errors import GoldenCorrupt, GoldenError, GoldenMissing
from harness.golden.model import STAT_NAMES, Golden, GoldenRecord, tensor_bytes, tensor_sha256
from harness.golden.request_json import as_number, is_int, request_from_dict
from harness.trace.keys import DTYPE_NAMES, DTYPES_BY_NAME, RecordKey, TraceError
from harness.trace.keys import FORMAT as TRACE_FORMAT

FORMAT = "diffparity-golden"
SCHEMA_VERSION = 2  # 2: the checkpoint is identified by content that matters (entries), not by its bytes
HASH_KEY = "golden_sha256"
_ZERO_HASH = "0" * 64
MAX_GOLDEN_BYTES = 256 * 1024 * 1024  # refuse to read more than this: a golden is compact by construction
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _document(golden: Golden) -> str:
    records = {}
    for key, record in golden.records.items():
        entry: dict[str, Any] = {
            "kind": "full" if record.full else "summary",
            "dtype": DTYPE_NAMES[record.dtype],
            "shape": list(record.shape),
            "sha256": record.sha256,
            "stats": {name: _json_number(record.stats[name]) for name in STAT_NAMES},
        }
        if not record.full:
            entry["stride"] = record.stride
        records[key.name()] = entry
    return json.dumps({**golden.info, "records": records}, sort_keys=True, allow_nan=False, default=str)


def golden_bytes(golden: Golden) -> tuple[bytes, str]:
    """The file's bytes and its sha256 (taken over the file with the hash itself zeroed)."""
    header: dict[str, Any] = {"__metadata__": {"format": FORMAT, "schema_version": str(SCHEMA_VERSION),
                                               "golden": _document(golden), HASH_KEY: _ZERO_HASH}}
    chunks: list[bytes] = []
    offset = 0
    for key, record in golden.records.items():
        stored = record.tensor if record.tensor is not None else record.sample
        assert stored is not None  # a record is whole or sampled, by construction
        data = tensor_bytes(stored)
        header[key.name()] = {"dtype": DTYPE_NAMES[record.dtype], "shape": list(stored.shape),
                              "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-(8 + len(header_bytes)) % 8)  # data 8-byte aligned, as safetensors writes it
    prefix = len(header_bytes).to_bytes(8, "little")
    digest = hashlib.sha256(prefix + header_bytes + b"".join(chunks)).hexdigest()
    placeholder = _hash_field(_ZERO_HASH)
    assert header_bytes.count(placeholder) == 1  # the metadata key is unique: JSON inside strings is escaped
    return prefix + header_bytes.replace(placeholder, _hash_field(digest)) + b"".join(chunks), digest


def _hash_field(digest: str) -> bytes:
    return f'"{HASH_KEY}":"{digest}"'.encode()


def write_golden(golden: Golden, path: Path) -> str:
    """Write atomically (temporary file in the same folder, renamed into place); returns the sha256."""
    data, digest = golden_bytes(golden)
    write_bytes_atomic(path, data)
    golden.sha256, golden.path = digest, path
    return digest


def read_golden(path: Path) -> Golden:
    """Read and check a golden file: GoldenMissing when absent, GoldenCorrupt when its bytes do not match its
    hash or it is not a well-formed golden, GoldenError for another schema version. Nothing is unpickled."""
    path = Path(path)
    try:
        exists, is_file = path.exists(), path.is_file()
        size = path.stat().st_size if is_file else 0
    except OSError as exc:  # a name too long for the file system, a folder without permission
        raise GoldenError(f"cannot read golden {str(path)[:200]} ({exc.strerror or exc})") from None
    if not exists:
        raise GoldenMissing(f"no golden file {path}")
    if not is_file:
        raise GoldenCorrupt(f"{path} is not a file")
    if size > MAX_GOLDEN_BYTES:
        raise GoldenCorrupt(f"{path} is {size} bytes, more than any golden ({MAX_GOLDEN_BYTES}): not a golden")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GoldenError(f"cannot read golden {path} ({exc.strerror or exc})") from None
    header, header_len = _parse_header(path, data)
    metadata = _check_metadata(path, header)
    digest = metadata[HASH_KEY]
    raw_header = data[8: 8 + header_len]
    if raw_header.count(_hash_field(digest)) != 1:
        raise GoldenCorrupt(f"{path} is corrupt: its header does not hold its {HASH_KEY} exactly once")
    zeroed = data[:8] + raw_header.replace(_hash_field(digest), _hash_field(_ZERO_HASH)) + data[8 + header_len:]
    actual = hashlib.sha256(zeroed).hexdigest()
    if actual != digest:
        raise GoldenCorrupt(f"{path} is corrupt: its bytes hash to sha256 {actual[:16]}..., the file says "
                            f"{digest[:16]}... (edited or damaged; restore it from git or record it again)")
    info = _json_object(path, metadata.get("golden"), "golden")
    records = _check_records(path, header, info, data, 8 + header_len)
    _check_info(path, info)
    info = {k: v for k, v in info.items() if k != "records"}
    return Golden(info, records, digest, path)


def _parse_header(path: Path, data: bytes) -> tuple[dict, int]:
    if not data:
        raise GoldenCorrupt(f"{path} is empty (0 bytes), not a golden")
    header_len = int.from_bytes(data[:8], "little")
    if len(data) < 8 or header_len > len(data) - 8:
        _refuse_foreign(path, data)  # only now: a real header length may begin with a pickle's two bytes
        if len(data) < 8:
            raise GoldenCorrupt(f"{path} is corrupt or not a golden ({len(data)} bytes, shorter than a header length)")
        raise GoldenCorrupt(f"{path} is corrupt or truncated (header length {header_len} does not fit in "
                            f"{len(data)} bytes)")
    try:
        header = json.loads(data[8: 8 + header_len])
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        _refuse_foreign(path, data)
        raise GoldenCorrupt(f"{path} is corrupt or not a golden (header is not JSON: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise GoldenCorrupt(f"{path} is corrupt or not a golden (header is a JSON {type(header).__name__})")
    return header, header_len


def _refuse_foreign(path: Path, data: bytes) -> None:
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise GoldenCorrupt(f"{path} is a Python pickle, not a golden (pickles are never loaded)")
    if data[:4] == b"PK\x03\x04":
        raise GoldenCorrupt(f"{path} is a zip archive (torch.save?), not a golden")


def _check_metadata(path: Path, header: dict) -> dict:
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise GoldenCorrupt(f"{path} is corrupt or not a golden (no string metadata)")
    if metadata.get("format") == TRACE_FORMAT:
        raise GoldenError(f"{path} is a diffparity trace, not a golden (goldens are made by `diffparity golden "
                          "record` and `promote`)")
    if metadata.get("format") != FORMAT:
        raise GoldenCorrupt(f"{path} is corrupt or not a golden (format {metadata.get('format')!r})")
    if metadata.get("schema_version") != str(SCHEMA_VERSION):
        raise GoldenError(f"{path} has golden schema version {metadata.get('schema_version')!r}; this harness "
                          f"reads version {SCHEMA_VERSION}: record it again")
    digest = metadata.get(HASH_KEY)
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise GoldenCorrupt(f"{path} is corrupt: {HASH_KEY} is not a sha256 hex digest")
    return metadata


def _json_object(path: Path, text: Any, name: str) -> dict:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise GoldenCorrupt(f"{path} is corrupt: metadata '{name}' is not a JSON object")
    return value


def _check_records(path: Path, header: dict, info: dict, data: bytes, data_start: int
                   ) -> dict[RecordKey, GoldenRecord]:
    """Every tensor entry against its record description; ranges tiling the data section exactly."""
    described = info.get("records")
    if not isinstance(described, dict):
        raise GoldenCorrupt(f"{path} is corrupt: no record descriptions")
    entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
    if set(entries) != set(described):
        extra = sorted(set(entries) ^ set(described))[:3]
        raise GoldenCorrupt(f"{path} is corrupt: tensors and record descriptions disagree (e.g. {extra})")
    spans: list[tuple[int, int, str]] = []
    records: dict[RecordKey, GoldenRecord] = {}
    for name, entry in entries.items():
        bad = GoldenCorrupt(f"{path} is corrupt: record {name[:80]} is malformed")
        try:
            key = RecordKey.parse(name)
        except TraceError:
            raise bad from None
        about = described[name]
        if not isinstance(entry, dict) or not isinstance(about, dict):
            raise bad
        dtype_name = entry.get("dtype")
        dtype = DTYPES_BY_NAME.get(dtype_name) if isinstance(dtype_name, str) else None
        stored_shape, offsets, shape = entry.get("shape"), entry.get("data_offsets"), about.get("shape")
        if (dtype is None or about.get("dtype") != entry.get("dtype")
                or not isinstance(stored_shape, list) or not all(is_int(s) for s in stored_shape)
                or not isinstance(shape, list) or not all(is_int(s) for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) for o in offsets)
                or offsets[0] > offsets[1] or about.get("kind") not in ("full", "summary")
                or not isinstance(about.get("sha256"), str) or not _HEX64.fullmatch(about["sha256"])
                or not isinstance(about.get("stats"), dict)):
            raise bad
        stats = {stat: as_number(about["stats"].get(stat)) for stat in STAT_NAMES}
        if any(value is None for value in stats.values()):
            raise bad
        numel_stored = math.prod(stored_shape)
        if offsets[1] - offsets[0] != numel_stored * dtype.itemsize:
            raise GoldenCorrupt(f"{path} is corrupt: record {name} spans {offsets[1] - offsets[0]} bytes, its "
                                f"{entry['dtype']} {stored_shape} needs {numel_stored * dtype.itemsize}")
        if about["kind"] == "full":
            stride = None
            if stored_shape != shape:
                raise bad
        else:
            stride = about.get("stride")
            if not is_int(stride, 1) or stored_shape != [-(-math.prod(shape) // stride)]:  # ceil, exact ints
                raise bad
        spans.append((offsets[0], offsets[1], name))
        raw = data[data_start + offsets[0]: data_start + offsets[1]]
        if len(raw) != offsets[1] - offsets[0]:
            raise GoldenCorrupt(f"{path} is corrupt or truncated: record {name} lies beyond the end of the file")
        tensor = (torch.frombuffer(bytearray(raw), dtype=dtype).reshape(stored_shape) if raw
                  else torch.empty(stored_shape, dtype=dtype))
        common = {"key": key, "dtype": dtype, "shape": tuple(shape), "sha256": about["sha256"],
                  "stats": stats}  # type: ignore[dict-item]
        if about["kind"] == "full":
            if tensor_sha256(tensor) != about["sha256"]:
                raise GoldenCorrupt(f"{path} is corrupt: record {name}'s bytes do not match its sha256")
            records[key] = GoldenRecord(**common, tensor=tensor)
        else:
            records[key] = GoldenRecord(**common, sample=tensor, stride=stride)
    expected = 0
    for begin, end, name in sorted(spans):
        if begin != expected:
            raise GoldenCorrupt(f"{path} is corrupt: record {name} starts at data byte {begin}, expected {expected}")
        expected = end
    if expected != len(data) - data_start:
        raise GoldenCorrupt(f"{path} is corrupt: {len(data) - data_start - expected} bytes after its last record")
    if not records:
        raise GoldenCorrupt(f"{path} is corrupt: it holds no records")
    return dict(sorted(records.items(), key=lambda item: item[0].order()))


def _check_info(path: Path, info: dict) -> None:
    """The fields every reader of a golden relies on, with their types."""
    expected: dict[str, type | tuple[type, ...]] = {
        "case": str, "family": str, "dtype": str, "device_class": str, "request": dict, "checkpoint": dict,
        "environment": dict, "command": str, "created": str, "compact": bool, "tolerances": (dict, type(None)),
    }
    for name, kind in expected.items():
        if not isinstance(info.get(name), kind):
            raise GoldenCorrupt(f"{path} is corrupt: field '{name}' is missing or of the wrong type")
    checkpoint = info["checkpoint"]
    if not isinstance(checkpoint.get("digest"), str) or not isinstance(checkpoint.get("entries"), dict) \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in checkpoint["entries"].items()):
        raise GoldenCorrupt(f"{path} is corrupt: the checkpoint identity is missing or malformed")
    request_from_dict(info["request"], path)
    tolerances = info["tolerances"]
    if tolerances is not None and not _floors_ok(tolerances, info["dtype"]):
        raise GoldenCorrupt(f"{path} is corrupt: its tolerance floors are malformed")


def _floors_ok(tolerances: dict, dtype: str) -> bool:
    """Stored floors as harness/compare/tolerances.py reads them: per record a stage, a field, and a finite non-negative
    floor and threshold (free, and forced when present)."""
    def numbers_ok(values: Any) -> bool:
        return isinstance(values, dict) and all(
            isinstance(values.get(k), int | float) and not isinstance(values.get(k), bool)
            and math.isfinite(values[k]) and values[k] >= 0 for k in ("floor", "threshold"))

    records = tolerances.get("records")
    if not (isinstance(tolerances.get("source"), str) and tolerances.get("dtype") == dtype
            and tolerances.get("metric") == FLOOR_METRIC and isinstance(records, list)):
        return False
    return all(isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("stage", "field"))
               and numbers_ok(entry) and (entry.get("forced") is None or numbers_ok(entry["forced"]))
               for entry in records)
