"""Bounds of a generation request, checked before anything is allocated.

A request is user input: `--height 10000000` or `--steps 1000000000` must fail in milliseconds with one line,
not allocate a latent of 10**12 elements or a sigma table of 8 GB on either side. The bounds are far above any
real model's use (FLUX and Wan generate at most a few megapixels, 50 steps, 81 frames) and far below what
would exhaust memory before the first stage runs.
"""

from __future__ import annotations

import math
from typing import Any

from native_models.errors import RequestError

MAX_SIDE = 8192  # pixels per height or width
MAX_PIXELS = 2**30  # height x width x frames x batch: 4 GiB per float32 channel of decoded output
MAX_STEPS = 1000  # denoising steps (the schedulers' training timesteps)
MAX_FRAMES = 1025
MAX_BATCH = 64
MAX_SEQUENCE_LENGTH = 4096  # text tokens
MAX_PROMPT_CHARS = 100_000
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}")


def _check_prompt(name: str, value: object, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(f"{name} has {len(value)} characters, more than {MAX_PROMPT_CHARS}")
    try:  # bytes that were not UTF-8 on the command line arrive as lone surrogates: no tokenizer takes them
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(f"{name} is not valid UTF-8 text (undecodable byte at character {exc.start})") from None


def check_request_limits(*, height: object, width: object, steps: object, seed: object, frames: object = 1,
                         batch_size: object = 1, guidance_scale: object = 0.0, true_cfg_scale: object = 1.0,
                         max_sequence_length: object = 1, prompt: object = "", negative_prompt: object = None,
                         extra_prompts: object = ()) -> None:
    """Raise RequestError (one line naming the value) when a request field is of the wrong type or out of
    bounds; see the module docstring for why."""
    h = _check_int("height", height, 1, MAX_SIDE)
    w = _check_int("width", width, 1, MAX_SIDE)
    _check_int("steps", steps, 1, MAX_STEPS)
    _check_int("seed", seed, 0, MAX_SEED)
    f = _check_int("frames", frames, 1, MAX_FRAMES)
    b = _check_int("batch_size", batch_size, 1, MAX_BATCH)
    _check_int("max_sequence_length", max_sequence_length, 1, MAX_SEQUENCE_LENGTH)
    if h * w * f * b > MAX_PIXELS:
        raise RequestError(f"{b} x {f} frame(s) of {h}x{w} is {h * w * f * b} pixels, more than {MAX_PIXELS}")
    _check_float("guidance_scale", guidance_scale)
    _check_float("true_cfg_scale", true_cfg_scale)
    _check_prompt("prompt", prompt, optional=False)
    _check_prompt("negative_prompt", negative_prompt, optional=True)
    if not isinstance(extra_prompts, tuple | list):
        raise RequestError(f"extra_prompts must be a list of strings, got {type(extra_prompts).__name__}")
    for extra in extra_prompts:
        _check_prompt("extra prompt", extra, optional=False)


def check_batch_limits(batch: Any) -> None:
    """The same bounds for a native `Req` (prompts as lists, one per batch item)."""
    prompts = batch.prompt if isinstance(batch.prompt, list) else [batch.prompt]
    negatives = batch.negative_prompt if isinstance(batch.negative_prompt, list) else [batch.negative_prompt]
    check_request_limits(
        height=batch.height, width=batch.width, steps=batch.num_inference_steps, seed=batch.seed,
        frames=getattr(batch, "num_frames", 1), batch_size=max(len(prompts), 1), guidance_scale=batch.guidance_scale,
        true_cfg_scale=batch.true_cfg_scale, max_sequence_length=batch.max_sequence_length,
    )
    for prompt in prompts:
        _check_prompt("prompt", prompt, optional=False)
    for prompt in negatives:
        _check_prompt("negative_prompt", prompt, optional=True)
