"""A cache of tokenizers as transformers builds them, so later runs tokenize without importing transformers.

transformers does not use a checkpoint's tokenizer.json as is: its tokenizer classes rebuild parts of the
pipeline (CLIP's normalizer and pre-tokenizer, for instance) around the saved vocabulary. To get the very ids
the reference gets, the first load goes through transformers; the backend it built (`to_str()`) and the call
settings are then stored under $DIFFPARITY_CACHE/tokenizers (default ~/.cache/diffparity), keyed by the
tokenizer folder's bytes and the transformers and tokenizers versions. A later load with the same key reads
that JSON into a PromptTokenizer. A damaged (its sha256 does not match) or stale cache file is never trusted:
it is rebuilt.
A tokenizer class that tokenizes in Python (not only through its Rust backend) is not cached; it stays a
transformers tokenizer. DIFFPARITY_TOKENIZER_CACHE=off turns the cache off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from native_models.prompt_tokenizer import PromptTokenizer, TokenizerSettings

CACHE_FORMAT = "diffparity-tokenizer/2"  # 2: chat template and named special tokens
MAX_HASHED_BYTES = 256 * 2**20  # real tokenizer folders hold a few MB; a folder past this is not cached
_CALL_METHODS = ("__call__", "_get_padding_truncation_strategies", "_encode_plus", "set_truncation_and_padding",
                 "_convert_encoding")


def cache_root() -> Path:
    """Where diffparity caches things: $DIFFPARITY_CACHE, else ~/.cache/diffparity."""
    return Path(os.environ.get("DIFFPARITY_CACHE") or "~/.cache/diffparity").expanduser()


def cache_enabled() -> bool:
    return os.environ.get("DIFFPARITY_TOKENIZER_CACHE", "on").strip().lower() not in ("off", "0", "no", "false")


@functools.cache
def _version(package: str) -> str:
    """The installed version (read once per process: each read parses the package's METADATA, ~1.4 ms, twice per
    tokenizer load)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


def tokenizer_key(folder: Path) -> str:
    """sha256 over the folder's file names and bytes and the versions that decide how they are read.
    OSError for an unreadable folder, ValueError for one too large to hash (both: no caching)."""
    files = sorted(path for path in folder.iterdir() if path.is_file())
    if sum(path.stat().st_size for path in files) > MAX_HASHED_BYTES:
        raise ValueError(f"{folder} holds more than {MAX_HASHED_BYTES >> 20} MiB")
    digest = hashlib.sha256()
    digest.update(f"{CACHE_FORMAT}\0transformers {_version('transformers')}\0"
                  f"tokenizers {_version('tokenizers')}\0".encode())
    for path in files:
        digest.update(path.name.encode("utf-8", "surrogateescape") + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def cache_path(key: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "tokenizers" / f"{key}.json"


def export_tokenizer(tokenizer: Any) -> dict[str, Any] | None:
    """The cache document for a transformers tokenizer, or None when its call does more than the Rust backend
    does (a slow or custom tokenizer): such a tokenizer is used through transformers."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    if not isinstance(tokenizer, TokenizersBackend):
        return None
    cls = type(tokenizer)
    for name in _CALL_METHODS:  # each must be transformers' own, not a subclass's Python tokenization
        owner = next(klass for klass in cls.__mro__ if name in klass.__dict__)
        if owner not in (TokenizersBackend, PreTrainedTokenizerBase):
            return None
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: a plain conversation (no tools) uses "default"
        template = template.get("default")
    try:
        settings = TokenizerSettings(
            model_max_length=int(tokenizer.model_max_length), pad_token=tokenizer.pad_token,
            pad_token_id=tokenizer.pad_token_id, pad_token_type_id=int(tokenizer.pad_token_type_id),
            padding_side=tokenizer.padding_side, truncation_side=tokenizer.truncation_side,
            split_special_tokens=bool(tokenizer.split_special_tokens),
            chat_template=template if isinstance(template, str) else None,
            special_tokens=tuple(sorted((str(k), str(v)) for k, v in tokenizer.special_tokens_map.items())),
        )
    except (TypeError, ValueError, OverflowError):  # e.g. model_max_length Infinity in tokenizer_config.json
        return None
    backend = tokenizer.backend_tokenizer.to_str()
    return {"format": CACHE_FORMAT, "class": cls.__name__, "settings": settings.to_dict(), "backend": backend,
            "sha256": content_digest(settings.to_dict(), backend)}


def content_digest(settings: Any, backend: str) -> str:
    """What a cache file's `sha256` holds: a flipped byte inside the vocabulary still parses, so it is hashed."""
    payload = json.dumps(settings, sort_keys=True) + "\0" + backend
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def tokenizer_from_document(document: Any, name: str) -> PromptTokenizer:
    """A PromptTokenizer from a cache document; ValueError for anything that is not one."""
    from tokenizers import Tokenizer

    if not isinstance(document, dict) or document.get("format") != CACHE_FORMAT:
        raise ValueError("not a diffparity tokenizer cache file")
    if not isinstance(document.get("settings"), dict) or not isinstance(document.get("backend"), str):
        raise ValueError("tokenizer cache file lacks settings or backend")
    if document.get("sha256") != content_digest(document["settings"], document["backend"]):
        raise ValueError("tokenizer cache file does not match its sha256")
    settings = TokenizerSettings.from_dict(document["settings"])
    try:
        backend = Tokenizer.from_str(document["backend"])
    except Exception as exc:  # noqa: BLE001 - the Rust parser raises plain Exception
        raise ValueError(f"tokenizer backend does not parse ({str(exc).splitlines()[0] if str(exc) else exc})"
                         ) from None
    return PromptTokenizer(backend, settings, name)


def read_cached(path: Path, name: str) -> PromptTokenizer | None:
    """The cached tokenizer at `path`, or None when it is missing or damaged (then it is rebuilt)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return tokenizer_from_document(document, name)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, RecursionError):
        return None


def write_cached(path: Path, document: dict[str, Any]) -> None:
    """Atomic write; a cache that cannot be written (read-only home) is skipped, the run goes on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError:
        return


def load_cached_tokenizer(folder: Path, load_with_transformers: Callable[[Path], Any], root: Path | None = None
                          ) -> Any:
    """The tokenizer in `folder`: from the cache when its key matches, else built by `load_with_transformers`
    (folder -> transformers tokenizer), exported and cached. Either way a cacheable tokenizer is returned as a
    PromptTokenizer read back from its document, so cold and warm runs tokenize through the same code."""
    if not cache_enabled():
        return load_with_transformers(folder)
    name = str(folder)
    try:
        path = cache_path(tokenizer_key(folder), root)
    except (OSError, ValueError):  # transformers says what is wrong with the folder, if anything
        return load_with_transformers(folder)
    cached = read_cached(path, name)
    if cached is not None:
        return cached
    tokenizer = load_with_transformers(folder)
    document = export_tokenizer(tokenizer)
    if document is None:
        return tokenizer
    try:
        prompt_tokenizer = tokenizer_from_document(json.loads(json.dumps(document)), name)
    except ValueError:
        return tokenizer
    write_cached(path, document)
    return prompt_tokenizer
