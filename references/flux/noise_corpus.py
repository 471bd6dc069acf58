"""The noise corpus: what a natural-image VAE draws from broken latents, and clean pictures it must not confuse.

`plan()` lists every item (category, variant, size, seed, source, half) from fixed seeds alone, so the split
into a training and a held-out half is decided before anything is rendered or measured; `render(item)` draws
one. Garbage (must be flagged), decoded by the photo VAE (references/flux/photo_vae.py) at 64 to 512 px:

- pure_noise: N(0, 1) normalised latents, decoded as a correct pipeline would;
- half_denoised: a denoising run stopped after 3, 6, 9 or 12 of FLUX.1-dev's 20 steps (its shifted schedule
  for that image size): the latent still holds 45-90% noise;
- packing: a photo's latent with its 16 channels permuted or reversed, or packed into FLUX's 2x2 tokens as
  (C, 2, 2) and unpacked as (2, 2, C);
- wrong_denoiser: a full 20-step run that is badly wrong: velocity sign flipped, timestep 1000x too large (the
  model believes every step is pure noise), the x0 prediction taken as the velocity, or the sigmas run backwards.

Reported, not garbage (`either`): scale_shift, a photo's latent decoded with FLUX.1's factors (scaling 0.3611,
shift 0.1159) misapplied: not denormalised (0.36x the latent), scale applied twice (2.8x), multiplied instead of
divided (0.13x), normalised again instead of denormalised. Through this VAE these are the same picture with
less or more contrast and saturation (a washed-out or oversaturated photograph), not garbage: image statistics
cannot call them noise without calling foggy or vivid photographs noise too; parity catches them at
decode/latents.

The denoiser is the exact (Bayes-optimal) denoiser of a small set of photo latents of the same size: E[x0 | x_t]
= softmax-weighted mean of the set, which a correct sampler drives to one of them; so the correct run
(`denoised`, a clean control) ends on a real photo's latent, and every fault is a fault of the sampling
arithmetic, not of a model. Clean: VAE reconstructions of photographs the VAE never saw (`reconstruction`),
photograph crops as they are (`photo`), the correct denoiser's outputs (`denoised`), and binary or few-colour
drawings (references/common/line_art.py): silhouettes, line drawings (drawn, or traced from a photo), PIL text, QR-like
symbols, flat-colour graphics, the same through the VAE (`graphic_reconstruction`), and graphics shipped in
packages (`shipped_graphic`). Videos (8 frames, 128 px): pans and zooms over reconstructions (clean); fresh noise
latents per frame, one noise latent drifting slowly, unrelated reconstructions per frame (garbage).

Split: photograph scenes (VAE-held-out and VAE-training ones separately) and every other item's group are
permuted by CORPUS_SEED within their category and alternately given to the halves; a garbage item draws its
photographs only from its own half's scenes.

Fresh corpora: `plan(corpus_seed)` with another seed draws new items (new noise, crops, drawings, sizes) while
the photographs' and shipped graphics' halves stay those of CORPUS_SEED, so the test half of a fresh plan
holds only photographs and graphics the model's training half never showed (FRESH_SEEDS lists the seeds used).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from references.common import line_art, shipped_images

CORPUS_SEED = 16016  # fixed before any detector tuning; also fixes the halves of photographs and shipped graphics
FRESH_SEEDS = (26016, 36016, 66016, 86016, 96016, 106016, 116016)  # fresh held-out corpora (test halves), each
#  judged once, the model (and latent check) fixed first
SMALL_SIZES = ((32, 32), (32, 48), (48, 48), (48, 64), (32, 64))  # the small corpus: frames under 64 px a side
SMALL_GRAPHIC_SIDES = (32, 48)
SMALL_DIGITS = 28  # clean upsampled scikit-learn digits in the small corpus (none the calibration set uses)
CALIBRATION_DIGIT_STEP = 18  # scripts/calibrate_noise_detector.py judges digits 0, 18, 36, ...: never drawn here
HALVES = ("train", "test")
SIZES = ((64, 64), (96, 128), (128, 128), (192, 256), (256, 256), (384, 512), (512, 512))  # (H, W), multiples of 16
STEPS = 20  # FLUX.1-dev's default
STOP_STEPS = (3, 6, 9, 12)
DENOISER_SET = 12  # photo latents the exact denoiser knows, per (half, size)
VIDEO_FRAMES = 8
VIDEO_SIZE = 128
GARBAGE = {
    "pure_noise": ("normal",),
    "half_denoised": tuple(f"stopped_at_{k}_of_{STEPS}" for k in STOP_STEPS),
    "packing": ("channels_permuted", "channels_reversed", "pack_order_swapped"),
    "wrong_denoiser": ("velocity_sign_flipped", "timestep_1000x", "x0_as_velocity", "sigmas_reversed"),
}
SCALE_SHIFT = ("not_denormalised", "scale_applied_twice", "scale_multiplied", "normalised_again")
FLUX_SCALING, FLUX_SHIFT = 0.3611, 0.1159  # FLUX.1's VAE factors: the size of a real scale/shift mistake
COUNTS = {  # items per category, both halves together
    "pure_noise": 42, "half_denoised": 56, "scale_shift": 28, "packing": 42, "wrong_denoiser": 56,
    "reconstruction": 56, "photo": 28, "denoised": 14, "silhouette": 28, "line_drawing": 35, "text": 28,
    "qr_like": 21, "flat_graphic": 28, "graphic_reconstruction": 28,
    "video_clean": 8, "video_garbage": 12,
}
CLEAN_DRAWN = ("silhouette", "line_drawing", "text", "qr_like", "flat_graphic")
SHIPPED_GRAPHIC_SIDES = (128, 256)  # shorter side of each shipped graphic, shrunk (Lanczos)


@dataclass(frozen=True)
class CorpusItem:
    """One planned corpus image or video: everything needed to render it, nothing measured."""

    name: str
    label: str  # "clean", "garbage" or "either" (reported only)
    category: str
    variant: str
    group: str  # items of one group are in the same half
    half: str
    height: int
    width: int
    seed: int
    source: str = ""  # photograph or graphic name, "" when none
    frames: int = 1  # > 1: a video

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ plan
def item_path(folder: Path, item: CorpusItem) -> Path:
    """Where the corpus builder writes an item: folder/<half>/<category>/<name>.png (a video: .npy)."""
    stem = item.name.split("/", 1)[1].replace("/", "_")
    return folder / item.half / item.category / f"{stem}.{'npy' if item.frames > 1 else 'png'}"


def latent_path(folder: Path, item: CorpusItem) -> Path:
    """Beside the item, the normalised latents the VAE decoded to draw it: <name>.latent.npy (written only for
    items a VAE drew)."""
    path = item_path(folder, item)
    return path.with_name(f"{path.stem}.latent.npy")


def _halves(keys: list[str], salt: int, corpus_seed: int = CORPUS_SEED) -> dict[str, str]:
    """Keys permuted by (corpus_seed, salt) and alternately assigned to train/test: balanced halves."""
    order = np.random.default_rng([corpus_seed, salt]).permutation(len(keys))
    return {keys[i]: HALVES[rank % 2] for rank, i in enumerate(order)}


def photo_halves() -> dict[str, str]:
    """Photograph -> half. Scenes split separately among the VAE's held-out and training photographs."""
    split = shipped_images.photo_split()
    scene_of = {n: shipped_images.SAME_SCENE.get(n, n) for n in shipped_images.photo_names()}
    halves: dict[str, str] = {}
    for salt, names in enumerate((split.held_out, split.train)):
        scenes = sorted({scene_of[n] for n in names})
        by_scene = _halves(scenes, 100 + salt)
        halves.update({n: by_scene[scene_of[n]] for n in names})
    return halves


