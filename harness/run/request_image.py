"""The conditioning image of a request (image-to-video): loaded, validated and pinned down before any work.

A user's image is input like a prompt: it is read once, checked, and held as 8-bit RGB pixels that both sides get
as the same PIL image (Diffusers resizes a PIL image with Lanczos and a numpy array with `F.interpolate`, and CLIP
sees whatever it is given, so the reference must get PIL, never the array). What is refused, each with one line:
- a missing path, a folder, a FIFO or device (never opened: a FIFO would block), a file PIL cannot read, one that
  is truncated or corrupt;
- an image with an alpha channel (RGBA, LA, PA, P with transparency): WanImageToVideoPipeline would hand 4 channels
  to the VAE's 3-channel convolution (VaeImageProcessor never converts) while CLIP composites the alpha onto white,
  so there is no reference behaviour to match; flatten it first;
- a 16-bit or float image (I;16, I, F, or a 16-bit PNG, which PIL silently cuts to 8 bits): the reference path
  takes 8-bit pixels;
- an image smaller than `MIN_SIDE` pixels on a side (a 1x1 image carries no picture) or larger than the request
  limits allow;
- an image whose aspect ratio differs from the request's by more than `MAX_ASPECT_STRETCH` (checked by
  `check_fits`): the pipeline resizes it to the request's size whatever its shape, so it would be stretched.
Gray (L), palette without transparency (P), CMYK and YCbCr images are converted to RGB first, and both sides get the
converted pixels. An image is identified by the sha256 of its pixels; `synthetic(...)` makes the deterministic test
pattern the tiny cases use, from integer arithmetic only (the same bytes on every machine and numpy version).
"""

from __future__ import annotations

import hashlib
import math
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from native_models.errors import RequestError
from native_models.limits import MAX_SIDE

if TYPE_CHECKING:
    import numpy as np
    import PIL.Image

MIN_SIDE = 8  # pixels: one latent cell of an 8x VAE
MAX_ASPECT_STRETCH = 1.25  # the largest factor by which the resize to the request's size may stretch one axis
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
DEEP_MODES = frozenset({"I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;16S"})
CONVERTIBLE_MODES = frozenset({"1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV"})
SYNTHETIC_PREFIX = "synthetic:"


class ImageInputError(RequestError):
    """A conditioning image that cannot be used; the message names the image and the reason, in one line."""


@dataclass(frozen=True)
class RequestImage:
    """8-bit RGB pixels (row-major H x W x 3 bytes) and where they came from. Equal when the pixels are equal."""

    width: int
    height: int
    pixels: bytes = field(repr=False)
    source: str = field(default="array", compare=False)  # a path, "array", or "synthetic:seed=S:WxH"

    def __post_init__(self) -> None:
        if len(self.pixels) != self.width * self.height * 3:
            raise ImageInputError(f"image {self.source}: {len(self.pixels)} bytes for {self.width}x{self.height} RGB")
        for side in (self.width, self.height):
            if side < MIN_SIDE or side > MAX_SIDE:
                raise ImageInputError(f"image {self.source} is {self.width}x{self.height} pixels; each side must be "
                                      f"{MIN_SIDE}..{MAX_SIDE}")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.pixels).hexdigest()

    def to_pil(self) -> PIL.Image.Image:
        """A fresh PIL image in mode RGB (each side gets its own object)."""
        import PIL.Image

        return PIL.Image.frombytes("RGB", (self.width, self.height), self.pixels)

    def to_dict(self) -> dict[str, Any]:
        """What report.json and a golden store: enough to find the same pixels again and to check them."""
        return {"source": self.source, "width": self.width, "height": self.height, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Any) -> RequestImage:
        """The image a stored request names: regenerated (synthetic) or read again (a path), and refused unless its
        pixels still have the stored sha256."""
        if not isinstance(data, dict) or not {"source", "width", "height", "sha256"} <= set(data):
            raise ImageInputError("a stored image must be an object with source, width, height and sha256")
        source = data["source"]
        if not isinstance(source, str):
            raise ImageInputError(f"a stored image source must be a string, got {type(source).__name__}")
        if source.startswith(SYNTHETIC_PREFIX):
            image = synthetic_from_source(source)
        elif source == "array":
            raise ImageInputError("the stored image came from an array; it cannot be read again")
        else:
            image = load_image(source)
        if image.sha256 != data["sha256"] or (image.width, image.height) != (data["width"], data["height"]):
            raise ImageInputError(f"image {source} is not the one stored (sha256 {str(data['sha256'])[:12]}..., "
                                  f"now {image.sha256[:12]}...)")
        return image

    def check_fits(self, height: int, width: int) -> None:
        """Refuse an image the request's resize to (height, width) would stretch by more than MAX_ASPECT_STRETCH."""
        ratio = (self.width / self.height) / (width / height)
        stretch = max(ratio, 1 / ratio)
        if stretch > MAX_ASPECT_STRETCH:
            fit_w = round(height * self.width / self.height)
            raise ImageInputError(
                f"image {self.source} is {self.width}x{self.height} (aspect {self.width / self.height:.2f}); the "
                f"request's {width}x{height} (aspect {width / height:.2f}) would stretch it {stretch:.2f}x (at most "
                f"{MAX_ASPECT_STRETCH}x): crop the image, or ask for a size of its aspect (e.g. width {fit_w} at "
                f"height {height})"
            )


