"""The noise detector: a representative subset of its calibration set, every degenerate category, the input
layouts and value ranges, the parity-report section, and `diffparity noise` (exit codes, --json, files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from script_loader import load_script

from harness.cli.main import main
from harness.noise import image_stats
from harness.noise.detector import FramesError, detect_noise, noise_section

cal = load_script("calibrate_noise_detector")  # reuses the calibration script's sample builders
RNG_SEED = 1234


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return cal.photo_set(False)


def small(photos: dict[str, np.ndarray], name: str, size: int | None = 64) -> np.ndarray:
    return cal.resize_short_side(photos[name], size)


# ---------------------------------------------------------------- statistics


def test_plane_stats_match_direct_formulas() -> None:
    rng = np.random.default_rng(RNG_SEED)
    plane = np.cumsum(rng.standard_normal((37, 53)), axis=1).astype(np.float32)  # correlated along x only
    plane = (plane - plane.min()) / (plane.max() - plane.min())
    stats = image_stats.plane_stats(plane)
    c = plane.astype(np.float64) - plane.mean(dtype=np.float64)
    for lag, cov in ((1, stats.cov1), (2, stats.cov2)):
        direct = 0.5 * (np.mean(c[lag:] * c[:-lag]) + np.mean(c[:, lag:] * c[:, :-lag]))
        assert cov == pytest.approx(direct, rel=1e-4)
    assert stats.variance == pytest.approx(np.mean(c * c), rel=1e-5)
    assert stats.extreme_share == pytest.approx(2 / plane.size)  # exactly one minimum and one maximum


def test_noise_fraction_of_white_noise_and_of_a_smooth_ramp() -> None:
    noise = np.random.default_rng(RNG_SEED).random((128, 128)).astype(np.float32)
    rho1, rho2 = image_stats.pooled_correlations([image_stats.plane_stats(noise)])
    assert image_stats.noise_fraction(rho1, rho2) == pytest.approx(1.0, abs=0.03)
    yy, xx = np.mgrid[0:128, 0:128]
    smooth = (0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.float32)
    rho1, rho2 = image_stats.pooled_correlations([image_stats.plane_stats(smooth)])
    assert abs(image_stats.noise_fraction(rho1, rho2)) < 0.01


# ---------------------------------------------------------------- pictures pass


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee", "text", "moon", "china", "flower", "logo",
                                  "colorwheel", "shepp_logan_phantom"])
def test_pictures_at_64px_pass(photos, name: str) -> None:
    verdict = detect_noise(small(photos, name))
    assert not verdict, verdict.reason


@pytest.mark.parametrize("name", ["gravel", "grass", "brick"])
def test_closest_textures_pass_at_64px_and_full_size(photos, name: str) -> None:
    """The calibration's closest calls on the picture side: fine textures shrunk to 64 px."""
    for size in (64, None):
        verdict = detect_noise(small(photos, name, size))
        assert not verdict, f"{name}@{size}: {verdict.reason}"


def test_full_size_photo_passes(photos) -> None:
    verdict = detect_noise(photos["astronaut"])
    assert not verdict
    assert verdict.statistics["gradient_kurtosis_max"] > 10
    assert verdict.statistics["noise_fraction"] < 0.1


def test_digits_upsampled_pass() -> None:
    samples = list(cal.digit_samples(quick=True))
    assert {s.frames.shape for s in samples} == {(32, 32), (64, 64)}
    flagged = [s.name for s in samples if detect_noise(s.frames)]
    assert flagged == []


# ---------------------------------------------------------------- degenerate outputs are flagged


def test_every_noise_category_flagged() -> None:
    samples = list(cal.noise_samples(quick=True))
    assert {s.category for s in samples} == {"gaussian", "uniform", "salt_and_pepper", "pink"}
    missed = [s.name for s in samples if not detect_noise(s.frames)]
    assert missed == []


def test_white_noise_reason_and_statistics() -> None:
    noise = np.random.default_rng(RNG_SEED).random((64, 64, 3)).astype(np.float32)
    verdict = detect_noise(noise)
    assert verdict.fired[0] == "pixel_noise"
    assert verdict.statistics["noise_fraction"] > 0.9
    assert "uncorrelated" in verdict.reason


