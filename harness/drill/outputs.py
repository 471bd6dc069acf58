"""A module call's result as labelled tensors, so the two sides' results can be paired and compared.

Modules return a tensor, a tuple, a NamedTuple, a dataclass or a Diffusers/transformers `ModelOutput` (an
ordered mapping). `flatten` turns any of these into `(label, tensor)` pairs, dropping None and non-tensors;
mapping-like results carry their field names (`last_hidden_state`), sequences their positions (`0`, `1.2`).
`pair` matches two flattened results: by field name when both sides name their fields, else by position when
both hold the same number of tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Flat:
    """The tensors of one call result in order, with their labels; `named` when the top level had field names."""

    labels: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]
    named: bool

    def __len__(self) -> int:
        return len(self.tensors)

    def pick(self, indices: tuple[int, ...]) -> Flat:
        """Only the tensors at `indices` (in that order), unnamed: used where two sides return other tuples."""
        missing = [i for i in indices if not -len(self) <= i < len(self)]
        if missing:
            raise IndexError(f"output index {missing[0]} out of range for {len(self)} tensors")
        return Flat(tuple(str(n) for n in range(len(indices))), tuple(self.tensors[i] for i in indices), False)


def _items(value: Any) -> tuple[list[tuple[str, Any]], bool] | None:
    """(label, item) pairs of a container and whether the labels are field names; None for a leaf."""
    if isinstance(value, Mapping):
        return [(str(k), v) for k, v in value.items()], True
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # NamedTuple
        return list(zip(value._fields, value, strict=True)), True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)], True
    if isinstance(value, list | tuple):
        return [(str(i), v) for i, v in enumerate(value)], False
    return None


def flatten(value: Any) -> Flat:
    """Every tensor in `value`, depth first, labelled by its path ('0', 'hidden_states.2', '' for a bare tensor)."""
    labels: list[str] = []
    tensors: list[torch.Tensor] = []

    def walk(item: Any, label: str, depth: int) -> None:
        if isinstance(item, torch.Tensor):
            labels.append(label)
            tensors.append(item)
            return
        if depth > 4:  # deeper nesting is no module output we compare (caches, configs)
            return
        children = _items(item)
        if children is None:
            return
        for name, child in children[0]:
            walk(child, f"{label}.{name}" if label else name, depth + 1)

    top = _items(value)
    walk(value, "", 0)
    return Flat(tuple(labels), tuple(tensors), bool(top and top[1]))


def pair(native: Flat, reference: Flat) -> tuple[list[tuple[str, torch.Tensor, torch.Tensor]], str | None]:
    """Matched (label, native tensor, reference tensor) triples, and why nothing could be matched (else None)."""
    if native.named and reference.named:
        by_label = dict(zip(native.labels, native.tensors, strict=True))
        pairs = [(label, by_label[label], tensor) for label, tensor in zip(reference.labels, reference.tensors,
                                                                           strict=True) if label in by_label]
        if pairs:
            return pairs, None
        return [], f"no output field in common (native {list(native.labels)}, reference {list(reference.labels)})"
    if len(native) == len(reference) and len(reference):
        labels = reference.labels if reference.named else native.labels
        return list(zip(labels, native.tensors, reference.tensors, strict=True)), None
    return [], f"native returns {len(native)} tensor(s), reference {len(reference)}: outputs differ in structure"
