"""The image data that installed packages already carry: photographs to train the photo VAE on, and graphics.

Nothing is downloaded: every source is a file inside an installed package, checked on disk before it is read
(scikit-image's `data` loaders would fetch the images that do not ship). Sources:

- photographs: scikit-image `data` (astronaut, brick, camera, cell, chelsea, clock, coffee, coins, grass,
  gravel, hubble_deep_field, immunohistochemistry, microaneurysms, moon, page, retina, rocket, text, the
  stereo_motorcycle pair) and scikit-learn's two sample images (china, flower);
- graphics (few colours, drawn, not photographed): networkx's and sympy's plotting-test baselines, scipy's
  ndimage test image `dots.png`, scikit-image's horse silhouette, logo and Shepp-Logan phantom.

Photographs are grouped (the two motorcycle views are one scene) and the groups are split once, by a fixed seed,
into the VAE's training photographs and the held-out ones (`photo_split`); the held-out photographs give the
VAE's reconstruction quality and the clean reconstructions of the noise corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SPLIT_SEED = 20261206  # fixed before any training: which photographs the VAE never sees
HELD_OUT_GROUPS = 9  # of 21 photo groups

# name -> (file inside skimage/data, loader); a grey photograph is replicated to three channels.
SKIMAGE_PHOTOS = {
    "astronaut": "astronaut.png", "brick": "brick.png", "camera": "camera.png", "cell": "cell.png",
    "chelsea": "chelsea.png", "clock": "clock_motion.png", "coffee": "coffee.png", "coins": "coins.png",
    "grass": "grass.png", "gravel": "gravel.png", "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png", "microaneurysms": "microaneurysms.png", "moon": "moon.png",
    "page": "page.png", "retina": "retina.jpg", "rocket": "rocket.jpg", "text": "text.png",
    "motorcycle_left": "motorcycle_left.png", "motorcycle_right": "motorcycle_right.png",
}
SKLEARN_PHOTOS = ("china", "flower")
SAME_SCENE = {"motorcycle_right": "motorcycle_left"}  # grouped with its twin in the split

# site-packages-relative paths of drawn graphics that dependencies ship as test baselines
PACKAGE_GRAPHICS = (
    "networkx/drawing/tests/baseline/test_display_complex.png",
    "networkx/drawing/tests/baseline/test_display_house_with_colors.png",
    "networkx/drawing/tests/baseline/test_display_labels_and_colors.png",
    "networkx/drawing/tests/baseline/test_display_shortest_path.png",
    "networkx/drawing/tests/baseline/test_house_with_colors.png",
    "sympy/plotting/tests/test_region_and.png",
    "sympy/plotting/tests/test_region_or.png",
    "sympy/plotting/tests/test_region_xor.png",
    "sympy/plotting/tests/test_region_not.png",
    "scipy/ndimage/tests/dots.png",
)
SKIMAGE_GRAPHICS = {"horse": "horse.png", "logo": "logo.png", "shepp_logan_phantom": "phantom.png"}


class ShippedImageError(ValueError):
    """A shipped image that should be on disk is not (a package built without its data)."""


@dataclass(frozen=True)
class PhotoSplit:
    """Photograph names on each side of the VAE's split."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any shipped image -> (H, W, 3) uint8: grey replicated, alpha composited on white, floats/bools scaled."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        scale = 255.0 if float(np.nanmax(image)) <= 1.0 else 1.0
        image = np.clip(np.round(image.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.shape[-1] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255
        image = np.round(image[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def _skimage_folder() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def _site_packages() -> Path:
    import numpy

    return Path(numpy.__file__).resolve().parent.parent


def _read_file(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise ShippedImageError(f"{path}: not shipped with the installed package")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA") if image.mode in ("P", "LA", "RGBA") else image)


@lru_cache(maxsize=64)
def photo(name: str) -> np.ndarray:
    """One shipped photograph as (H, W, 3) uint8 (read-only)."""
    if name in SKIMAGE_PHOTOS:
        image = _rgb_uint8(_read_file(_skimage_folder() / SKIMAGE_PHOTOS[name]))
    elif name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        image = _rgb_uint8(load_sample_image(f"{name}.jpg"))
    else:
        raise ShippedImageError(f"unknown photograph '{name}'; known: {', '.join(photo_names())}")
    image.setflags(write=False)
    return image


def photo_names() -> tuple[str, ...]:
    return tuple(SKIMAGE_PHOTOS) + SKLEARN_PHOTOS


def photo_groups() -> dict[str, tuple[str, ...]]:
    """Scene -> its photographs (the stereo pair is one scene)."""
    groups: dict[str, list[str]] = {}
    for name in photo_names():
        groups.setdefault(SAME_SCENE.get(name, name), []).append(name)
    return {scene: tuple(names) for scene, names in groups.items()}


def photo_split(seed: int = SPLIT_SEED, held_out_groups: int = HELD_OUT_GROUPS) -> PhotoSplit:
    """Scenes shuffled by `seed`; the first `held_out_groups` are never shown to the VAE."""
    groups = photo_groups()
    order = np.random.default_rng(seed).permutation(len(groups))
    scenes = list(groups)
    held = [scenes[i] for i in order[:held_out_groups]]
    train = [scenes[i] for i in order[held_out_groups:]]
    return PhotoSplit(tuple(n for s in sorted(train) for n in groups[s]),
                      tuple(n for s in sorted(held) for n in groups[s]))


@lru_cache(maxsize=32)
def graphic(name: str) -> np.ndarray:
    """One shipped drawn graphic as (H, W, 3) uint8: a package test baseline (by path) or a skimage graphic."""
    if name in SKIMAGE_GRAPHICS:
        path = _skimage_folder() / SKIMAGE_GRAPHICS[name]
    elif name in PACKAGE_GRAPHICS:
        path = _site_packages() / name
    else:
        raise ShippedImageError(f"unknown graphic '{name}'")
    image = _rgb_uint8(_read_file(path))
    image.setflags(write=False)
    return image


def graphic_names() -> tuple[str, ...]:
    return tuple(SKIMAGE_GRAPHICS) + PACKAGE_GRAPHICS


def random_crop(image: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of (H, W, 3) uint8 `image` with the target's aspect, covering 60-100% of the largest such
    crop, resized (anti-aliased Lanczos) to height x width."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = min(h / height, w / width) * rng.uniform(0.6, 1.0)
    ch, cw = max(1, int(height * scale)), max(1, int(width * scale))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(np.ascontiguousarray(image[top : top + ch, left : left + cw]))
    return np.asarray(crop.resize((width, height), Image.Resampling.LANCZOS))