def test_pink_noise_is_smooth_noise() -> None:
    pink = cal.pink_noise((128, 128), 1.0, np.random.default_rng(RNG_SEED))
    verdict = detect_noise(pink)
    assert verdict.fired[0] == "smooth_noise"  # the rule decides; the learned check may agree
    kurtosis, slope = next(c.value for c in verdict.checks if c.name == "smooth_noise")
    assert 2.8 < kurtosis < 3.2 and -2.5 < slope < -1.5


def test_scrambled_photo_flagged(photos) -> None:
    image = small(photos, "coffee", 256)
    flat = image.reshape(-1, 3)
    scrambled = flat[np.random.default_rng(RNG_SEED).permutation(len(flat))].reshape(image.shape)
    assert not detect_noise(image)
    assert detect_noise(scrambled).fired[0] == "pixel_noise"


@pytest.mark.parametrize("name", ["astronaut", "hubble_deep_field", "gravel"])
def test_drowned_photo_flagged(photos, name: str) -> None:
    base = small(photos, name, 64).astype(np.float32) / 255
    rng = np.random.default_rng(RNG_SEED)
    drowned = cal.add_noise(base, rng.standard_normal(base.shape), 1.0)
    assert "pixel_noise" in detect_noise(drowned).fired


@pytest.mark.parametrize("cell", [1, 2, 3, 8, 16])
def test_checkerboards_flagged(cell: int) -> None:
    board = cal.checkerboard((64, 96), cell, 0.35, 0.65)
    assert detect_noise(board)
    colour = cal.checkerboard((64, 64), cell, (0.8, 0.2, 0.1), (0.1, 0.3, 0.9))
    assert detect_noise(colour)


def test_skimage_checkerboard_is_a_checkerboard() -> None:
    import skimage.data

    verdict = detect_noise(skimage.data.checkerboard())
    assert verdict.fired[0] == "checkerboard"
    assert verdict.statistics["checkerboard_cell"] == 25


@pytest.mark.parametrize("frame", [
    np.zeros((64, 64), np.float32), np.full((64, 64, 3), 255, np.uint8),
    (0.5 + 0.003 * np.random.default_rng(0).standard_normal((64, 64))).astype(np.float32),
])
def test_constant_and_near_constant_flagged(frame: np.ndarray) -> None:
    verdict = detect_noise(frame)
    assert verdict.fired == ["near_constant"]


def test_nonfinite_flagged(photos) -> None:
    image = small(photos, "astronaut").astype(np.float32) / 255
    image[3, 4, 0] = np.nan
    verdict = detect_noise(image)
    assert verdict.fired == ["non_finite"]
    assert verdict.statistics["nonfinite_fraction"] == pytest.approx(1 / image.size)
    assert detect_noise(np.full((3, 32, 32), np.inf, np.float32)).fired == ["non_finite"]


def test_binary_pictures_are_not_flagged_for_having_two_values() -> None:
    """Issue 16: a black-and-white silhouette is a picture; no check fires on few values alone."""
    import skimage.data

    for image in (skimage.data.horse(), cal.threshold_mask(cal.resize_short_side(
            cal.to_uint8(skimage.data.horse()), 64))):
        verdict = detect_noise(image)
        assert not verdict, verdict.reason
        assert verdict.statistics["midtone_share"] < 0.05  # still measured and reported
        assert "binarised" not in [c.name for c in verdict.checks]


# ---------------------------------------------------------------- video


def test_video_pan_passes_and_flicker_flagged(photos) -> None:
    image = small(photos, "coffee", 256).astype(np.float32) / 255
    pan = np.stack([image[10:138, 10 + 2 * t : 138 + 2 * t] for t in range(8)])  # (T, H, W, C)
    verdict = detect_noise(pan, video=True)
    assert not verdict, verdict.reason
    assert verdict.temporal["pair_correlation_min"] > 0.8

    blink = np.stack([np.clip(pan[0] + (0.15 if t % 2 else -0.15), 0, 1) for t in range(8)])
    assert detect_noise(blink, video=True).fired == ["flicker"]
    assert not detect_noise(blink, video=False)  # as a batch of images each frame is a picture

    names = ["astronaut", "camera", "coffee", "china"]
    crops = [small(photos, n, 64)[:64, :64] for n in names]
    crops = [c if c.ndim == 3 else np.repeat(c[..., None], 3, axis=-1) for c in crops]
    unrelated = np.stack(crops * 2)
    verdict = detect_noise(unrelated, video=True)
    assert verdict.fired == ["flicker"] and "consecutive frame pairs" in verdict.reason


