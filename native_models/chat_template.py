"""Chat templates rendered the way transformers renders them, without importing transformers.

Chat-LLM text encoders (Z-Image's Qwen3) get the prompt wrapped in the tokenizer's chat template: a Jinja template
stored with the tokenizer. transformers renders it in a sandboxed Jinja environment with `trim_blocks` and
`lstrip_blocks`, the loop-control extension, a `tojson` filter that does not escape HTML, `raise_exception`,
`strftime_now`, `dict` and `namespace` globals, and passes the messages, `tools=None`, `documents=None`,
`add_generation_prompt`, the tokenizer's named special tokens and the caller's keyword arguments. This module does
the same for the one call a pipeline makes (a plain text conversation, no tools), so the native side wraps a
prompt into the very string the reference tokenizes (tests/test_tokenizer_cache.py compares them).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from native_models.errors import CheckpointError


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)


@lru_cache(maxsize=8)
def compile_chat_template(template: str) -> jinja2.Template:
    """The template compiled in transformers' environment; CheckpointError when it does not parse."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=dict,
                       namespace=jinja2.utils.Namespace)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as exc:
        raise CheckpointError(f"the tokenizer's chat template does not parse ({exc})") from None


def render_chat_template(template: str, messages: list[dict[str, str]], add_generation_prompt: bool,
                         special_tokens: dict[str, str], **kwargs: Any) -> str:
    """The string `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...,
    **kwargs)` returns, for a conversation of plain-text messages."""
    values = {**special_tokens, **kwargs}  # the caller's keywords override a special token of the same name
    try:
        return compile_chat_template(template).render(messages=messages, tools=None, documents=None,
                                                      add_generation_prompt=add_generation_prompt, **values)
    except jinja2.exceptions.TemplateError as exc:
        raise CheckpointError(f"the tokenizer's chat template failed ({exc})") from None
