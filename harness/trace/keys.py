"""Trace keys: the stages, the (stage, field, step) names of records, their pipeline order and storable dtypes.

Both sides write the same keys. Canonical layouts: spatial latents (B, C, H, W) never packed tokens; text
embeddings (B, L, D); pooled embeddings (B, D); sigmas (N+1,) with the terminal sigma; timesteps (N,) on the
scheduler's 0..1000 scale; decoded images (B, C, H, W) as the VAE returns them (about [-1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STAGES = ("encode", "timesteps", "latents", "denoise", "decode")
# 2: adds the environment fingerprint, a crc32 per record and the "format" marker; records in pipeline order.
SCHEMA_VERSION = 2
FORMAT = "diffparity-trace"

# Within a stage (and within one denoising step) records are ordered as the pipeline produces them.
# Image-to-video adds `encode/image_embeds` (the image encoder's tokens the DiT attends to), `latents/mask` and
# `latents/condition` (the mask channels and VAE-encoded conditioning latents concatenated to the noisy latents);
# two-expert models add `denoise/expert` (int64 (1,): which transformer ran the step, compared exactly).
FIELD_ORDER = {
    "encode": ("pooled_prompt_embeds", "prompt_embeds", "negative_pooled_prompt_embeds", "negative_prompt_embeds",
               "image_embeds"),
    "timesteps": ("sigmas", "timesteps"),
    "latents": ("initial", "mask", "condition"),
    "denoise": ("expert", "transformer_output", "transformer_output_uncond", "noise_pred", "latents"),
    "decode": ("latents", "image"),
}

# safetensors dtype names of the dtypes a trace may hold
DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}


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


def checked_key(stage: str, field: str, step: int | None) -> RecordKey:
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'; stages are {', '.join(STAGES)}")
    if not field or "/" in field:
        raise ValueError(f"record {stage}/{field}: a field name must be non-empty and contain no '/'")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"record {stage}/{field}: step must be a non-negative int or None, got {step!r}")
    return RecordKey(stage, field, step)


def cpu_contiguous(stage: str, field: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"record {stage}/{field}: expected a tensor, got {type(tensor).__name__}")
    if tensor.dtype not in DTYPE_NAMES:
        raise ValueError(f"record {stage}/{field}: dtype {tensor.dtype} cannot be stored in a trace")
    return tensor.detach().to("cpu").contiguous()