def plan(corpus_seed: int = CORPUS_SEED, small: bool = False) -> list[CorpusItem]:
    """Every item of the corpus, in a fixed order; a pure function of the seed, the constants above and the shipped
    data. Photographs and shipped graphics keep CORPUS_SEED's halves whatever the seed. `small`: the same
    categories at SMALL_SIZES (32-48 px a side, for the learned check of small frames such as flux-digits'), no
    videos, plus clean upsampled digits."""
    sizes = SMALL_SIZES if small else SIZES
    items: list[CorpusItem] = []
    photos = photo_halves()
    held_out = shipped_images.photo_split().held_out
    pools = {half: sorted(n for n, h in photos.items() if h == half) for half in HALVES}
    held_pools = {half: sorted(n for n in held_out if photos[n] == half) for half in HALVES}

    def add(label: str, category: str, count: int, variants: tuple[str, ...], pool: dict[str, list[str]] | None,
            *, by_source: bool = False, frames: int = 1) -> None:
        keys = [f"{category}/{i:03d}" for i in range(count)]
        halves = _halves(keys, len(items) + count, corpus_seed)
        rng = np.random.default_rng([corpus_seed, len(items), count])
        for i, key in enumerate(keys):
            half = halves[key]
            source = ""
            if pool is not None:
                choices = pool[half]
                source = choices[int(rng.integers(len(choices)))]
            height, width = (VIDEO_SIZE, VIDEO_SIZE) if frames > 1 else sizes[i % len(sizes)]
            if rng.random() < 0.5 and frames == 1:
                height, width = width, height
            group = f"photo:{source}" if by_source else key
            items.append(CorpusItem(key, label, category, variants[i % len(variants)], group, half, height, width,
                                    int(rng.integers(2**31)), source, frames))

    for category, variants in GARBAGE.items():
        add("garbage", category, COUNTS[category], variants, pools if category == "packing" else None)
    add("either", "scale_shift", COUNTS["scale_shift"], SCALE_SHIFT, pools)
    add("clean", "reconstruction", COUNTS["reconstruction"], ("vae_round_trip",), held_pools, by_source=True)
    add("clean", "photo", COUNTS["photo"], ("crop",), pools, by_source=True)
    add("clean", "denoised", COUNTS["denoised"], ("correct_sampler",), None)
    for category in CLEAN_DRAWN:
        variants = ("exact", "exact", "exact", "antialiased")
        if category == "line_drawing":
            variants = ("exact", "exact", "traced_from_photo", "antialiased", "traced_from_photo")
        add("clean", category, COUNTS[category], variants, pools if category == "line_drawing" else None)
    add("clean", "graphic_reconstruction", COUNTS["graphic_reconstruction"], CLEAN_DRAWN, None)
    graphics = list(shipped_images.graphic_names())
    graphic_halves = _halves(graphics, 999)
    for name in graphics:
        for side in SMALL_GRAPHIC_SIDES if small else SHIPPED_GRAPHIC_SIDES:
            h, w = shipped_images.graphic(name).shape[:2]
            height, width = (side, round(w * side / h)) if h <= w else (round(h * side / w), side)
            items.append(CorpusItem(f"shipped_graphic/{name.split('/')[-1].removesuffix('.png')}@{side}", "clean",
                                    "shipped_graphic", "shipped", f"graphic:{name}", graphic_halves[name], height,
                                    width, 0, name))
    if small:
        keys = [f"digit/{i:03d}" for i in range(SMALL_DIGITS)]
        halves = _halves(keys, 777, corpus_seed)
        rng = np.random.default_rng([corpus_seed, 777])
        usable = [i for i in range(1797) if i % CALIBRATION_DIGIT_STEP]  # load_digits has 1,797 images
        for i, key in enumerate(keys):
            side = SMALL_GRAPHIC_SIDES[i % len(SMALL_GRAPHIC_SIDES)]
            index = usable[int(rng.integers(len(usable)))]
            items.append(CorpusItem(key, "clean", "digit", "upsampled", key, halves[key], side, side, index,
                                    f"sklearn_digit#{index}"))
        return items
    add("clean", "video_clean", COUNTS["video_clean"], ("pan", "zoom"), held_pools, frames=VIDEO_FRAMES)
    add("garbage", "video_garbage", COUNTS["video_garbage"], ("fresh_noise_per_frame", "drifting_noise",
                                                              "unrelated_frames"), held_pools, frames=VIDEO_FRAMES)
    return items


