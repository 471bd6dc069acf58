"""report.html rendered by headless Chromium: the screenshot must show the frames, the heat-map, the drift plot against
its threshold line, and the verdicts (the run's and the noise detector's).

Pixels, not file existence: each embedded PNG is found in the screenshot at its display scale (nearest-neighbour
upscaling keeps exact colours), the drift plot's line colours must run across most of the plot's width below the
images, every record's point must lie below the plot's line at 1.0 (error / threshold) on a passing run and some
above it on a failing one, and the verdict badges (the run's at the top, the noise detector's below the stage
table) must have the colours of their verdicts; a page rendered without frames or drift must show none of that.
A passing and a failing real flux-tiny run are screenshotted; with DIFFPARITY_SCREENSHOTS=DIR the two pictures are
kept there (docs/report-pass.png and docs/report-fail.png were made so). Skips only when no Chromium binary is
installed (`.ci/run` installs one).
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_samples import HOT, NATIVE_LEFT, SIDE, sample_frames, sample_report
from scipy import ndimage

from harness.report.html import FIELD_COLOURS, render_html
from harness.report.images import HEAT_STOPS
from harness.report.plots import THRESHOLD_COLOUR

SCRIPT = Path(__file__).resolve().parents[1] / "ci" / "screenshot_report.sh"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PASS_BG, FAIL_BG = (230, 244, 234), (253, 231, 233)  # tr.pass / tr.fail cell backgrounds in report/html.py STYLE
PASS_BADGE, FAIL_BADGE = "#1e7b34", "#b3261e"  # .badge.pass / .badge.fail
PAGE_HEIGHT = 2000  # a real run's page down to its image metrics, whatever its first-divergence line wraps to

pytestmark = pytest.mark.skipif(
    not (os.environ.get("CHROMIUM") or any(shutil.which(name) for name in BROWSERS)),
    reason="no chromium binary installed (apt-get install chromium; .ci/run does)",
)


def screenshot(html_path: Path, width: int = 1280, height: int = 1600) -> np.ndarray:
    """(H, W, 3) uint8 screenshot of the page, taken by ci/screenshot_report.sh."""
    png = html_path.with_suffix(".png")
    proc = subprocess.run(["bash", str(SCRIPT), str(html_path), str(png), str(width), str(height)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (height, width, 3)
    return image


def find_image(screen: np.ndarray, image: np.ndarray, scale: int, min_match: float = 0.99) -> list[tuple[int, int]]:
    """Top-left corners where `image`, upscaled `scale`x by pixel repetition, appears in `screen`.

    Candidates are pixels of the image's first colour whose upper and left neighbours have another colour (the
    1 px border around each frame guarantees that for the true corner); each is compared in full.
    """
    big = image.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w = big.shape[:2]
    same = (screen == big[0, 0]).all(axis=-1)
    hits = []
    for y, x in zip(*np.nonzero(same), strict=True):
        if y == 0 or x == 0 or same[y - 1, x] or same[y, x - 1]:
            continue
        if y + h > screen.shape[0] or x + w > screen.shape[1]:
            continue
        if (screen[y : y + h, x : x + w] == big).all(axis=-1).mean() >= min_match:
            hits.append((int(y), int(x)))
    return hits


def embedded_images(html: str) -> list[tuple[np.ndarray, int]]:
    """Each <img> of the page: its decoded PNG and its display scale (width attribute / PNG width)."""
    found = []
    for width, data in re.findall(r'<img [^>]*width="(\d+)"[^>]*src="data:image/png;base64,([^"]+)"', html):
        array = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        found.append((array, int(width) // array.shape[1]))
    return found


def colour_pixels(screen: np.ndarray, hex_colour: str, tol: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    # int16 holds every difference of two bytes; int64 made each call copy the whole page 8 times over
    return np.nonzero((np.abs(screen.astype(np.int16) - rgb) <= tol).all(axis=-1))


def badges(screen: np.ndarray) -> list[str]:
    """The verdict badges from top to bottom: 'pass' or 'fail' per solid block of a badge colour."""
    found = []
    for verdict, colour in (("pass", PASS_BADGE), ("fail", FAIL_BADGE)):
        mask = np.zeros(screen.shape[:2], dtype=bool)
        mask[colour_pixels(screen, colour, tol=4)] = True
        labels, count = ndimage.label(mask)
        for index, blob in enumerate(ndimage.find_objects(labels), start=1):
            if (labels[blob] == index).sum() >= 150:  # a badge, not a stray anti-aliased pixel
                found.append((blob[0].start, verdict))
    return [verdict for _, verdict in sorted(found)]


def points_against_the_gate(screen: np.ndarray, html: str) -> tuple[int, int]:
    """(pixels of drift lines above the threshold line, below it), inside the plot's frame."""
    ys, xs = colour_pixels(screen, THRESHOLD_COLOUR)
    rows, counts = np.unique(ys, return_counts=True)
    assert counts.max() > 200, "no threshold line in the screenshot"
    gate = int(rows[np.argmax(counts)])  # the dashed line: the row holding most of the colour
    left, right = int(xs[ys == gate].min()), int(xs[ys == gate].max())
    # the plot's left border (grey, crossed by grid lines and the step-0 markers): its ends are the plot's top and
    # bottom, where the page is white again
    frame = (screen[:, left - 1] < 250).any(axis=-1)
    top = next(y for y in range(gate, 0, -1) if not frame[y - 1])
    bottom = next(y for y in range(gate, len(frame) - 1) if not frame[y + 1])
    above = below = 0
    for colour in shown_field_colours(html):
        line_y, line_x = colour_pixels(screen, colour)
        inside = (line_x >= left) & (line_x <= right) & (line_y >= top) & (line_y <= bottom)
        above += int((line_y[inside] < gate - 2).sum())
        below += int((line_y[inside] > gate + 2).sum())
    return above, below


