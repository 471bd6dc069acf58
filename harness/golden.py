"""Goldens: a case's reference trace stored once, so the native side is checked without running Diffusers.

A golden is the reference trace of a case at its default request (fixed seed), recorded by
`diffparity golden record`, reviewed, and made the golden by `diffparity golden promote`. It holds:
- every record of the reference trace: whole tensors when the trace is small (`FULL_GOLDEN_LIMIT`, the tiny
  cases), else, per record above `SMALL_RECORD_LIMIT`, statistics, a strided sample and the sha256 of the
  whole tensor (a *compact* golden: large cases);
- the tolerance floors of the case, dtype and device class (the calibration in golden/tolerances/, copied in);
- the environment fingerprint of the recording process, the command that made it, the checkpoint's identity
  (harness/checkpoint_identity.py: its tensors, semantic configs and tokenizers, not incidental bytes).

Files are keyed by case, dtype and device class (`golden/CASE/DTYPE.DEVICE_CLASS.safetensors`, device class
`cpu` or `cuda-smXY` as harness/tolerances.py names it), so a golden recorded on one class of machine is never
used on another. Beside a golden live its draft (`.draft.safetensors`, written by `record`) and, after a
failed verify, the native trace that failed (`.obtained.safetensors`), as pytest-regressions keeps the obtained
file beside the expected one; golden/.gitignore keeps both out of git.

A golden file is a safetensors file (one tensor per record: the record itself, or its sample) whose metadata
holds `format` ("diffparity-golden"), `schema_version`, `golden` (JSON: everything above) and `golden_sha256`:
the sha256 of the whole file with that value zeroed. Every byte is covered, so an edited golden reads as
corrupt (GoldenCorrupt, exit 2), never as a parity failure. Writes are atomic (temporary file, rename).

Verification (`verify_golden`) runs the native pipeline on the golden's request and compares its trace with
the golden under the golden's floors: free, and teacher-forced from the golden's tensors when it stores them
all (forcing needs the reference's embeddings, schedule and per-step latents). It imports no Diffusers code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.checkpoint_identity import IdentityComparison, checkpoint_identity, compare_identities
from harness.compare import Comparison, RecordResult, compare_record, floor_multiple
from harness.file_modes import default_file_mode
from harness.metrics import tensor_metrics
from harness.request import GenerationRequest
from harness.tolerances import FLOOR_METRIC, ToleranceSpec, calibration_path, device_class, read_calibration
from harness.trace import DTYPE_NAMES, DTYPES_BY_NAME, RecordKey, Trace, TraceError
from harness.trace import FORMAT as TRACE_FORMAT

if TYPE_CHECKING:
    from harness.cases import Case
    from native_models.pipeline import ComposedPipeline

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_ROOT = ROOT / "golden"
GOLDEN_DIR_ENV = "DIFFPARITY_GOLDEN_DIR"  # another golden root, for every command and test that takes the default
FORMAT = "diffparity-golden"
SCHEMA_VERSION = 2  # 2: the checkpoint is identified by content that matters (entries), not by its bytes
HASH_KEY = "golden_sha256"
_ZERO_HASH = "0" * 64
KINDS = {"golden": ".safetensors", "draft": ".draft.safetensors", "obtained": ".obtained.safetensors"}

FULL_GOLDEN_LIMIT = 1024 * 1024  # a reference trace up to 1 MiB is stored whole (the tiny cases: 0.1-0.4 MiB)
SMALL_RECORD_LIMIT = 16 * 1024  # in a compact golden, records up to 16 KiB (schedules, pooled embeddings) stay whole
SAMPLE_ELEMENTS = 4096  # a compact record keeps every k-th element, k = ceil(numel / SAMPLE_ELEMENTS)
RECORD_THREADS = 1  # intra-op threads of a CPU recording
MAX_GOLDEN_BYTES = 256 * 1024 * 1024  # refuse to read more than this: a golden is compact by construction
STAT_NAMES = ("mean", "std", "rms", "min", "max", "nonfinite")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


class GoldenError(Exception):
    """A golden cannot be used: for another case/dtype/device/checkpoint, of another schema, or a bad name."""


class GoldenMissing(GoldenError):
    """No golden (or draft) where one is needed."""


class GoldenCorrupt(GoldenError):
    """A golden file whose bytes do not match its hash, or that is not a well-formed golden at all."""


# --- paths -------------------------------------------------------------------------------------------------------


def golden_path(case: str, dtype: str, device_cls: str, root: Path | None = None, kind: str = "golden") -> Path:
    """root/CASE/DTYPE.DEVICE_CLASS[.draft|.obtained].safetensors"""
    for label, value in (("case", case), ("dtype", dtype), ("device class", device_cls)):
        if not isinstance(value, str) or not _NAME_OK.fullmatch(value) or ".." in value or len(value) > 120:
            raise GoldenError(f"{label} {str(value)[:60]!r} cannot name a golden file (at most 120 letters, digits, "
                              "'-', '_', '.', '@')")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return (root or default_root()) / case / f"{dtype}.{device_cls}{KINDS[kind]}"


def default_root() -> Path:
    """$DIFFPARITY_GOLDEN_DIR, else the repository's golden/ folder."""
    return Path(os.environ.get(GOLDEN_DIR_ENV) or GOLDEN_ROOT)


