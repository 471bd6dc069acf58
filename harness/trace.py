"""The trace: named tensors of one pipeline run, keyed by (stage, field, step), in a canonical layout.

Both sides write the same keys. Canonical layouts: spatial latents (B, C, H, W) never packed tokens; text
embeddings (B, L, D); pooled embeddings (B, D); sigmas (N+1,) with the terminal sigma; timesteps (N,) on the
scheduler's 0..1000 scale; decoded images (B, C, H, W) as the VAE returns them (about [-1, 1]).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STAGES = ("encode", "timesteps", "latents", "denoise", "decode")
SCHEMA_VERSION = 1

# Within a stage (and within one denoising step) records are ordered as the pipeline produces them.
FIELD_ORDER = {
    "encode": ("pooled_prompt_embeds", "prompt_embeds", "negative_pooled_prompt_embeds", "negative_prompt_embeds"),
    "timesteps": ("sigmas", "timesteps"),
    "latents": ("initial",),
    "denoise": ("transformer_output", "transformer_output_uncond", "noise_pred", "latents"),
    "decode": ("latents", "image"),
}


class TraceError(Exception):
    """A trace file is unreadable, of another schema version, or not a trace at all."""


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
        if len(parts) not in (2, 3) or parts[0] not in STAGES:
            raise TraceError(f"'{name}' is not a trace record name (stage/field[/step])")
        step = None
        if len(parts) == 3:
            if not parts[2].isdigit():
                raise TraceError(f"'{name}' has a non-integer step")
            step = int(parts[2])
        return cls(parts[0], parts[1], step)

    def order(self) -> tuple[int, int, int, str]:
        """Sort key in pipeline order: stage, then step, then the field's place within the stage."""
        fields = FIELD_ORDER.get(self.stage, ())
        field_rank = fields.index(self.field) if self.field in fields else len(fields)
        return (STAGES.index(self.stage), -1 if self.step is None else self.step, field_rank, self.field)


class Trace:
    """An ordered collection of records plus free-form metadata (case, seed, dtype, environment...).

    Records are detached CPU copies in the dtype they were produced in; comparison upcasts to float64.
    """

    def __init__(self, meta: dict | None = None) -> None:
        self.meta: dict = dict(meta or {})
        self._records: dict[RecordKey, torch.Tensor] = {}

    def record(self, stage: str, field: str, tensor: torch.Tensor, step: int | None = None) -> None:
        """Store one tensor; the signature matches the native runtime's `Recorder` protocol."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}'; stages are {', '.join(STAGES)}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"record {stage}/{field}: expected a tensor, got {type(tensor).__name__}")
        self._records[RecordKey(stage, field, step)] = tensor.detach().to("cpu").clone().contiguous()

    def __getitem__(self, key: RecordKey) -> torch.Tensor:
        return self._records[key]

    def get(self, key: RecordKey) -> torch.Tensor | None:
        return self._records.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def keys(self) -> list[RecordKey]:
        """Record keys in pipeline order."""
        return sorted(self._records, key=RecordKey.order)

    def items(self) -> Iterator[tuple[RecordKey, torch.Tensor]]:
        for key in self.keys():
            yield key, self._records[key]

    def save(self, path: str | Path) -> None:
        """Write the trace as one safetensors file (atomic: a temporary file renamed into place)."""
        path = Path(path)
        tensors = {key.name(): tensor for key, tensor in self._records.items()}
        metadata = {"schema_version": str(SCHEMA_VERSION), "meta": json.dumps(self.meta, default=str)}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        path = Path(path)
        if not path.is_file():
            raise TraceError(f"trace file not found: {path}")
        try:
            tensors = load_file(str(path))
            with open(path, "rb") as handle:
                header_len = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(header_len))
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
            raise TraceError(f"{path} is not a readable trace ({str(exc).splitlines()[0]})") from None
        metadata = header.get("__metadata__") or {}
        version = metadata.get("schema_version")
        if version != str(SCHEMA_VERSION):
            raise TraceError(f"{path} has trace schema version {version}, this harness reads version {SCHEMA_VERSION}")
        trace = cls(json.loads(metadata.get("meta", "{}")))
        for name, tensor in tensors.items():
            trace._records[RecordKey.parse(name)] = tensor
        return trace