def shown_field_colours(html: str) -> list[str]:
    return [colour for colour in FIELD_COLOURS.values() if f'stroke="{colour}"' in html]


def keep(screen_png: Path, name: str) -> None:
    """With DIFFPARITY_SCREENSHOTS=DIR: the screenshot, cropped to the page's content and reduced to a palette."""
    folder = os.environ.get("DIFFPARITY_SCREENSHOTS")
    if not folder:
        return
    image = Image.open(screen_png).convert("RGB")
    content = np.nonzero((np.asarray(image) < 250).any(axis=-1))
    box = (0, 0, min(image.width, int(content[1].max()) + 24), min(image.height, int(content[0].max()) + 24, 1450))
    image.crop(box).quantize(colors=256).save(Path(folder) / name, optimize=True)


def assert_images_and_plot_shown(screen: np.ndarray, html: str) -> None:
    """The three frames side by side in order, and the drift lines across the plot below them."""
    images = embedded_images(html)
    assert len(images) == 3
    corners = []
    for array, scale in images:
        hits = find_image(screen, array, scale)
        assert len(hits) >= 1, "an embedded image is not visible in the screenshot"
        corners.append(hits)
    native_y, native_x = corners[0][0]
    heat_y, heat_x = corners[2][0]
    assert heat_y == native_y and heat_x > native_x and any(x > native_x for _, x in corners[1])
    bottom = native_y + images[0][0].shape[0] * images[0][1]
    for colour in shown_field_colours(html):
        ys, xs = colour_pixels(screen, colour)
        plot = ys > bottom
        assert plot.sum() > 300, f"drift line {colour} not drawn below the images"
        assert xs[plot].max() - xs[plot].min() > 400, f"drift line {colour} does not run across the plot"