@dataclass(frozen=True)
class GoldenFile:
    """One file found under the golden root, classified by its name."""

    path: Path
    case: str
    dtype: str
    device_class: str
    kind: str  # golden, draft or obtained


def parse_golden_name(path: Path) -> GoldenFile | None:
    """The case/dtype/device class/kind a file's place and name say, or None for a name that is not one."""
    name = path.name
    for kind, suffix in sorted(KINDS.items(), key=lambda item: -len(item[1])):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            dtype, _, device_cls = stem.partition(".")
            if dtype and device_cls and "." not in device_cls:
                return GoldenFile(path, path.parent.name, dtype, device_cls, kind)
            return None
    return None


def scan_goldens(root: Path | None = None) -> tuple[list[GoldenFile], list[Path]]:
    """(files named like goldens, drafts or obtained traces; other files) under root, skipping golden/tolerances
    (calibrations) and dotfiles."""
    root = root or default_root()
    found: list[GoldenFile] = []
    strays: list[Path] = []
    if not root.is_dir():
        return found, strays
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    strays += [p for p in entries if not p.is_dir()]  # a golden lives in its case's folder
    for case_dir in (p for p in entries if p.is_dir() and p.name != "tolerances"):
        for path in sorted(case_dir.rglob("*")):
            if any(part.startswith(".") for part in path.relative_to(case_dir).parts) or path.is_dir():
                continue
            parsed = parse_golden_name(path) if path.parent == case_dir else None
            if parsed is None:
                strays.append(path)
            else:
                found.append(parsed)
    return found, strays


# --- the golden in memory ------------------------------------------------------------------------------------------


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


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(_tensor_bytes(tensor)).hexdigest()


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


