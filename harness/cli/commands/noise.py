"""`diffparity noise PATH...`: is each decoded output a picture, or noise? (see `harness/noise/detector.py`)

Inputs: PNG/JPEG/BMP/TIFF/WebP/GIF files (an animated GIF is a video), `.npy` arrays ((H, W), (H, W, C),
(C, H, W); uint8, bool, or float in [0, 1] or [-1, 1]; a 3-D stack without a channel axis or a 4-D array is a
video of frames), or a folder, whose image/.npy files sorted by name are the frames of one video.
Exit codes: 0 nothing flagged, 1 at least one input flagged, 2 an input could not be read (one line on stderr;
the inputs before it are already reported).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.cli.common import EXIT_FAIL, EXIT_PASS, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
ARRAY_SUFFIXES = (".npy",)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "noise",
        help="say whether decoded images or videos are pictures or noise (image statistics)",
        description=(
            "Judge each PATH (an image, a .npy array, or a folder of frames) from image statistics: non-finite "
            "values, near-constant, checkerboard, pixel-scale noise, smooth Gaussian noise, decoded noise (small "
            "logistic regressions over named statistics, harness/noise/learned_model.json, and for frames of "
            "32-63 px learned_model_small.json), and flicker between consecutive video frames. Binary and "
            "few-colour pictures are pictures. "
            "One line per input, or one JSON object per line with --json."
        ),
        epilog="Exit codes: 0 nothing flagged, 1 an input flagged, 2 unreadable input or usage.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image file, .npy array, or folder")
    parser.add_argument("--json", action="store_true", help="one JSON object per input (JSON Lines)")
    parser.add_argument("--range", dest="value_range", default="auto", choices=("auto", "0,1", "-1,1", "0,255"),
                        help="value range of float .npy input (default auto: [-1,1] when values go below "
                             "-0.05, 0-255 when above 1.5)")
    parser.add_argument("--images", action="store_true",
                        help="treat stacks and folders as independent images, not video frames (no flicker check)")
    parser.set_defaults(handler=command_noise)


def command_noise(args: argparse.Namespace) -> int:
    from harness.noise.detector import FramesError, detect_noise

    for path in args.paths:  # a missing input is reported before anything is judged
        try:
            exists = path.exists()
        except OSError as exc:  # a name too long for the file system, a folder without permission
            raise UsageError(f"{str(path)[:200]}: cannot be read ({exc.strerror})") from None
        if not exists:
            raise UsageError(f"{path}: no such file or folder")
    any_flagged = False
    for path in args.paths:
        frames, video = read_frames(path)
        try:
            verdict = detect_noise(frames, video=video and not args.images, value_range=args.value_range)
        except FramesError as exc:
            raise UsageError(f"{path}: {exc}") from None
        any_flagged |= verdict.flagged
        if args.json:
            print(json.dumps({"path": str(path), **verdict.to_dict()}), flush=True)
        else:
            print(format_line(path, verdict.to_dict()), flush=True)
    return EXIT_FAIL if any_flagged else EXIT_PASS


def format_line(path: Path, verdict: dict[str, Any]) -> str:
    stats = verdict["statistics"]
    shown = [("noise", "noise_fraction"), ("kurtosis", "gradient_kurtosis_max"), ("slope", "spectral_slope"),
             ("checker", "checkerboard_score"), ("midtones", "midtone_share"), ("std", "std")]
    numbers = ", ".join(f"{label} {stats[key]:.3g}" for label, key in shown if stats.get(key) is not None)
    model = stats.get("model")
    if model:
        numbers += f", decoded-noise logit {model['logit']:+.2f} vs {model['threshold']:.2f} ({model['head']})"
    frames = f", {verdict['frames']} frames" if verdict["frames"] > 1 else ""
    return f"{path}: {verdict['verdict']} - {verdict['reason']} [{numbers}{frames}]"


def read_frames(path: Path) -> tuple[Any, bool]:
    """The array at `path` and whether it is a video (a folder, an animated GIF, a stacked .npy)."""
    import numpy as np

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + ARRAY_SUFFIXES)
        if not files:
            raise UsageError(f"{path}: folder holds no image or .npy frames")
        frames = [_read_file(p)[0] for p in files]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise UsageError(f"{path}: frames of different shapes {sorted(shapes)}")
        return np.stack(frames), True
    return _read_file(path)


def _read_file(path: Path) -> tuple[Any, bool]:
    import numpy as np

    suffix = path.suffix.lower()
    if not path.is_file():  # a FIFO would block the read forever, a device never end it
        raise UsageError(f"{path}: is not a regular file")
    if suffix in ARRAY_SUFFIXES:
        try:
            _check_npy_size(path)
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, MemoryError) as exc:
            raise UsageError(f"{path}: not a readable .npy array ({_first_line(exc)})") from None
        return array, True  # a stack of frames in it is a video; a single image has no flicker to check
    if suffix not in IMAGE_SUFFIXES:
        raise UsageError(f"{path}: unsupported file type '{path.suffix}' (expected an image, .npy or a folder)")
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            frames = [_pil_array(frame) for frame in ImageSequence.Iterator(image)]
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
            MemoryError) as exc:
        raise UsageError(f"{path}: not a readable image ({_first_line(exc)})") from None
    if len(frames) == 1:
        return frames[0], False
    return np.stack(frames), True


def _check_npy_size(path: Path) -> None:
    """Raise ValueError unless the .npy header's shape and dtype account for exactly the bytes in the file, so a
    header declaring (100000, 100000, 3) is refused before numpy allocates for it."""
    import numpy as np
    from numpy.lib import format as npy_format

    with open(path, "rb") as handle:
        version = npy_format.read_magic(handle)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy format version {version}")
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        try:
            shape, _, dtype = read_header(handle)  # a literal parse of the header: nothing is evaluated
        except Exception as exc:  # noqa: BLE001 - numpy's header parser raises assorted types for garbage
            raise ValueError(f"malformed .npy header ({type(exc).__name__}: {_first_line(exc)})") from None
        data_start = handle.tell()
    if dtype.hasobject:
        raise ValueError("it holds Python objects, which are pickled; pickles are never loaded")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    available = path.stat().st_size - data_start
    if needed != available:
        raise ValueError(f"its header declares {tuple(shape)} {dtype} ({needed} bytes), the file holds {available}")


def _pil_array(image: Any) -> Any:
    """A PIL frame as a numpy array in a mode detect_noise understands (uint8 L/LA/RGB/RGBA, 16-bit, float)."""
    import numpy as np

    if image.mode in ("L", "LA", "RGB", "RGBA", "F"):
        return np.asarray(image)
    if image.mode.startswith("I"):  # 16-bit PNG/TIFF
        return np.asarray(image).astype(np.float32) / 65535.0
    return np.asarray(image.convert("RGBA" if "transparency" in image.info else "RGB"))


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
