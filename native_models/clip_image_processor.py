"""CLIP image preprocessing, computed as transformers' `CLIPImageProcessor` (PIL backend) computes it.

`WanImageToVideoPipeline.encode_image` hands the user's image to `image_processor(images=image)`. In transformers
5 without torchvision installed (this project's lock), `CLIPImageProcessor` *is* the PIL backend
(`CLIPImageProcessorPil`): with torchvision, transformers picks a tensor backend whose bicubic resize differs
(see docs/families/wan-i2v.md). The PIL backend's steps, each reproduced here with the same library calls or the
same float arithmetic:
1. convert to RGB: images with an alpha band (or a palette transparency) are composited onto white first;
2. resize with PIL (bicubic by default) so the shortest edge is `size.shortest_edge`, the long edge
   `int(shortest * long / short)` (truncated), or to a fixed `size.height x size.width`;
3. center crop to `crop_size` (top/left offsets floored; zero padding where the image is smaller);
4. rescale: uint8 -> float64 times `rescale_factor`, then rounded to float32;
5. normalise per channel in float32: (x - mean) / std.
Only PIL images are taken: the request layer turns a path or an array into one (docs/families/wan-i2v.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from native_models.config_dict import split_config
from native_models.errors import CheckpointError
from native_models.loader import read_json

CONFIG_FILE = "preprocessor_config.json"
# Keys that name the processor or its packaging, not its arithmetic: read and ignored.
IGNORED_KEYS = frozenset({"image_processor_type", "processor_class", "feature_extractor_type", "default_to_square"})
# PIL's resampling filters by the integer transformers stores (`PILImageResampling`).
RESAMPLE = {
    0: PIL.Image.Resampling.NEAREST,
    1: PIL.Image.Resampling.LANCZOS,
    2: PIL.Image.Resampling.BILINEAR,
    3: PIL.Image.Resampling.BICUBIC,
    4: PIL.Image.Resampling.BOX,
    5: PIL.Image.Resampling.HAMMING,
}
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class CLIPImageProcessorConfig:
    """preprocessor_config.json, with transformers' CLIPImageProcessor defaults for keys left out."""

    do_resize: bool = True
    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = 3  # bicubic
    do_center_crop: bool = True
    crop_size: dict[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True
    ignored: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> CLIPImageProcessorConfig:
        """Parse the JSON dict; unknown keys and values this module does not reproduce raise ValueError."""
        values, ignored = split_config(cls, config, IGNORED_KEYS, "CLIPImageProcessor")
        for key in ("image_mean", "image_std"):
            if key in values and isinstance(values[key], list):
                values[key] = tuple(values[key])
        parsed = cls(**values, ignored=ignored)
        parsed.validate()
        return parsed

    def validate(self) -> None:
        for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.do_resize:
            keys = set(self.size)
            if keys not in ({"shortest_edge"}, {"height", "width"}):
                raise ValueError(f"size {self.size!r} is not supported (only shortest_edge, or height and width)")
            _positive_ints("size", self.size)
        if self.do_center_crop:
            if set(self.crop_size) != {"height", "width"}:
                raise ValueError(f"crop_size {self.crop_size!r} must give height and width")
            _positive_ints("crop_size", self.crop_size)
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample {self.resample!r} is not a PIL filter (one of {sorted(RESAMPLE)})")
        if isinstance(self.rescale_factor, bool) or not isinstance(self.rescale_factor, int | float):
            raise ValueError(f"rescale_factor must be a number, got {self.rescale_factor!r}")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                raise ValueError(f"{name} must be three numbers (R, G, B), got {list(values)!r}")
        if any(v == 0 for v in self.image_std):
            raise ValueError(f"image_std {list(self.image_std)} has a zero")


def _positive_ints(name: str, sizes: dict[str, Any]) -> None:
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}['{key}'] must be a positive integer, got {value!r}")


def convert_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB as transformers converts it: transparency (an alpha band or a palette's) composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """(height, width) with the shorter side `shortest` and the longer `int(shortest * long / short)`."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest * long / short)
    return (new_long, shortest) if width <= height else (shortest, new_long)


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) uint8 -> (height, width, C): offsets floored, zero padding where the image is smaller."""
    rows, cols = pixels.shape[:2]
    top, left = (rows - height) // 2, (cols - width) // 2
    if top >= 0 and left >= 0:
        return pixels[top : top + height, left : left + width]
    # Pad to at least the crop size, the image centred (ceil of half the padding on top/left), then crop.
    padded_rows, padded_cols = max(height, rows), max(width, cols)
    pad_top, pad_left = -(-(padded_rows - rows) // 2), -(-(padded_cols - cols) // 2)
    padded = np.zeros((padded_rows, padded_cols, *pixels.shape[2:]), dtype=pixels.dtype)
    padded[pad_top : pad_top + rows, pad_left : pad_left + cols] = pixels
    top, left = top + pad_top, left + pad_left
    return padded[max(0, top) : min(padded_rows, top + height), max(0, left) : min(padded_cols, left + width)]


class CLIPImageProcessor:
    """A PIL image -> normalised pixel values (1, 3, H, W) float32, as transformers' CLIPImageProcessor."""

    def __init__(self, config: CLIPImageProcessorConfig) -> None:
        self.config = config

    @classmethod
    def from_pretrained(cls, folder: Path) -> CLIPImageProcessor:
        """Read `folder/preprocessor_config.json` (one-line CheckpointError for a missing or bad file)."""
        path = Path(folder) / CONFIG_FILE
        try:
            return cls(CLIPImageProcessorConfig.from_dict(read_json(path)))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: {exc}") from None

    def resized(self, image: PIL.Image.Image) -> PIL.Image.Image:
        size, filter_ = self.config.size, RESAMPLE[self.config.resample]
        if "shortest_edge" in size:
            height, width = shortest_edge_size(image.height, image.width, size["shortest_edge"])
        else:
            height, width = size["height"], size["width"]
        return image.resize((width, height), resample=filter_)

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(f"CLIPImageProcessor takes a PIL image, got {type(image).__name__}")
        cfg = self.config
        if cfg.do_convert_rgb:
            image = convert_to_rgb(image)
        elif image.mode != "RGB":
            raise ValueError(f"image mode {image.mode} is not RGB and the processor does not convert it")
        if cfg.do_resize:
            image = self.resized(image)
        pixels = np.asarray(image)  # (H, W, 3) uint8
        if cfg.do_center_crop:
            pixels = center_crop(pixels, cfg.crop_size["height"], cfg.crop_size["width"])
        values = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # (3, H, W) uint8 (a writable copy)
        if cfg.do_rescale:
            values = (values.double() * cfg.rescale_factor).float()  # float64 product, rounded once to float32
        else:
            values = values.float()
        if cfg.do_normalize:
            mean = torch.tensor(cfg.image_mean, dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(cfg.image_std, dtype=torch.float32).view(3, 1, 1)
            values = (values - mean) / std  # float32, as numpy computes it with float32 mean and std
        return values.unsqueeze(0).contiguous()  # (1, 3, H, W)


__all__ = ["CLIPImageProcessor", "CLIPImageProcessorConfig", "convert_to_rgb"]
