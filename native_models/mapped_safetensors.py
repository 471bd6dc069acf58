"""Zero-copy, read-only views of the tensors of a safetensors file, through a memory map.

The loader copies each tensor once, from these views straight into its final dtype and device. A view costs
nothing until read; once its tensor is copied, `release` hands its pages back (madvise DONTNEED), so the
process's resident set grows by the weights it keeps, not by the files it reads: a 10 GB shard does not add
10 GB to the peak, as it would while a whole memory-mapped state dict stays referenced. The views themselves sit
at whatever address the file puts them (often not 64-byte aligned), which is why they are copied before use
(field notes, section 3: unaligned weights take another CPU matmul path).
"""

from __future__ import annotations

import contextlib
import mmap
import warnings
from pathlib import Path
from types import TracebackType

import torch

from native_models.errors import CheckpointError
from native_models.safetensors_header import TensorInfo

# safetensors dtype name -> torch dtype (every name native_models.safetensors_header accepts)
TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2": torch.float8_e5m2,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
}
FLOAT_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})


class MappedSafetensors:
    """One safetensors file mapped read-only; `view(info)` gives a tensor over its bytes without copying.

    Use as a context manager. Views must not be written to (the map is read-only) and should be dropped before
    the map closes; one still alive keeps the map open until it is freed.
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        try:
            with open(file, "rb") as handle:
                self._map: mmap.mmap | None = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            raise CheckpointError(f"{file} is not a readable safetensors file ({exc})") from None
        self._size = len(self._map)

    def view(self, info: TensorInfo) -> torch.Tensor:
        """The tensor `info` describes, as a view of the mapped bytes (shape and dtype as stored)."""
        if self._map is None:
            raise ValueError(f"{self.file} is closed")
        dtype = TORCH_DTYPES[info.dtype]
        if info.numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        if info.offset + info.nbytes > self._size:  # the header reader checked this; a file changed since has not
            raise CheckpointError(f"{self.file} is not a readable safetensors file (it changed while loading)")
        with warnings.catch_warnings():  # read-only by design: nothing writes through a view
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            raw = torch.frombuffer(self._map, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        return raw.view(dtype).reshape(info.shape)

    def release(self, info: TensorInfo, start: int = 0, stop: int | None = None) -> None:
        """Drop the pages of bytes [start, stop) of a tensor already copied from this process's resident set (the
        page cache keeps them; reading them again faults them back in). Whole pages only: the partial pages at
        either end stay, since a neighbour (or the rest of the tensor) may still need them."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        stop = info.nbytes if stop is None else stop
        first = -(-(info.offset + start) // mmap.PAGESIZE) * mmap.PAGESIZE  # round up
        last = (info.offset + stop) // mmap.PAGESIZE * mmap.PAGESIZE  # round down
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def close(self) -> None:
        if self._map is None:
            return
        with contextlib.suppress(BufferError):  # a view is still referenced: the map closes when it is freed
            self._map.close()
        self._map = None

    def __enter__(self) -> MappedSafetensors:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


__all__ = ["FLOAT_DTYPES", "MappedSafetensors", "TORCH_DTYPES"]
