"""Prompt tokenization with the `tokenizers` library alone, the way transformers' fast tokenizers call it.

transformers' TokenizersBackend turns `tokenizer(prompts, padding="max_length", max_length=L, truncation=True)`
into three things on its Rust backend: enable truncation (longest_first, stride 0, the tokenizer's truncation
side), enable padding (to L with its pad token, on its padding side), and `encode_batch` with special tokens.
`padding=True` / `"longest"` (Qwen-Image) pads to the batch's longest prompt instead (the backend's padding with
no length). PromptTokenizer makes the same calls on the same backend, so a run that only needs token ids does
not have to import transformers (about a second of a verify run). The backend and its settings come from
native_models/tokenizer_cache.py, which exports them from the tokenizer transformers built; the settings carry
the tokenizer's chat template and named special tokens, so `apply_chat_template` renders what transformers
renders (native_models/chat_template.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from native_models.errors import CheckpointError, RequestError

LARGE_INTEGER = int(1e20)  # transformers: a model_max_length above this means "no limit"


@dataclass(frozen=True)
class TokenizerSettings:
    """The Python-side attributes of a transformers tokenizer that its `__call__` hands to the backend."""

    model_max_length: int
    pad_token: str | None
    pad_token_id: int | None
    pad_token_type_id: int
    padding_side: str
    truncation_side: str
    split_special_tokens: bool
    chat_template: str | None = None  # the Jinja chat template (its "default" one), if the tokenizer has one
    special_tokens: tuple[tuple[str, str], ...] = ()  # named special tokens (bos_token, ...) a template may read

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["special_tokens"] = dict(self.special_tokens)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerSettings:
        """Checked field by field: the settings come from a cache file that may be damaged."""
        ints = ("model_max_length", "pad_token_type_id")
        if set(data) != set(cls.__dataclass_fields__):
            raise ValueError(f"settings fields {sorted(data)}")
        if any(type(data[name]) is not int for name in ints):
            raise ValueError("settings: integer fields are not integers")
        if data["pad_token_id"] is not None and type(data["pad_token_id"]) is not int:
            raise ValueError("settings: pad_token_id is not an integer")
        if data["pad_token"] is not None and not isinstance(data["pad_token"], str):
            raise ValueError("settings: pad_token is not a string")
        if data["padding_side"] not in ("left", "right") or data["truncation_side"] not in ("left", "right"):
            raise ValueError("settings: padding/truncation side is not left or right")
        if not isinstance(data["split_special_tokens"], bool):
            raise ValueError("settings: split_special_tokens is not a boolean")
        if data["chat_template"] is not None and not isinstance(data["chat_template"], str):
            raise ValueError("settings: chat_template is not a string")
        special = data["special_tokens"]
        if not isinstance(special, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in special.items()):
            raise ValueError("settings: special_tokens is not a mapping of strings")
        return cls(**{**data, "special_tokens": tuple(sorted(special.items()))})


@dataclass
class TokenBatch:
    """What the text encoding stage reads from a tokenizer call (a subset of transformers' BatchEncoding)."""

    input_ids: torch.Tensor  # (B, L) int64
    attention_mask: torch.Tensor | None  # (B, L) int64, or None when not asked for


class PromptTokenizer:
    """A `tokenizers.Tokenizer` plus transformers' call settings; called like a transformers tokenizer for the
    one pattern the pipelines use (pad to max_length, truncate, PyTorch tensors)."""

    def __init__(self, backend: Any, settings: TokenizerSettings, name: str = "tokenizer") -> None:
        self.backend = backend
        self.settings = settings
        self.name = name

    @property
    def model_max_length(self) -> int:
        return self.settings.model_max_length

    @property
    def padding_side(self) -> str:
        return self.settings.padding_side

    def apply_chat_template(self, conversation: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = False, **kwargs: Any) -> str:
        """The conversation wrapped in the tokenizer's chat template, as a string (transformers' call with
        `tokenize=False`; no tools, no documents)."""
        if tokenize:
            raise NotImplementedError("PromptTokenizer.apply_chat_template returns the string (tokenize=False)")
        if self.settings.chat_template is None:
            raise CheckpointError(f"{self.name} has no chat template")
        from native_models.chat_template import render_chat_template

        return render_chat_template(self.settings.chat_template, conversation, add_generation_prompt,
                                    dict(self.settings.special_tokens), **kwargs)

    def __call__(self, prompts: list[str], padding: str | bool = "max_length", max_length: int | None = None,
                 truncation: bool = True, return_tensors: str = "pt", return_attention_mask: bool = True
                 ) -> TokenBatch:
        """`padding`: "max_length" pads every prompt to `max_length` (else the tokenizer's limit); True or
        "longest" pads to the longest prompt of the call, each cut to `max_length` first."""
        longest = padding is True or padding == "longest"
        if not (longest or padding == "max_length") or truncation is not True or return_tensors != "pt":
            raise NotImplementedError("PromptTokenizer pads (to max_length or the longest prompt), truncates and "
                                      "returns PyTorch tensors")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("PromptTokenizer takes a list of prompt strings")
        settings = self.settings
        if max_length is None and settings.model_max_length > LARGE_INTEGER:
            raise NotImplementedError(f"{self.name} has no length limit: pass max_length")
        length = settings.model_max_length if max_length is None else max_length
        if settings.pad_token is None or settings.pad_token_id is None or settings.pad_token_id < 0:
            raise CheckpointError(f"{self.name} has no padding token, so prompts cannot be padded to {length}")
        self.backend.enable_truncation(length, stride=0, strategy="longest_first",
                                       direction=settings.truncation_side)
        self.backend.enable_padding(direction=settings.padding_side, pad_id=settings.pad_token_id,
                                    pad_type_id=settings.pad_token_type_id, pad_token=settings.pad_token,
                                    length=None if longest else length, pad_to_multiple_of=None)
        self.backend.encode_special_tokens = settings.split_special_tokens
        encodings = self.backend.encode_batch(prompts, add_special_tokens=True, is_pretokenized=False)
        if len({len(encoding.ids) for encoding in encodings}) > 1:  # below its special tokens the backend cuts
            special = self.backend.num_special_tokens_to_add(False)  # nothing; transformers then fails as well
            raise RequestError(f"{self.name}: prompts cannot be cut to {length} tokens; this tokenizer adds "
                               f"{special} special tokens")
        ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.long)
        mask = None
        if return_attention_mask:
            mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.long)
        return TokenBatch(ids, mask)
