"""`PipelineStage`: one step of a pipeline that declares the batch fields it reads and writes.

The declarations are checked every time the stage runs, before and after its work: the classic native-port
bugs (sigmas as a numpy array, one bare tensor where a list of per-encoder embeddings is expected, a missing
`raw_latent_shape`) become a one-line `StageFieldError` naming the stage and the field.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from native_models.errors import StageFieldError
from native_models.req import Req


@dataclass(frozen=True)
class FieldKind:
    """A named predicate on a field's value; `describe` is what the error message says was expected."""

    describe: str
    check: Callable[[Any], bool]


def _is_tensor_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, torch.Tensor) for v in value)


def _is_float_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
    )


def _is_shape(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) >= 3 and all(isinstance(v, int) and v > 0 for v in value)


def _is_rgb_image(value: Any) -> bool:
    import PIL.Image  # only the image-conditioned stages check this kind; PIL stays out of other processes

    return isinstance(value, PIL.Image.Image) and value.mode == "RGB" and min(value.size) > 0


TENSOR = FieldKind("a torch.Tensor", lambda v: isinstance(v, torch.Tensor))
RGB_IMAGE = FieldKind("a PIL image in mode RGB", _is_rgb_image)
TENSOR_LIST = FieldKind("a list of torch.Tensor (one per text encoder)", _is_tensor_list)
FLOAT_LIST = FieldKind("a non-empty list of Python floats", _is_float_list)
POSITIVE_INT = FieldKind("a positive int", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)
SHAPE = FieldKind("a tuple of positive ints (B, C, h, w)", _is_shape)
GENERATOR = FieldKind("a torch.Generator", lambda v: isinstance(v, torch.Generator))
STRING_LIST = FieldKind("a non-empty list of str", lambda v: isinstance(v, list) and v and all(
    isinstance(s, str) for s in v))


def describe_value(value: Any) -> str:
    """Short description of what was found instead, e.g. 'numpy.ndarray' or 'list of 2 str'."""
    if value is None:
        return "missing (None)"
    if isinstance(value, list):
        kinds = sorted({type(v).__name__ for v in value})
        return f"list of {len(value)} {'/'.join(kinds) or 'items'}"
    kind = type(value)
    module = kind.__module__
    if module.startswith("PIL.") and hasattr(value, "mode"):
        return f"PIL.Image in mode {value.mode}"
    return kind.__name__ if module == "builtins" else f"{module.split('.')[0]}.{kind.__name__}"


class PipelineStage(ABC):
    """Base of all stages. Subclasses set `reads` / `writes` and implement `forward`.

    `reads` maps a `Req` field to the kind it must hold before the stage runs; `writes` maps the fields the
    stage promises to fill. `optional_reads` are checked only when not None.
    """

    trace_stage: ClassVar[str] = ""
    reads: ClassVar[dict[str, FieldKind]] = {}
    optional_reads: ClassVar[dict[str, FieldKind]] = {}
    writes: ClassVar[dict[str, FieldKind]] = {}

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, batch: Req) -> Req:
        self.check_inputs(batch)
        batch = self.forward(batch)
        self._check(batch, self.writes, "output", required=True)
        return batch

    def check_inputs(self, batch: Req) -> None:
        """Check the declared reads; for callers that run a part of the stage alone (one denoising step)."""
        self._check(batch, self.reads, "input", required=True)
        self._check(batch, self.optional_reads, "input", required=False)

    def _check(self, batch: Req, kinds: dict[str, FieldKind], role: str, required: bool) -> None:
        for field_name, kind in kinds.items():
            value = getattr(batch, field_name, None)
            if value is None and not required:
                continue
            if not kind.check(value):
                raise StageFieldError(
                    self.name, field_name, f"({role}) must be {kind.describe}, got {describe_value(value)}"
                )

    @abstractmethod
    def forward(self, batch: Req) -> Req:
        """Do the stage's work on the batch and return it."""
