"""Remembering, within one process, what checking a component's config and headers found.

A parity run checks every component before anything loads (plan: config builds on the meta device within the
checkpoint's size, headers match the model) and the loader checks it again when it loads; a session that runs
many parities (the test suite, `faults`, `gate`, `calibrate`) checks the same folders over and over. Each check
builds the model from its config.json, which for the tiny models costs more than running them (module
construction is Python: ~20 ms per VAE). The results depend only on the class, the parsed config.json and the
headers, so they are keyed by exactly those: an edited config.json or shard is a new key and is checked afresh.
Only successes are remembered; a failing check raises every time.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


def config_key(cls: type, config: dict[str, Any], *extra: Hashable) -> tuple[Hashable, ...] | None:
    """(class, canonical config.json text, extra...), or None for a config that JSON cannot write canonically
    (then nothing is remembered for it)."""
    try:
        text = json.dumps(config, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError):
        return None
    return (cls, text, *extra)


class BoundedMemo(Generic[V]):
    """The `size` most recently used results (a long session checks many folders; each key holds a config's
    text, a few KB)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable | None) -> V | None:
        if key is None or key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Hashable | None, value: V) -> None:
        if key is None:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def entries(self) -> list[tuple[Hashable, V]]:
        """Every (key, result), oldest first: what `update` takes in another process (a rank the checking
        process launches; keys and results pickle)."""
        return list(self._items.items())

    def update(self, entries: list[tuple[Hashable, V]]) -> None:
        for key, value in entries:
            self.put(key, value)