def test_one_noisy_frame_in_a_video_is_named(photos) -> None:
    frames = np.repeat(small(photos, "astronaut")[None], 5, axis=0).astype(np.float32) / 255
    frames[3] = np.random.default_rng(RNG_SEED).random(frames[3].shape)
    verdict = detect_noise(frames, video=True)
    assert verdict and verdict.flagged_frames == [3] and verdict.frame == 3


# ---------------------------------------------------------------- layouts and value ranges


def test_layouts_give_the_same_statistics(photos) -> None:
    hwc = small(photos, "astronaut")
    reference = detect_noise(hwc).statistics
    layouts = {
        "chw float [0,1]": np.moveaxis(hwc, -1, 0).astype(np.float32) / 255,
        "hwc float [-1,1]": hwc.astype(np.float32) / 127.5 - 1,
        "nchw batch": (np.moveaxis(hwc, -1, 0)[None].astype(np.float32) / 255),
        "nhwc batch": hwc[None],
        "hwc float 0-255": hwc.astype(np.float64),
    }
    for name, frames in layouts.items():
        stats = detect_noise(frames).statistics
        for key in ("noise_fraction", "gradient_kurtosis_max", "spectral_slope", "checkerboard_score"):
            assert stats[key] == pytest.approx(reference[key], rel=1e-3, abs=1e-4), (name, key)


def test_grey_layouts_and_torch(photos) -> None:
    import torch

    grey = small(photos, "camera")
    assert detect_noise(grey).statistics == detect_noise(grey[..., None]).statistics
    tensor = torch.from_numpy(grey.astype(np.float32) / 255)[None, None].to(torch.bfloat16)  # (B, C, H, W)
    assert not detect_noise(tensor)
    assert detect_noise(torch.rand(2, 3, 64, 64)).frames == 2


