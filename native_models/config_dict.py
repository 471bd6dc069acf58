"""Reading a Diffusers config.json dict into a native config dataclass: which keys are kept, ignored or refused.

Every native model and scheduler refuses keys it does not know, so an option it would not reproduce cannot pass
silently. Two conventions exist, each kept with its own error text (tests match them):
- `split_config` (VAEs, schedulers): metadata ('_' keys) and known-inert keys are kept aside in an `ignored`
  dict; the first unknown key raises, naming it and its value.
- `known_config_values` (transformers): '_' keys are dropped; all unknown keys raise together, sorted.
The numbers a config gives are never touched: values pass through as read (JSON lists optionally as tuples).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import fields
from typing import Any

# The dataclass field that holds the ignored keys (it is not itself a config key).
IGNORED_FIELD = "ignored"


def split_config(
    cls: type,
    config: Mapping[str, Any],
    ignored_keys: Collection[str],
    label: str,
    *,
    lists_to_tuples: bool = False,
    check_key: Callable[[str, Any], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(values, ignored)` of `config` for the dataclass `cls`, in the config's key order.

    `check_key(key, value)` runs first on every key (to refuse an unsupported value before the key is sorted);
    then '_' metadata and `ignored_keys` go to `ignored`, fields of `cls` (other than `ignored`) to `values`
    (a JSON list as a tuple when `lists_to_tuples`), and any other key raises
    ValueError("unknown {label} config key ...").
    """
    known = {f.name for f in fields(cls) if f.name != IGNORED_FIELD}
    values: dict[str, Any] = {}
    ignored: dict[str, Any] = {}
    for key, value in config.items():
        if check_key is not None:
            check_key(key, value)
        if key.startswith("_") or key in ignored_keys:
            ignored[key] = value
        elif key in known:
            values[key] = tuple(value) if lists_to_tuples and isinstance(value, list) else value
        else:
            raise ValueError(f"unknown {label} config key '{key}' (value {value!r})")
    return values, ignored


def known_config_values(
    cls: type, config: Mapping[str, Any], label: str, tuple_keys: Collection[str] = ()
) -> dict[str, Any]:
    """The entries of `config` that are fields of the dataclass `cls` ('_' metadata dropped), `tuple_keys` made
    tuples; any other key raises ValueError("unsupported {label} config keys [...]"), naming all of them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        raise ValueError(f"unsupported {label} config keys {unknown}")
    values = {k: v for k, v in config.items() if k in known}
    for key in tuple_keys:
        if key in values:
            values[key] = tuple(values[key])
    return values
