"""Where model families come in: the one place the harness reaches family code, by name and on first use.

references/families.py lists each family's package (`FAMILIES`, one line per family). A family package registers
its parity cases in its `cases` module (harness/run/cases.py `register_case`) and its faults in its `faults`
module (harness/verdicts/faults.py `register`). The registries here import those modules the first time they
are read, so the harness holds no model knowledge, `diffparity list` stays fast, and adding a family touches only
its own files plus its line in FAMILIES.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import TypeVar

FAMILY_LIST = "references.families"  # the module whose FAMILIES names every family package

T = TypeVar("T")


def family_packages() -> tuple[str, ...]:
    return tuple(importlib.import_module(FAMILY_LIST).FAMILIES)


def import_family_modules(submodule: str) -> None:
    """Import `<package>.<submodule>` of every family (each registers what it declares); a family without that
    module is skipped, an error inside one is raised."""
    for package in family_packages():
        name = f"{package}.{submodule}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


class FamilyRegistry(MutableMapping[str, T]):
    """A name -> item mapping that the families' `submodule` modules fill the first time it is used.

    Registering an item (setting a key) from a family module while the registry loads does not load again."""

    def __init__(self, submodule: str) -> None:
        self._submodule = submodule
        self._items: dict[str, T] = {}
        self._state = "empty"  # empty -> loading -> loaded

    def _load(self) -> None:
        if self._state != "empty":
            return
        self._state = "loading"
        try:
            import_family_modules(self._submodule)
        except BaseException:
            self._state = "empty"
            raise
        self._state = "loaded"

    def __getitem__(self, name: str) -> T:
        self._load()
        return self._items[name]

    def __setitem__(self, name: str, item: T) -> None:
        self._load()
        self._items[name] = item

    def __delitem__(self, name: str) -> None:
        self._load()
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def __repr__(self) -> str:
        return f"FamilyRegistry({self._submodule!r}, {list(self._items)})"