def test_value_range_override() -> None:
    image = np.random.default_rng(RNG_SEED).random((64, 64)).astype(np.float32) * 0.2 + 0.4  # grey-ish noise
    for value_range in ("auto", "0,1", "-1,1"):
        assert detect_noise(image, value_range=value_range).fired == ["pixel_noise"]
    with pytest.raises(FramesError, match="value range 'bogus'"):
        detect_noise(image, value_range="bogus")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3, 4, 5, 6)), "frames of shape (2, 3, 4, 5, 6)"),
    (np.zeros((0, 64)), "are empty"),
    (np.zeros((2, 64)), "smaller than 4x4"),
    (np.array([["a"]]), "are not numbers"),
    (np.full((8, 8), 300, np.int32) * 1000, "integer frames with values"),
])
def test_unjudgeable_frames_raise(bad: np.ndarray, message: str) -> None:
    with pytest.raises(FramesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        detect_noise(bad)


def test_verdict_is_plain_json(photos) -> None:
    verdict = detect_noise(np.stack([small(photos, "astronaut")] * 3), video=True)
    data = verdict.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["verdict"] == "ok"
    assert bool(verdict) is False and data["frames"] == 3 and data["temporal"] is not None


# ---------------------------------------------------------------- the parity report section


def test_noise_section_semantics(photos) -> None:
    picture = np.moveaxis(small(photos, "astronaut"), -1, 0)[None].astype(np.float32) / 255  # (B, C, H, W)
    noise = np.random.default_rng(RNG_SEED).random(picture.shape).astype(np.float32)

    both_noise = noise_section(noise, noise, expects_picture=True)
    assert both_noise["fails_run"] and "checkpoint itself gives noise" in both_noise["note"]
    native_noise = noise_section(noise, picture, expects_picture=True)
    assert native_noise["fails_run"] and "reference draws a picture" in native_noise["note"]
    assert not noise_section(picture, picture, expects_picture=True)["fails_run"]
    tiny = noise_section(noise, noise, expects_picture=False)
    assert not tiny["fails_run"] and tiny["note"].startswith("informative only")
    assert tiny["native"]["verdict"] == "flagged"
    json.dumps(tiny, allow_nan=False)


def test_noise_section_video_batch(photos) -> None:
    image = small(photos, "coffee", 256).astype(np.float32) / 255
    pan = np.stack([image[10:74, 10 + t : 74 + t] for t in range(6)])  # (F, H, W, C)
    good = np.moveaxis(pan, -1, 0)[None]  # (B, C, F, H, W)
    flickering = good.copy()
    flickering[0, :, 1::2] = np.clip(flickering[0, :, 1::2] + 0.3, 0, 1)
    batch = np.concatenate([good, flickering])
    section = noise_section(batch, good, expects_picture=True, video=True)
    assert section["native"]["batch_item"] == 1 and section["native"]["batch_flagged"] == [1]
    assert section["fails_run"] and section["reference"]["verdict"] == "ok"


# ---------------------------------------------------------------- diffparity noise


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def files(tmp_path: Path, photos) -> dict[str, Path]:
    rng = np.random.default_rng(RNG_SEED)
    paths = {
        "photo": tmp_path / "photo.png", "jpeg": tmp_path / "photo.jpg", "noise": tmp_path / "noise.png",
        "array": tmp_path / "chw.npy", "video": tmp_path / "video.npy", "frames": tmp_path / "frames",
    }
    picture = small(photos, "astronaut", 96)
    Image.fromarray(picture).save(paths["photo"])
    Image.fromarray(picture).save(paths["jpeg"], quality=90)
    Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(paths["noise"])
    np.save(paths["array"], np.moveaxis(picture, -1, 0).astype(np.float32) / 127.5 - 1)  # (C, H, W) in [-1, 1]
    pan = np.stack([picture[:64, t : 64 + t] for t in range(5)])
    np.save(paths["video"], pan)  # (T, H, W, C) uint8
    paths["frames"].mkdir()
    for t, frame in enumerate(pan):
        Image.fromarray(frame).save(paths["frames"] / f"frame{t:03d}.png")
    return paths


def test_cli_pictures_exit_0(files, capsys) -> None:
    inputs = [files[k] for k in ("photo", "jpeg", "array", "video", "frames")]
    code, out, err = run_cli(["noise", *map(str, inputs)], capsys)
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert len(lines) == 5 and all(": ok - " in line for line in lines)
    assert "5 frames" in lines[-1]


def test_cli_flagged_exit_1_and_json(files, capsys) -> None:
    code, out, _ = run_cli(["noise", "--json", str(files["photo"]), str(files["noise"])], capsys)
    assert code == 1
    records = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["path"] for r in records] == [str(files["photo"]), str(files["noise"])]
    assert [r["verdict"] for r in records] == ["ok", "flagged"]
    for record in records:
        assert {"path", "verdict", "reason", "statistics"} <= set(record)
    assert records[1]["statistics"]["noise_fraction"] > 0.9 and "pixel-scale noise" in records[1]["reason"]


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.png", "no such file or folder"),
    (lambda d: _write(d / "broken.png", b"not a png"), "not a readable image"),
    (lambda d: _write(d / "broken.npy", b"\x93NUMPY garbage"), "not a readable .npy array"),
    (lambda d: _write(d / "notes.txt", b"hello"), "unsupported file type '.txt'"),
    (lambda d: _save_npy(d / "five.npy", np.zeros((1, 2, 3, 8, 8))), "frames of shape (1, 2, 3, 8, 8)"),
    (lambda d: _mkdir(d / "empty"), "folder holds no image or .npy frames"),
])
def test_cli_unreadable_input_exit_2(tmp_path: Path, make, needle: str, capsys) -> None:
    path = make(tmp_path)
    code, out, err = run_cli(["noise", str(path)], capsys)
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.strip()]
    assert len(error_lines) == 1 and needle in error_lines[0] and "Traceback" not in err, err
    assert out == ""


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save_npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_calibration_plugin_source(tmp_path: Path, monkeypatch, capsys) -> None:
    """Extra labelled sources plug into the calibration script; a requirement they break makes it exit 1."""
    plugin = tmp_path / "noise_plugin.py"
    plugin.write_text(
        "import numpy as np\n"
        "def samples():\n"
        "    rng = np.random.default_rng(0)\n"
        "    yield {'category': 'plugged', 'expect': 'degenerate', 'name': 'white', 'frames': rng.random((64, 64))}\n"
        "    yield {'category': 'plugged', 'expect': 'picture', 'name': 'also-white', 'frames': rng.random((64, 64))}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cal, "SOURCES", [cal.constant_samples])
    code = cal.main(["--out", str(tmp_path / "report"), "--source", "noise_plugin:samples"])
    out = capsys.readouterr().out
    assert code == 1 and "failures: also-white" in out
    summary = json.loads((tmp_path / "report" / "calibration.json").read_text())
    plugged = next(r for r in summary["categories"] if r["category"] == "plugged" and r["expect"] == "degenerate")
    assert plugged["n"] == 1 and plugged["accuracy"] == 1.0
    assert (tmp_path / "report" / "calibration.md").read_text().startswith("| category |")
