"""Read and validate a safetensors file's header without reading any tensor data.

A checkpoint file is untrusted input: it may be truncated, a pickle renamed to `.safetensors` (never
unpickled here or anywhere in the runtime), or declare shapes whose byte size overflows or does not match
its data section. Every such file fails here with one line, before a byte of tensor data is read or a tensor
allocated, with the words the loader uses: "<file> is not a readable safetensors file (<reason>)".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from native_models.errors import CheckpointError

HEADER_LIMIT = 100 * 1024 * 1024  # the safetensors format's own cap on the JSON header
MAX_DIMS = 8  # no model tensor has more axes; a header declaring more is hostile or corrupt
MAX_NUMEL = 2**48  # ~1 PB of fp32: beyond any real tensor, far below int64 overflow in torch
# safetensors dtype name -> bytes per element (the types torch can hold)
ITEM_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U64": 8, "U32": 4, "U16": 2, "C64": 8, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
}
FLOAT_WEIGHT_DTYPES = ("F64", "F32", "F16", "BF16")  # what a floating parameter may be stored as


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a header: safetensors dtype name, shape, element count, and where its bytes start in
    the file (absolute offset: 8 + header length + its data_offsets begin), so a loader can map them in place."""

    dtype: str
    shape: tuple[int, ...]
    numel: int
    offset: int = 0

    @property
    def nbytes(self) -> int:
        return self.numel * ITEM_SIZES[self.dtype]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _sniff(prefix: bytes) -> str | None:
    """What a file that is not safetensors actually is, from its first bytes (pickles are recognised, never
    loaded)."""
    if prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it is a Python pickle (torch.save / .bin?); pickles are never loaded"
    if prefix[:4] == b"PK\x03\x04":
        return "it is a zip archive (torch.save?); only safetensors is loaded"
    return None


def read_safetensors_header(file: Path) -> dict[str, TensorInfo]:
    """name -> TensorInfo of every tensor in `file`, after checking that the header parses, names known
    dtypes and sane shapes, and that the tensors tile the data section exactly (no gap, overlap or tail).

    Raises CheckpointError (one line) otherwise; reads only the header bytes.
    """

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(f"{file} is not a readable safetensors file ({reason})")

    if not file.is_file():
        raise CheckpointError(f"missing weight shard: {file}")
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            header_len = int.from_bytes(prefix, "little")
            # a pickle or zip is named only once the bytes fail as a header: a real header length may begin
            # with the same two bytes as a pickle (0x380 = 896 is one)
            if len(prefix) < 8:
                raise bad(_sniff(prefix) or f"{size} bytes, shorter than the 8-byte header length")
            if header_len > min(HEADER_LIMIT, size - 8):
                raise bad(_sniff(prefix) or f"header length {header_len} exceeds the file's {size - 8} remaining bytes")
            raw = handle.read(header_len)
            if not raw.startswith(b"{"):  # safetensors' own rule: the header is a JSON object, unpadded in front
                raise bad(_sniff(prefix) or "the header does not start with '{'")
            header = json.loads(raw, parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise bad(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ is not an object of strings")
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"tensor '{name}' has no valid entry")
        offsets = info.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise bad(f"tensor '{name}' has no valid data_offsets")
        dtype, shape = info.get("dtype"), info.get("shape")
        if not isinstance(dtype, str) or dtype not in ITEM_SIZES:
            raise bad(f"tensor '{name}' has unknown dtype {str(dtype)[:20]!r}")
        if not (isinstance(shape, list) and len(shape) <= MAX_DIMS
                and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_NUMEL for s in shape)):
            raise bad(f"tensor '{name}' has an invalid shape {str(shape)[:60]}")
        numel = 1
        for dim in shape:
            numel *= dim  # Python ints: no overflow however absurd the shape
        if numel > MAX_NUMEL:
            raise bad(f"tensor '{name}' declares {numel} elements (shape {shape})")
        if numel * ITEM_SIZES[dtype] != offsets[1] - offsets[0]:
            raise bad(f"tensor '{name}' spans {offsets[1] - offsets[0]} bytes, but {dtype} {shape} needs "
                      f"{numel * ITEM_SIZES[dtype]}")
        tensors[name] = TensorInfo(dtype, tuple(shape), numel, 8 + header_len + offsets[0])
        spans.append((offsets[0], offsets[1], name))
    data_len = size - 8 - header_len
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise bad(f"tensor '{name}' starts at data byte {begin}, expected {end} (overlapping or gapped)")
        end = stop
    if end != data_len:
        raise bad(f"header declares {end} bytes of tensor data, the file holds {data_len}")
    return tensors