DRAW_ATTEMPTS = 4  # draws a drawing gets to come out with ink (line_art.has_ink) before the corpus refuses it


def drawing(item: CorpusItem, rng: np.random.Generator) -> np.ndarray:
    """The (H, W, 3) uint8 drawing of a clean drawn item (CLEAN_DRAWN categories; graphic_reconstruction's before the
    VAE), drawn from `rng`. A clean item must not be blank (a constant frame is what the rules flag): a drawing
    without ink is drawn again from the same generator, so it stays deterministic and a drawing that had ink the
    first time is unchanged; tracings also retry inside `line_art.edge_drawing`."""
    h, w = item.height, item.width
    category = item.variant if item.category == "graphic_reconstruction" else item.category
    shares = []
    for _ in range(DRAW_ATTEMPTS):
        if item.variant == "traced_from_photo":
            image = line_art.edge_drawing(shipped_images.photo(item.source), h, w, rng)
        elif item.variant == "antialiased":
            image = line_art.antialiased(line_art.DRAWERS[category], rng, h, w)
        else:
            image = line_art.DRAWERS[category](rng, h, w)
        if line_art.has_ink(image):
            return image
        shares.append(line_art.ink_share(image))
    raise line_art.BlankDrawingError(f"corpus item {item.name}: no ink in {DRAW_ATTEMPTS} draws (ink shares "
                                     f"{[round(v, 5) for v in shares]} < {line_art.MIN_INK_SHARE})")