# --- files --------------------------------------------------------------------------------------------------------


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
        data = _tensor_bytes(stored)
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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return None


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
                or not isinstance(stored_shape, list) or not all(_is_int(s) for s in stored_shape)
                or not isinstance(shape, list) or not all(_is_int(s) for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or offsets[0] > offsets[1] or about.get("kind") not in ("full", "summary")
                or not isinstance(about.get("sha256"), str) or not _HEX64.fullmatch(about["sha256"])
                or not isinstance(about.get("stats"), dict)):
            raise bad
        stats = {stat: _number(about["stats"].get(stat)) for stat in STAT_NAMES}
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
            if not _is_int(stride, 1) or stored_shape != [-(-math.prod(shape) // stride)]:  # ceil, exact ints
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
    """Stored floors as harness/tolerances.py reads them: per record a stage, a field, and a finite non-negative
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
        "seed": lambda v: _is_int(v),
        "steps": lambda v: _is_int(v, 1),
        "height": lambda v: _is_int(v, 1),
        "width": lambda v: _is_int(v, 1),
        "frames": lambda v: _is_int(v, 1),
        "max_sequence_length": lambda v: _is_int(v, 1),
        "guidance_scale": lambda v: _number(v) is not None and math.isfinite(float(v)) and not isinstance(v, str),
        "true_cfg_scale": lambda v: _number(v) is not None and math.isfinite(float(v)) and not isinstance(v, str),
        "dtype": lambda v: v in ("fp32", "bf16"),
        "device": lambda v: isinstance(v, str) and v.split(":")[0] in ("cpu", "cuda"),
    }
    defaults = {f.name: f.default for f in fields(GenerationRequest)}
    for name, value in data.items():
        check = checks.get(name) or _like(defaults[name])
        if not check(value):
            raise GoldenCorrupt(f"{where}request field {name} = {str(value)[:40]!r} is invalid")
    try:
        return GenerationRequest(**data)
    except (TypeError, ValueError) as exc:
        raise GoldenCorrupt(f"{where}the request is invalid ({_one_line(exc)})") from None


def _like(default: Any) -> Any:
    """A type check for a request field this module has no rule for: the JSON type of its default."""
    if isinstance(default, bool):
        return lambda v: isinstance(v, bool)
    if isinstance(default, int):
        return lambda v: _is_int(v)
    if isinstance(default, float):
        return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if isinstance(default, str):
        return lambda v: isinstance(v, str)
    return lambda v: v is None or isinstance(v, str | int | float)


def _one_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


# --- the checkpoint a golden was recorded from ---------------------------------------------------------------------


def check_checkpoint(golden: Golden, checkpoint: Path) -> IdentityComparison:
    """The checkpoint against the one the golden was recorded from. Raises GoldenError naming the first changed
    tensors / config values / tokenizer sections when it is another checkpoint; a checkpoint that differs only
    in provenance (library versions in its configs) passes, with the difference in the returned comparison."""
    comparison = compare_identities(golden.info["checkpoint"], checkpoint_identity(checkpoint))
    if not comparison.same:
        raise GoldenError(f"{golden.path} was recorded from another checkpoint: {checkpoint} differs in "
                          f"{len(comparison.changes)} entries: {comparison.summary()}; if the change is "
                          "intended, record the golden again")
    return comparison


# --- record, promote, verify ---------------------------------------------------------------------------------------


def embedded_tolerances(case: str, dtype: str, device: str) -> dict[str, Any] | None:
    """The stored calibration of the case (floors and thresholds per record), or None when there is none."""
    path = calibration_path(case, dtype, device)
    if not path.is_file():
        return None
    document = read_calibration(path)
    source = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return {"source": source, "dtype": document["dtype"], "metric": document["metric"],
            "records": document["records"]}


def record_golden(case: Case, dtype: str = "fp32", device: str = "cpu", root: Path | None = None,
                  command: str | None = None, full_limit: int = FULL_GOLDEN_LIMIT) -> Golden:
    """Run the case's reference at its default request and write the golden's draft (never the golden).

    On the CPU the reference runs on one intra-op thread (RECORD_THREADS), so recording again on any machine with
    the same library versions gives the same bits, and `promote --force` shows only what really changed."""
    from harness.environment import environment, intra_op_threads

    request = case.request(dtype=dtype, device=device)
    checkpoint = case.build_checkpoint()
    trace = Trace({"case": case.name, "request": request.to_dict(), "side": "reference"})
    threads = intra_op_threads(RECORD_THREADS) if device == "cpu" else contextlib.nullcontext()
    with threads:
        case.run_reference(checkpoint, request, trace, None)
        fingerprint = environment(device, dtype, "torch default")
    info = {
        "case": case.name,
        "family": case.family,
        "dtype": dtype,
        "device_class": device_class(device),
        "request": request.to_dict(),
        "checkpoint": checkpoint_identity(checkpoint),
        "environment": fingerprint,
        "command": command or f"diffparity golden record {case.name} --dtype {dtype} --device {device}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tolerances": embedded_tolerances(case.name, dtype, device),
    }
    golden = golden_from_trace(trace, info, full_limit=full_limit)
    write_golden(golden, golden_path(case.name, dtype, device_class(device), root, "draft"))
    return golden


@dataclass
class Promotion:
    path: Path
    replaced: bool
    worst_change: tuple[str, float] | None  # (record, rel_l2) of the draft against the golden it replaced


def promote_golden(case: str, dtype: str, device_cls: str, root: Path | None = None,
                   force: bool = False) -> Promotion:
    """Make the draft the golden (an atomic rename). An existing golden is replaced only with `force`."""
    draft_path = golden_path(case, dtype, device_cls, root, "draft")
    target = golden_path(case, dtype, device_cls, root)
    if not draft_path.exists():
        raise GoldenMissing(f"no draft to promote at {draft_path}: record one first (diffparity golden record "
                            f"{case} --dtype {dtype})")
    draft = read_golden(draft_path)
    draft.check_for(case, dtype, device_cls)
    worst = None
    replaced = target.exists()
    if replaced:
        if not force:
            raise GoldenError(f"{target} already exists; pass --force to replace it with {draft_path.name}")
        try:
            worst = largest_change(read_golden(target), draft)
        except GoldenError:
            worst = None  # replacing a corrupt or outdated golden: nothing to compare with
    os.replace(draft_path, target)
    return Promotion(target, replaced, worst)


def largest_change(old: Golden, new: Golden) -> tuple[str, float] | None:
    """The record whose values moved most (rel_l2, on whole tensors or on the samples) between two goldens."""
    worst: tuple[str, float] | None = None
    for key, record in new.records.items():
        before = old.records.get(key)
        if before is None or before.shape != record.shape:
            return (key.name(), math.inf)
        a = record.tensor if record.tensor is not None else record.sample
        b = before.tensor if before.tensor is not None else before.sample
        if a is None or b is None or a.shape != b.shape:
            continue
        change = tensor_metrics(a, b)["rel_l2"]
        if worst is None or not change <= worst[1]:
            worst = (key.name(), change)
    return worst


def compare_with_golden(golden: Golden, native: Trace, spec: ToleranceSpec, mode: str = "free",
                        stages: Iterable[str] | None = None) -> list[RecordResult]:
    """Every golden record (of `stages`) against the native trace's. Whole records as in a parity run; a
    summarised record by its sample (the same elements of the native tensor), or exactly when the native
    tensor's sha256 equals the reference's."""
    wanted = None if stages is None else set(stages)
    results: list[RecordResult] = []
    for key, record in golden.records.items():
        if wanted is not None and key.stage not in wanted:
            continue
        tolerance = spec.tolerance(key.stage, key.field, mode)
        floor = spec.floor(key.stage, key.field, mode)
        tensor = native.get(key)
        if record.tensor is not None:
            results.append(compare_record(key, tensor, record.tensor, tolerance, floor, mode))
            continue
        assert record.sample is not None and record.stride is not None
        base = {"stage": key.stage, "field": key.field, "step": key.step, "shape": list(record.shape),
                "tolerance": tolerance.to_dict(), "mode": mode, "floor": floor}
        if tensor is None:
            results.append(RecordResult(**base, metrics={}, passed=False, problem="missing on the native side"))
            continue
        if tuple(tensor.shape) != record.shape:
            results.append(RecordResult(**base, metrics={}, passed=False, native_shape=list(tensor.shape),
                                        problem=f"shape {list(tensor.shape)} differs from reference "
                                                f"{list(record.shape)}"))
            continue
        same = tensor.dtype == record.dtype and tensor_sha256(tensor) == record.sha256
        native_sample = record.sample if same else strided_sample(tensor, record.stride)
        metrics = tensor_metrics(native_sample, record.sample)
        problem = f"{metrics['nonfinite']} non-finite values in the sample" if metrics.get("nonfinite") else None
        results.append(RecordResult(**base, metrics=metrics, passed=tolerance.passes(metrics), problem=problem,
                                    floor_multiple=floor_multiple(metrics, tolerance, floor)))
    return results


@dataclass
class VerifyResult:
    """A native run judged against a golden. `noise` is set for cases that expect a picture."""

    golden: Golden
    comparison: Comparison
    report: dict[str, Any]
    native_frames: torch.Tensor
    native_trace: Trace
    forced_trace: Trace | None = None
    noise_fails: bool = False
    obtained: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.comparison.passed and not self.noise_fails


def golden_noise_section(golden: Golden, native_frames: torch.Tensor, video: bool) -> dict[str, Any]:
    """The noise verdict of a run that must draw a picture (harness/noise.py), with the golden's decoded image
    as the reference side; a compact golden keeps only a sample of it, so then only the native side is judged."""
    from harness.noise import noise_section

    image = golden.records.get(RecordKey("decode", "image"))
    if image is not None and image.tensor is not None:
        reference = (image.tensor.to(torch.float32) / 2 + 0.5).clamp(0, 1)
        return noise_section(native_frames, reference, True, video=video)
    section = noise_section(native_frames, native_frames, True, video=video)
    section["reference"] = None
    section["note"] = ("native output flagged" if section["fails_run"] else "the native output looks like a "
                       "picture") + " (the compact golden keeps no whole reference image to judge)"
    return section


def load_golden_for(case: Case, dtype: str, device: str, root: Path | None = None, kind: str = "golden") -> Golden:
    """The golden (or, with kind "draft", the draft) of `case` for this dtype and this device's class;
    GoldenMissing names what exists instead."""
    device_cls = device_class(device)
    path = golden_path(case.name, dtype, device_cls, root, kind)
    try:
        golden = read_golden(path)
    except GoldenMissing:
        if kind == "draft":
            raise GoldenMissing(f"no draft for {case.name} {dtype} on device class {device_cls} ({path}): "
                                f"diffparity golden record {case.name} --dtype {dtype}") from None
        others = sorted(f"{f.dtype} on {f.device_class}" for f in scan_goldens(root)[0]
                        if f.case == case.name and f.kind == "golden")
        elsewhere = f"; this case has goldens for {', '.join(others)}" if others else ""
        raise GoldenMissing(f"no golden for {case.name} {dtype} on device class {device_cls} ({path}){elsewhere}; "
                            f"make one: diffparity golden record {case.name} --dtype {dtype} --device "
                            f"{device.split(':')[0]}, then diffparity golden promote {case.name} --dtype {dtype}"
                            ) from None
    golden.check_for(case.name, dtype, device_cls)
    return golden


def verify_golden(case: Case, dtype: str = "fp32", device: str = "cpu", root: Path | None = None,
                  forcing: bool = True, write_obtained: bool = True, checkpoint: Path | None = None,
                  draft: bool = False, mutate: Callable[[ComposedPipeline], None] | None = None) -> VerifyResult:
    """Run the native side of `case` on its golden's request and judge it against the golden (no Diffusers).

    Raises GoldenMissing / GoldenCorrupt / GoldenError before anything runs when the golden cannot be used,
    including when the case's checkpoint is not the one the golden was recorded from (another experiment).
    On failure the native trace is written beside the golden as `.obtained.safetensors`; on success a stale
    obtained file is removed. `draft` checks the draft instead (a review before `promote`); `mutate` breaks the
    built native pipeline on purpose (harness/faults.py), as in `run_parity`.
    """
    from harness.environment import environment, environment_changes
    from harness.forcing import FORCED_STAGES
    from harness.native_runner import plan_native_run, run_native
    from harness.report import build_report
    from native_models.attention import get_attention_backend

    timings: dict[str, float] = {}
    start = time.perf_counter()
    golden = load_golden_for(case, dtype, device, root, "draft" if draft else "golden")
    timings["golden"] = time.perf_counter() - start
    start = time.perf_counter()
    checkpoint = checkpoint or case.build_checkpoint()
    identity = check_checkpoint(golden, checkpoint)
    timings["checkpoint"] = time.perf_counter() - start
    request = replace(golden.request(), device=device)
    plan = plan_native_run(checkpoint, request)
    spec = golden.tolerance_spec()
    meta = {"case": case.name, "request": request.to_dict(), "model": None, "checkpoint": str(checkpoint),
            "golden": str(golden.path)}
    forcing_skipped = None
    if forcing and golden.compact:
        forcing_skipped = "a compact golden keeps samples of its large records, not the tensors forcing feeds in"
    forced = forcing and forcing_skipped is None
    native_trace = Trace(meta)
    forced_trace = Trace(meta) if forced else None
    start = time.perf_counter()
    frames = run_native(checkpoint, request, native_trace, plan=plan, mutate=mutate,
                        reference=golden.reference_trace() if forced else None, forced_trace=forced_trace)
    timings["native"] = time.perf_counter() - start
    if forced_trace is not None and forced_trace.meta.get("forcing_skipped"):
        forcing_skipped, forced_trace = forced_trace.meta["forcing_skipped"], None
    comparison = Comparison(compare_with_golden(golden, native_trace, spec))
    if forced_trace is not None:
        comparison.forced_records = compare_with_golden(golden, forced_trace, spec, "forced", FORCED_STAGES)
    report = build_report(
        case=case.name, seed=request.seed, comparison=comparison, request=request.to_dict(),
        environment=environment(request.device, request.dtype, get_attention_backend()), timings=timings,
        checkpoint=str(checkpoint), tolerances=spec.describe(),
    )
    report["golden"] = {
        "path": str(golden.path), "sha256": golden.sha256, "created": golden.info["created"],
        "command": golden.info["command"], "environment": golden.info["environment"], "compact": golden.compact,
        "sampled_records": sum(not r.full for r in golden.records.values()),
        "environment_changes": environment_changes(golden.info["environment"], report["environment"]),
        "checkpoint_provenance_changes": identity.provenance,
    }
    warning = identity.warning()
    if warning is not None:
        report.setdefault("warnings", []).append(warning)
    if forcing_skipped is not None:
        report["forcing_skipped"] = forcing_skipped
    noise_fails = False
    if case.expects_picture:  # a trained or real-weight checkpoint must draw a picture, not noise
        report["noise"] = golden_noise_section(golden, frames, case.video)
        noise_fails = bool(report["noise"]["fails_run"])
        if noise_fails:
            report["verdict"] = "fail"
    result = VerifyResult(golden, comparison, report, frames, native_trace, forced_trace, noise_fails,
                          timings=timings)
    obtained = golden_path(case.name, dtype, golden.device_class, root, "obtained")
    try:
        if not result.passed and write_obtained:
            native_trace.save(obtained)
            result.obtained = obtained
        elif result.passed:
            obtained.unlink(missing_ok=True)
    except OSError as exc:  # a read-only checkout: the verdict stands without the obtained file
        report["obtained_not_written"] = f"{obtained}: {exc.strerror or exc}"
    return result
