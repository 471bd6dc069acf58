"""Which checkpoint a golden was recorded from, by the content that decides the numbers.

A golden binds to its checkpoint's tensors (component/name, dtype, shape, bytes), to the *semantic* configs (every
key except version and provenance metadata written by whichever library saved the folder) and to the tokenizers'
behaviour (vocabulary, merges, special tokens, normalizer, pre-tokenizer, post-processor, decoder). Incidental
bytes do not count: a checkpoint rebuilt by transformers 5.25.0 instead of 5.24.0 differs only in the
`transformers_version` strings of its configs, which is a warning ("same tensors and config; ..."), never a
different checkpoint. Sharding does not count either: tensors are keyed by component and name, not by file.

The identity is a dict of entries (`component/tensor` or `component/file:key` -> a short value or hash), so a
mismatch names what changed. Folders larger than CONTENT_LIMIT (real checkpoints) are identified by their
headers: tensor names, dtypes and shapes, configs and tokenizers, without reading tensor bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from native_models.safetensors_header import read_safetensors_header

SCHEMA = 1
CONTENT_LIMIT = 64 * 1024 * 1024  # folders up to this size are identified by every tensor byte
# written by the saving library about itself, not about the model
PROVENANCE_KEYS = frozenset({"_diffusers_version", "transformers_version", "_name_or_path", "_commit_hash"})
TOKENIZER_FORMAT_KEYS = frozenset({"version"})  # tokenizer.json's own format version
BUILD_INFO_FILES = frozenset({"diffparity_build.json"})  # the tiny builders' provenance record
INLINE_VALUE_CHARS = 96  # config values up to this long are kept as they are, so a change can be shown
SHOWN_CHANGES = 5


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _value_entry(value: Any) -> str:
    """A config value as stored: itself (JSON) when short, else a hash of it."""
    text = _canonical(value)
    return text if len(text) <= INLINE_VALUE_CHARS else "sha256:" + _short_hash(text.encode())


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.name not in BUILD_INFO_FILES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _tensor_entries(file: Path, component: str, with_bytes: bool) -> dict[str, str]:
    """component/name -> hash of (dtype, shape[, bytes]) for every tensor of one safetensors file."""
    read_safetensors_header(file)  # validated: offsets tile the data section
    entries = {}
    with open(file, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_len))
        data_start = 8 + header_len
        for name, info in sorted(header.items()):
            if name == "__metadata__":
                continue
            digest = hashlib.sha256(f"{info['dtype']}{info['shape']}".encode())
            if with_bytes:
                begin, end = info["data_offsets"]
                handle.seek(data_start + begin)
                digest.update(handle.read(end - begin))
            entries[f"{component}{name}"] = digest.hexdigest()[:16]
    return entries


def _tokenizer_entries(data: dict[str, Any], prefix: str) -> dict[str, str]:
    """A tokenizer.json by the sections that decide how text becomes ids."""
    entries = {}
    for key, value in data.items():
        if key in TOKENIZER_FORMAT_KEYS:
            continue
        if key == "model" and isinstance(value, dict):
            for sub, sub_value in value.items():
                entries[f"{prefix}:model.{sub}"] = _value_entry(sub_value)
        else:
            entries[f"{prefix}:{key}"] = _value_entry(value)
    return entries


def _json_entries(file: Path, prefix: str, provenance: dict[str, set[str]]) -> dict[str, str]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {prefix: "bytes:" + _short_hash(file.read_bytes())}  # not JSON: its bytes are its identity
    if not isinstance(data, dict):
        return {prefix: _value_entry(data)}
    if file.name == "tokenizer.json":
        if isinstance(data.get("version"), str):
            provenance.setdefault("tokenizer.json version", set()).add(data["version"])
        return _tokenizer_entries(data, prefix)
    if file.name.endswith(".safetensors.index.json"):
        return {}  # which shard holds which tensor is incidental: the tensors themselves are identified
    entries = {}
    for key, value in data.items():
        if key in PROVENANCE_KEYS:
            provenance.setdefault(key, set()).add(str(value))
        else:
            entries[f"{prefix}:{key}"] = _value_entry(value)
    return entries


def checkpoint_identity(folder: Path, content_limit: int = CONTENT_LIMIT) -> dict[str, Any]:
    """The identity of a checkpoint folder: `digest` over the semantic entries, the entries themselves, the
    provenance strings (library versions) that are left out, and how it was taken (`kind`)."""
    folder = Path(folder)
    files = _files(folder)
    total = sum(p.stat().st_size for p in files)
    kind = "content" if total <= content_limit else "headers"
    entries: dict[str, str] = {}
    provenance: dict[str, set[str]] = {}
    for file in files:
        relative = file.relative_to(folder).as_posix()
        component = relative.rsplit("/", 1)[0] + "/" if "/" in relative else ""
        if file.suffix == ".safetensors":
            entries.update(_tensor_entries(file, component, kind == "content"))
        elif file.suffix == ".json":
            entries.update(_json_entries(file, relative, provenance))
        elif kind == "content" or file.stat().st_size <= content_limit:
            entries[relative] = "bytes:" + _short_hash(file.read_bytes())  # spiece.model, merges.txt, ...
        else:
            entries[relative] = f"size:{file.stat().st_size}"
    digest = hashlib.sha256(_canonical(entries).encode()).hexdigest()
    return {"schema": SCHEMA, "digest": digest, "kind": kind, "files": len(files), "bytes": total,
            "entries": entries, "provenance": {key: sorted(values) for key, values in sorted(provenance.items())}}


@dataclass
class IdentityComparison:
    """A recorded identity against the current checkpoint's: `changes` decide (another checkpoint), `provenance`
    only informs (the same checkpoint saved by other library versions)."""

    changes: list[str] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        """The first few changes in one line, with how many more."""
        shown = "; ".join(self.changes[:SHOWN_CHANGES])
        more = len(self.changes) - SHOWN_CHANGES
        return shown + (f"; and {more} more" if more > 0 else "")

    def warning(self) -> str | None:
        """The sentence for a report when only provenance differs."""
        if not self.same or not self.provenance:
            return None
        return "same tensors and config; " + "; ".join(self.provenance)


def _describe(name: str, before: str | None, after: str | None) -> str:
    if before is None:
        return f"{name} added"
    if after is None:
        return f"{name} removed"
    if ":" in name and not before.startswith("sha256:") and not after.startswith("sha256:"):
        return f"{name} {before} -> {after}"
    if ":" not in name and "/" in name and not before.startswith(("bytes:", "size:")):
        return f"{name}: tensor differs (dtype, shape or bytes)"
    return f"{name} differs"


def compare_identities(recorded: dict[str, Any], current: dict[str, Any]) -> IdentityComparison:
    """What differs between two identities, in a stable order: changed entries first, then added and removed."""
    result = IdentityComparison()
    old, new = recorded.get("entries", {}), current.get("entries", {})
    if recorded.get("kind") != current.get("kind"):
        result.changes.append(f"identified by {recorded.get('kind')} when recorded, by {current.get('kind')} now "
                              f"({recorded.get('bytes')} vs {current.get('bytes')} bytes)")
    changed = [k for k in old if k in new and old[k] != new[k]]
    added = [k for k in new if k not in old]
    removed = [k for k in old if k not in new]
    result.changes += [_describe(k, old[k], new[k]) for k in changed]
    result.changes += [_describe(k, None, new[k]) for k in added] + [_describe(k, old[k], None) for k in removed]
    before, after = recorded.get("provenance", {}), current.get("provenance", {})
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            was = ", ".join(before.get(key, [])) or "none"
            now = ", ".join(after.get(key, [])) or "none"
            result.provenance.append(f"saved with {key} {was} when recorded, {now} in this checkpoint")
    return result
