"""The one description of a generation that both sides (native and Diffusers reference) execute."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from harness.run.request_image import ImageInputError, RequestImage
from native_models.errors import RequestError
from native_models.limits import check_request_limits


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides a run's numbers, shared verbatim by the native and the reference side.

    `guidance_scale` feeds the DiT's guidance embedding (FLUX-dev style); `true_cfg_scale` > 1 together with a
    `negative_prompt` turns on classifier-free guidance with a second transformer pass, as Diffusers does.
    `true_cfg_scale_2`: the second (low-noise) expert's CFG scale of a two-expert model (Wan 2.2 A14B; WanPipeline's
    `guidance_scale_2`), None for the first's. `image`: the conditioning image of an image-to-video case,
    validated when it is made (harness/run/request_image.py) and checked here against the request's size.
    """

    prompt: str
    seed: int = 0
    steps: int = 4
    height: int = 64
    width: int = 64
    frames: int = 1  # video pipelines (Wan: 4k + 1 frames); image pipelines ignore it
    guidance_scale: float = 3.5
    negative_prompt: str | None = None
    true_cfg_scale: float = 1.0
    max_sequence_length: int = 512
    dtype: str = "fp32"
    device: str = "cpu"
    batch_size: int = 1  # images per prompt: the native side encodes the prompt this many times, Diffusers
    # gets num_images_per_prompt; one CPU generator draws the whole (B, C, h, w) noise at once on both sides
    # More prompts of the same batch, encoded in one call with `prompt` (Diffusers gets the list): prompts of
    # different lengths are padded together, the one way a text encoder's padding mask or a DiT's text mask can
    # matter in a pipeline that encodes each call's prompts alone. Batch = len(prompts) x batch_size, each prompt's
    # images next to each other; one negative prompt serves every prompt.
    extra_prompts: tuple[str, ...] = ()
    true_cfg_scale_2: float | None = None
    image: RequestImage | None = None

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if isinstance(self.extra_prompts, list):  # JSON has no tuples: a stored request reads back as a list
            object.__setattr__(self, "extra_prompts", tuple(self.extra_prompts))
        if not isinstance(self.extra_prompts, tuple):
            raise ValueError(f"extra_prompts must be a tuple of strings, got {type(self.extra_prompts).__name__}")
        # types and bounds (native_models/limits.py): a huge size fails here, before either side allocates
        check_request_limits(
            height=self.height, width=self.width, steps=self.steps, seed=self.seed, frames=self.frames,
            batch_size=self.batch_size * len(self.prompts), guidance_scale=self.guidance_scale,
            true_cfg_scale=self.true_cfg_scale, max_sequence_length=self.max_sequence_length, prompt=self.prompt,
            negative_prompt=self.negative_prompt, extra_prompts=self.extra_prompts,
        )
        scale_2 = self.true_cfg_scale_2
        if scale_2 is not None and (isinstance(scale_2, bool) or not isinstance(scale_2, int | float)
                                    or not math.isfinite(scale_2)):
            raise RequestError(f"true_cfg_scale_2 must be a finite number or None, got {scale_2!r}")
        if self.image is not None:
            if not isinstance(self.image, RequestImage):
                raise ImageInputError(f"image must be a RequestImage (load_image / image_from_array), got "
                                      f"{type(self.image).__name__}")
            self.image.check_fits(self.height, self.width)

    @property
    def prompts(self) -> tuple[str, ...]:
        """Every prompt of the batch, `prompt` first (each stands for `batch_size` images)."""
        return (self.prompt, *self.extra_prompts)

    @property
    def do_true_cfg(self) -> bool:
        return self.true_cfg_scale > 1.0 and self.negative_prompt is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data equal to what a stored request reads back as: extra_prompts as a list, the image as
        its source, size and pixel sha256 (RequestImage.to_dict), not its pixels."""
        data = asdict(self)
        data["extra_prompts"] = list(self.extra_prompts)
        data["image"] = None if self.image is None else self.image.to_dict()
        return data