def test_screenshot_shows_frames_heat_map_drift_and_verdict_colours(tmp_path: Path) -> None:
    native, reference = sample_frames()
    html = render_html(sample_report(steps=6), native, reference)
    (tmp_path / "report.html").write_text(html)
    screen = screenshot(tmp_path / "report.html")
    assert_images_and_plot_shown(screen, html)
    scale = embedded_images(html)[0][1]
    hot = (HOT[1] - HOT[0]) * scale * (HOT[3] - HOT[2]) * scale
    count = lambda rgb: int((screen == rgb).all(axis=-1).sum())  # noqa: E731
    assert count(NATIVE_LEFT) == 2 * (SIDE * scale) * (SIDE // 2 * scale) - hot  # native + reference, less the square
    assert count(HEAT_STOPS[-1]) == hot  # the square lights the top of the heat scale ...
    assert count(HEAT_STOPS[0]) >= (SIDE * scale) ** 2 - hot  # ... and the rest sits at its bottom
    assert count(FAIL_BG) > 500 and count(PASS_BG) > 500  # the stage table is coloured by verdict
    assert badges(screen) == ["fail", "pass"]  # the run fails (decode); the noise detector passes
    above, below = points_against_the_gate(screen, html)
    assert above == 0 and below > 100  # every per-step record sits below its threshold (0.01x to 0.18x)

    # A flagged native output: the noise badge turns red, and the run fails with every record passing.
    flagged = sample_report(steps=6, failing=False, noise_flagged=True)
    (tmp_path / "noise.html").write_text(render_html(flagged, native, reference))
    assert badges(screenshot(tmp_path / "noise.html")) == ["fail", "fail"]

    # The same checks see nothing when the page has no frames and no drift: they can fail.
    bare = sample_report(with_drift=False)
    bare["records"] = [r for r in bare["records"] if r["stage"] != "denoise"]
    (tmp_path / "bare.html").write_text(render_html(bare))
    screen = screenshot(tmp_path / "bare.html")
    assert count(NATIVE_LEFT) == 0 and count(HEAT_STOPS[-1]) == 0
    assert all(colour_pixels(screen, c)[0].size == 0 for c in FIELD_COLOURS.values())
    assert colour_pixels(screen, THRESHOLD_COLOUR)[0].size == 0


def test_screenshots_of_a_passing_and_a_failing_run(tmp_path: Path) -> None:
    """flux-tiny through the CLI, then with a catalog fault: the passing page shows its frame, every record below
    its threshold and two green badges; the failing page shows records above the line and a red run badge beside
    the noise detector's green one (the random-weight output is judged a picture either way)."""
    from harness.cli.main import main
    from harness.run.cases import get_case
    from harness.run.parity import run_parity
    from harness.verdicts.faults import get_fault
    from native_models.attention import attention_backend

    out = tmp_path / "pass"
    # the math kernel: on SDPA the native side runs the reference's own kernel, bit-identical, and a page of
    # zero errors has no drift line or points to show
    with attention_backend("math"):
        assert main(["run", "flux-tiny", "--out", str(out), "--no-progress"]) == 0
    html = (out / "report.html").read_text()
    screen = screenshot(out / "report.html", height=PAGE_HEIGHT)
    keep(out / "report.png", "report-pass.png")
    assert_images_and_plot_shown(screen, html)
    native_png = np.asarray(Image.open(out / "native.png").convert("RGB")).astype(int)
    embedded_native = embedded_images(html)[0][0].astype(int)
    assert np.abs(embedded_native - native_png).max() <= 1  # the page shows this run's frame (8-bit rounding)
    assert badges(screen) == ["pass", "pass"]
    above, below = points_against_the_gate(screen, html)
    assert above == 0 and below > 100

    case = get_case("flux-tiny")
    fault = get_fault("timestep_value_range_wrong")  # the DiT gets timesteps 1000x too large: denoise step 0 fails
    failing = tmp_path / "fail"
    result = run_parity(case, case.request(), out_dir=failing, mutate_native=fault.apply)
    assert not result.passed and result.comparison.first_divergence.stage == "denoise"
    html = (failing / "report.html").read_text()
    screen = screenshot(failing / "report.html", height=PAGE_HEIGHT)
    keep(failing / "report.png", "report-fail.png")
    assert badges(screen) == ["fail", "pass"]
    above, below = points_against_the_gate(screen, html)
    assert above > 100  # the broken steps sit far above their thresholds