# ---------------------------------------------------------------------------------------------- sampling
def flux_sigmas(height: int, width: int, steps: int = STEPS) -> np.ndarray:
    """FLUX.1-dev's sigmas for an image size: linspace(1, 1/steps) time-shifted by mu (linear in the token count
    between 256 -> 0.5 and 4096 -> 1.15, exponential shift), then a final 0. (steps + 1,)"""
    tokens = (height // 16) * (width // 16)
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    t = np.linspace(1.0, 1.0 / steps, steps)
    shifted = math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))
    return np.append(shifted, 0.0)


class ExactDenoiser:
    """The Bayes-optimal denoiser of a finite set of latents under x_t = (1 - s) x0 + s noise.

    E[x0 | x_t] = sum_k w_k x0_k with w = softmax(-|x_t - (1 - s) x0_k|^2 / (2 s^2)); its velocity (noise - x0)
    is (x_t - E[x0 | x_t]) / s. A correct Euler sampler with it ends on one of the set's latents.
    """

    def __init__(self, latents: torch.Tensor) -> None:
        self.latents = latents.double()  # (K, C, h, w)

    def x0(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """(1, C, h, w) -> (1, C, h, w) expected clean latent."""
        distance = ((x.double() - (1.0 - sigma) * self.latents) ** 2).flatten(1).sum(1)  # (K,)
        weights = torch.softmax(-distance / (2.0 * sigma**2), dim=0)
        return (weights[:, None, None, None] * self.latents).sum(0, keepdim=True)


def sample(denoiser: ExactDenoiser, noise: torch.Tensor, sigmas: np.ndarray, fault: str = "", stop: int = -1
           ) -> torch.Tensor:
    """Euler flow-matching sampling from `noise` over `sigmas`, optionally with a denoiser fault, stopped after
    `stop` steps (-1: all). Returns the (1, C, h, w) latent in float32."""
    x = noise.double()
    steps = len(sigmas) - 1 if stop < 0 else stop
    for i in range(steps):
        sigma, following = float(sigmas[i]), float(sigmas[i + 1])
        believed = min(1.0, 1000.0 * sigma) if fault == "timestep_1000x" else sigma
        x0 = denoiser.x0(x, believed)
        velocity = (x - x0) / believed
        if fault == "velocity_sign_flipped":
            velocity = -velocity
        elif fault == "x0_as_velocity":
            velocity = x0
        x = x + (following - sigma) * velocity
    return x.float()


# ---------------------------------------------------------------------------------------------- latents
def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): FLUX's 2x2 tokens, features ordered (C, dy, dx)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_swapped(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The packing fault: (B, h/2 * w/2, 4C) tokens read as features ordered (dy, dx, C). -> (B, C, h, w)"""
    b, _, features = tokens.shape
    c = features // 4
    patches = tokens.view(b, h // 2, w // 2, 2, 2, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, h/2, dy, w/2, dx)
    return patches.reshape(b, c, h, w)


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(image.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0)[None]


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounded as a PNG encoder would."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class Renderer:
    """Draws corpus items with one loaded VAE; caches the exact denoisers' latent sets per (half, size)."""

    def __init__(self, vae: Any, corpus_seed: int = CORPUS_SEED) -> None:
        from references.flux.photo_vae import vae_factors

        self.vae = vae
        self.corpus_seed = corpus_seed
        self.shift, self.scale = vae_factors(vae)
        self.photos = photo_halves()
        self.decoded: list[torch.Tensor] = []  # normalised latents decoded since the last render_with_latents

    # the three latent <-> pixel steps a pipeline takes
    def encode(self, image: np.ndarray) -> torch.Tensor:
        from references.flux.photo_vae import encode_normalised

        return encode_normalised(self.vae, _image_tensor(image))

    def decode_normalised(self, latents: torch.Tensor) -> np.ndarray:
        from references.flux.photo_vae import decode_raw

        self.decoded.append(latents.float())
        return _to_uint8(decode_raw(self.vae, latents / self.scale + self.shift))

    def decode_raw(self, latents: torch.Tensor) -> np.ndarray:
        """Decode latents in the VAE's own space; recorded as the normalised latent a correct denormalisation
        would have turned into them (what a pipeline's decode stage hands this VAE, in normalised units)."""
        from references.flux.photo_vae import decode_raw

        self.decoded.append(((latents - self.shift) * self.scale).float())
        return _to_uint8(decode_raw(self.vae, latents))

    @lru_cache(maxsize=64)  # noqa: B019 - one renderer per corpus build
    def denoiser(self, half: str, height: int, width: int) -> ExactDenoiser:
        rng = np.random.default_rng([self.corpus_seed, height, width, HALVES.index(half)])
        pool = sorted(n for n, h in self.photos.items() if h == half)
        latents = [self.encode(shipped_images.random_crop(shipped_images.photo(pool[i % len(pool)]), height, width,
                                                          rng)) for i in range(DENOISER_SET)]
        return ExactDenoiser(torch.cat(latents))

    def render_with_latents(self, item: CorpusItem) -> tuple[np.ndarray, np.ndarray | None]:
        """The item's pixels and the normalised latents its VAE decoded to draw them: (C, h, w) for an image,
        (T, C, h, w) for a video, float32; None for an item no VAE drew (photographs, drawings, digits)."""
        self.decoded = []
        pixels = self.render(item)
        if not self.decoded:
            return pixels, None
        latents = torch.cat(self.decoded).numpy()  # (T, C, h, w)
        return pixels, latents if item.frames > 1 else latents[0]

    def render(self, item: CorpusItem) -> np.ndarray:
        """(H, W, 3) uint8 for an image, (T, H, W, 3) uint8 for a video."""
        rng = np.random.default_rng([self.corpus_seed, item.seed])
        generator = torch.Generator().manual_seed(item.seed)
        h, w = item.height, item.width
        latent_shape = (1, 16, h // 8, w // 8)
        category, variant = item.category, item.variant
        if item.frames > 1:
            return self._video(item, rng, generator)
        if category == "pure_noise":
            return self.decode_normalised(torch.randn(latent_shape, generator=generator))[0]
        if category in ("half_denoised", "wrong_denoiser", "denoised"):
            noise = torch.randn(latent_shape, generator=generator)
            sigmas = flux_sigmas(h, w)
            stop = int(variant.split("_")[2]) if category == "half_denoised" else -1
            fault = variant if category == "wrong_denoiser" else ""
            if fault == "sigmas_reversed":  # from the smallest sigma up to 1, the noise taken as nearly clean
                sigmas, fault = np.append(sigmas[:-1][::-1], 1.0), ""
            latent = sample(self.denoiser(item.half, h, w), noise, sigmas, fault, stop)
            return self.decode_normalised(latent)[0]
        if category in ("scale_shift", "packing"):
            z = self.encode(shipped_images.random_crop(shipped_images.photo(item.source), h, w, rng))
            return self._latent_fault(z, variant, rng)[0]
        if category == "reconstruction":
            z = self.encode(shipped_images.random_crop(shipped_images.photo(item.source), h, w, rng))
            return self.decode_normalised(z)[0]
        if category == "photo":
            return shipped_images.random_crop(shipped_images.photo(item.source), h, w, rng)
        if category in CLEAN_DRAWN:
            return drawing(item, rng)
        if category == "graphic_reconstruction":
            return self.decode_normalised(self.encode(drawing(item, rng)))[0]
        if category == "digit":  # bicubic from 8x8 as the digits model's training data (references/flux/digits.py)
            from sklearn.datasets import load_digits

            small = torch.from_numpy(load_digits().images[item.seed].astype(np.float32) / 16.0)[None, None]
            big = torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
            return _to_uint8(big.clamp(0, 1).expand(1, 3, h, w))[0]
        if category == "shipped_graphic":
            from PIL import Image

            image = Image.fromarray(np.ascontiguousarray(shipped_images.graphic(item.source)))
            return np.asarray(image.resize((w, h), Image.Resampling.LANCZOS))
        raise ValueError(f"corpus item {item.name}: unknown category '{category}'")

    def _latent_fault(self, z: torch.Tensor, variant: str, rng: np.random.Generator) -> np.ndarray:
        """A correct latent (normalised, (1, 16, h, w)) decoded through one scale/shift or packing fault.

        Scale/shift mistakes are made with FLUX.1's factors and carried into this VAE's latent space (normalised
        with FLUX's, denormalised with its own): this VAE's own factors (about 0.75 and 0.03) are too close to
        1 and 0 for a mistake with them to show the size of a real one."""
        s, shift = FLUX_SCALING, FLUX_SHIFT
        flux_raw = {"not_denormalised": lambda: z, "scale_applied_twice": lambda: z / s / s + shift,
                    "scale_multiplied": lambda: z * s + shift, "normalised_again": lambda: (z - shift) * s}
        if variant in flux_raw:
            return self.decode_raw((flux_raw[variant]() - shift) * s / self.scale + self.shift)
        if variant == "channels_permuted":
            order = rng.permutation(z.shape[1])
            while np.all(order == np.arange(z.shape[1])):
                order = rng.permutation(z.shape[1])
            return self.decode_normalised(z[:, torch.from_numpy(order)])
        if variant == "channels_reversed":
            return self.decode_normalised(z.flip(1))
        if variant == "pack_order_swapped":
            return self.decode_normalised(unpack_swapped(pack(z), z.shape[2], z.shape[3]))
        raise ValueError(f"unknown latent fault '{variant}'")

    def _video(self, item: CorpusItem, rng: np.random.Generator, generator: torch.Generator) -> np.ndarray:
        """8 frames of 128 px: a pan or zoom over a reconstruction (clean), or one of the garbage videos."""
        t, side = item.frames, item.height
        shape = (1, 16, side // 8, side // 8)
        if item.variant in ("pan", "zoom"):
            photo = shipped_images.photo(item.source)
            big = shipped_images.random_crop(photo, side * 2, side * 2, rng)
            frames = []
            for k in range(t):
                if item.variant == "pan":
                    frame = big[side // 2 : side // 2 + side, 4 * k : 4 * k + side]
                else:
                    from PIL import Image

                    margin = 4 * k
                    crop = big[margin : 2 * side - margin, margin : 2 * side - margin]
                    frame = np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.LANCZOS))
                frames.append(self.decode_normalised(self.encode(np.ascontiguousarray(frame)))[0])
            return np.stack(frames)
        if item.variant == "fresh_noise_per_frame":
            return np.stack([self.decode_normalised(torch.randn(shape, generator=generator))[0] for _ in range(t)])
        if item.variant == "drifting_noise":
            a, b = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
            angles = np.linspace(0, 0.3, t)
            return np.stack([self.decode_normalised(math.cos(x) * a + math.sin(x) * b)[0] for x in angles])
        if item.variant == "unrelated_frames":
            pool = sorted(n for n, h in self.photos.items() if h == item.half)
            frames = [shipped_images.random_crop(shipped_images.photo(pool[int(rng.integers(len(pool)))]), side,
                                                 side, rng) for _ in range(t)]
            return np.stack([self.decode_normalised(self.encode(f))[0] for f in frames])
        raise ValueError(f"unknown video variant '{item.variant}'")