def load_image(path: str | Path) -> RequestImage:
    """Read and validate an image file (see the module docstring for what is refused, and why)."""
    import PIL.Image

    shown = str(path)
    try:
        mode = Path(path).stat().st_mode  # follows links; a loop or a NUL in the name fails here
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ImageInputError(f"image {shown}: cannot read it ({reason})") from None
    if not stat.S_ISREG(mode):
        raise ImageInputError(f"image {shown} is not a regular file")
    try:
        with PIL.Image.open(path) as image:
            _check_header(image, shown)
            _check_png_depth(path, image, shown)
            image.load()
            return _from_pil(image, shown)
    except ImageInputError:
        raise
    except PIL.Image.DecompressionBombError:
        raise ImageInputError(f"image {shown} declares more pixels than PIL will decode") from None
    except PIL.UnidentifiedImageError:
        raise ImageInputError(f"{shown} is not an image PIL can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise ImageInputError(f"image {shown} is truncated or corrupt ({first})") from None


def image_from_array(array: np.ndarray, source: str = "array") -> RequestImage:
    """An image from a uint8 numpy array (H, W) or (H, W, 3); 4 channels, 16-bit and float arrays are refused."""
    import numpy as np

    if not isinstance(array, np.ndarray):
        raise ImageInputError(f"image {source} must be a numpy array, got {type(array).__name__}")
    if array.ndim == 3 and array.shape[2] in (2, 4):
        raise ImageInputError(f"image {source} has {array.shape[2]} channels (an alpha channel): flatten it onto "
                              "a background first; Diffusers' VAE path takes 3 channels")
    if array.dtype in (np.uint16, np.int32, np.uint32) or array.dtype.kind == "f":
        raise ImageInputError(f"image {source} is a {array.dtype} array (16-bit or float): give 8-bit pixels "
                              "(uint8); the reference resizes arrays and PIL images differently")
    if array.dtype != np.uint8:
        raise ImageInputError(f"image {source} must be a uint8 array, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageInputError(f"image {source} must be (H, W) or (H, W, 3), got {tuple(array.shape)}")
    height, width = int(array.shape[0]), int(array.shape[1])
    return RequestImage(width, height, np.ascontiguousarray(array).tobytes(), source)


def synthetic_image(seed: int, width: int, height: int) -> RequestImage:
    """A deterministic test picture: two smooth colour gradients plus hashed per-pixel noise (splitmix64 of the
    pixel index), so resizing filters and CLIP see structure and detail alike. Integer arithmetic only."""
    import numpy as np

    rows = np.arange(height, dtype=np.uint64)[:, None, None]
    cols = np.arange(width, dtype=np.uint64)[None, :, None]
    channel = np.arange(3, dtype=np.uint64)[None, None, :]
    index = (rows * np.uint64(width) + cols) * np.uint64(3) + channel + np.uint64(seed) * np.uint64(0x9E3779B9)
    z = index * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    noise = ((z ^ (z >> np.uint64(31))) >> np.uint64(56)).astype(np.int64)  # 0..255
    gradient = ((rows * np.uint64(255) // np.uint64(max(height - 1, 1))) * (channel != np.uint64(1))
                + (cols * np.uint64(255) // np.uint64(max(width - 1, 1))) * (channel != np.uint64(0))).astype(np.int64)
    pixels = (gradient // 2 + noise // 2).clip(0, 255).astype(np.uint8)
    return RequestImage(width, height, pixels.tobytes(), f"{SYNTHETIC_PREFIX}seed={seed}:{width}x{height}")


def refit_synthetic(image: RequestImage | None, height: int, width: int) -> RequestImage | None:
    """`image`, or, when it is a synthetic test picture that a (height, width) request would stretch too far, the
    same pattern (same seed) drawn at 1.25 times that size: what a case's default image becomes when a caller
    (calibration, the false-alarm campaign, `--height/--width`) changes the size. A user's image is never
    replaced: `check_fits` refuses it instead."""
    if image is None or not image.source.startswith(SYNTHETIC_PREFIX):
        return image
    try:
        image.check_fits(height, width)
        return image
    except ImageInputError:
        seed = int(image.source.removeprefix(SYNTHETIC_PREFIX).split(":")[0].removeprefix("seed="))
        return synthetic_image(seed, max(MIN_SIDE, round(1.25 * width)), max(MIN_SIDE, round(1.25 * height)))


def synthetic_from_source(source: str) -> RequestImage:
    """The synthetic image a `synthetic:seed=S:WxH` source names."""
    try:
        seed_part, size = source.removeprefix(SYNTHETIC_PREFIX).split(":")
        seed = int(seed_part.removeprefix("seed="))
        width, height = (int(v) for v in size.split("x"))
    except ValueError:
        raise ImageInputError(f"'{source[:60]}' is not a synthetic image source (synthetic:seed=S:WxH)") from None
    if seed < 0 or not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise ImageInputError(f"'{source[:60]}': seed or size out of range")
    return synthetic_image(seed, width, height)


def _check_header(image: PIL.Image.Image, shown: str) -> None:
    """Mode and size from the header alone, before any pixel is decoded."""
    width, height = image.size
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
        raise ImageInputError(f"image {shown} is {width}x{height} pixels; each side must be {MIN_SIDE}..{MAX_SIDE}")
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        raise ImageInputError(
            f"image {shown} is {image.mode} with an alpha channel: refused, not composited (WanImageToVideoPipeline "
            "would give the VAE 4 channels while CLIP composites onto white); flatten it onto a background first")
    if image.mode in DEEP_MODES:
        raise ImageInputError(f"image {shown} is a 16-bit or float image (mode {image.mode}): the reference takes "
                              "8-bit RGB; convert it to 8 bits first")
    if image.mode != "RGB" and image.mode not in CONVERTIBLE_MODES:
        raise ImageInputError(f"image {shown} has mode {image.mode}, which is not converted to RGB here")


def _check_png_depth(path: str | Path, image: PIL.Image.Image, shown: str) -> None:
    """PIL opens a 16-bit-per-channel RGB PNG as mode RGB, keeping 8 of the 16 bits: refuse it from the header."""
    if image.format != "PNG":
        return
    with open(path, "rb") as file:
        header = file.read(26)
    if len(header) == 26 and header[12:16] == b"IHDR" and header[24] == 16:
        raise ImageInputError(f"image {shown} is a 16-bit PNG: the reference takes 8-bit RGB (PIL would silently "
                              "drop the low 8 bits); convert it to 8 bits first")


def _from_pil(image: PIL.Image.Image, shown: str) -> RequestImage:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    if math.prod(rgb.size) * 3 != len(data := rgb.tobytes()):
        raise ImageInputError(f"image {shown} decoded to an unexpected size")
    return RequestImage(width, height, data, shown)
