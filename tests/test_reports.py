"""Image metrics, the |difference| heat-map, the SVG drift plot, report.html and report.md, the terminal stage table,
and their wiring."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from report_samples import HOT, NOISE_REASON, sample_frames, sample_report

from harness.report import artifacts
from harness.report.html import render_html
from harness.report.image_metrics import ImageMetricsError, image_metrics, json_safe
from harness.report.images import HEAT_STOPS, frame_images, side_by_side
from harness.report.markdown import render_markdown
from harness.report.plots import PlotBox, PlotSeries, log_line_plot


def _texture(seed: int, shape=(1, 3, 24, 24)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2


# ---- image metrics ----------------------------------------------------------------------------------------------

def test_identical_frames_have_infinite_psnr_and_unit_ssim() -> None:
    frames = _texture(0)
    (row,) = image_metrics(frames, frames.clone())
    assert row == {"frame": 0, "psnr": math.inf, "ssim": pytest.approx(1.0), "mad_255": 0.0}


def test_constant_offset_gives_the_psnr_and_mad_it_must() -> None:
    """An offset of 0.1 everywhere: MSE 0.01, so PSNR 20 dB exactly, and 25.5 grey levels mean |difference|."""
    native = _texture(1).double()  # float64, so the offset is 0.1 and not its float32 rounding
    (row,) = image_metrics(native, native + 0.1)
    assert row["psnr"] == pytest.approx(20.0, abs=1e-9)
    assert row["mad_255"] == pytest.approx(25.5, rel=1e-9)
    assert 0.0 < row["ssim"] < 1.0


def test_ssim_falls_as_noise_grows() -> None:
    native = _texture(2)
    noise = torch.randn(native.shape, generator=torch.Generator().manual_seed(3))
    ssims = [image_metrics(native, (native + scale * noise).clamp(0, 1))[0]["ssim"] for scale in (0.01, 0.05, 0.2)]
    assert ssims[0] > ssims[1] > ssims[2]


def test_metrics_are_per_frame_for_batches_and_video() -> None:
    batch = _texture(4, (2, 3, 16, 16))
    other = batch.clone()
    other[1] += 0.05
    rows = image_metrics(batch, other)
    assert [r["frame"] for r in rows] == [0, 1]
    assert rows[0]["psnr"] == math.inf and math.isfinite(rows[1]["psnr"])
    video = _texture(5, (1, 3, 4, 16, 16))  # (B, C, F, H, W): only frame 2 differs
    changed = video.clone()
    changed[:, :, 2] += 0.05
    rows = image_metrics(video, changed)
    assert [math.isfinite(r["psnr"]) for r in rows] == [False, False, True, False]


def test_unequal_shapes_small_frames_and_nonfinite_values() -> None:
    with pytest.raises(ImageMetricsError, match=r"\[1, 3, 24, 24\].*\[1, 3, 24, 16\]"):
        image_metrics(_texture(0), _texture(0, (1, 3, 24, 16)))
    with pytest.raises(ImageMetricsError, match="2x2 is too small"):
        image_metrics(_texture(0, (1, 3, 2, 2)), _texture(1, (1, 3, 2, 2)))
    broken = _texture(0)
    broken[0, 0, 0, 0] = math.nan
    (row,) = image_metrics(broken, _texture(0))
    assert all(math.isnan(row[k]) for k in ("psnr", "ssim", "mad_255"))
    assert json_safe([row]) == [{"frame": 0, "psnr": "nan", "ssim": "nan", "mad_255": "nan"}]


# ---- heat-map and plot ------------------------------------------------------------------------------------------

def _png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_heat_map_lights_exactly_the_differing_square() -> None:
    native, reference = sample_frames()
    (frame,), vmax = frame_images(native, reference)
    assert vmax == pytest.approx(0.2 * 255, rel=1e-5)
    heat = _png(frame.difference)
    r0, r1, c0, c1 = HOT
    inside = np.zeros(heat.shape[:2], dtype=bool)
    inside[r0:r1, c0:c1] = True
    assert (heat[inside] == HEAT_STOPS[-1]).all()
    assert (heat[~inside] == HEAT_STOPS[0]).all()
    assert (_png(frame.native)[0, 0] == (200, 20, 150)).all()


def test_identical_frames_give_a_dark_map_and_large_frames_keep_hot_spots(monkeypatch) -> None:
    native, reference = sample_frames()
    (frame,), vmax = frame_images(native, native.clone())
    assert vmax == 0.0 and (_png(frame.difference) == HEAT_STOPS[0]).all()
    monkeypatch.setattr("harness.report.images.MAX_EMBED_SIDE", 16)
    reference = native.clone()
    reference[0, 1, 5, 5] += 0.5  # one pixel: block max keeps it when the 32x32 frame is halved
    (frame,), _ = frame_images(native, reference)
    heat = _png(frame.difference)
    assert frame.reduced_by == 2 and heat.shape[:2] == (16, 16)
    assert (heat[2, 2] == HEAT_STOPS[-1]).all() and (heat[0, 0] == HEAT_STOPS[0]).all()


def test_log_plot_places_values_on_their_decades() -> None:
    box = PlotBox()
    svg = log_line_plot([0, 1, 2, 3], [PlotSeries("a", "#123456", [1e-6, 1e-4, None, 0.0])], "rel_l2", box=box)
    grid = {m[2]: float(m[1]) for m in re.finditer(r'y="([\d.]+)"[^>]*>1e(-?\d+)<', svg)}
    assert set(grid) == {"-6", "-5", "-4"}
    dots = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="3" fill="#123456"', svg)
    assert [float(y) for _, y in dots] == pytest.approx([grid["-6"] - 4, grid["-4"] - 4], abs=0.11)
    assert svg.count("<polyline") == 1  # None breaks the line; the zero is a hollow marker on the bottom edge
    assert f'cy="{box.top + box.inner_height:.1f}" r="3.5" fill="#ffffff"' in svg
    with pytest.raises(ValueError, match="series 'a' has 1 values for 2 x positions"):
        log_line_plot([0, 1], [PlotSeries("a", "#000000", [1.0])], "y")


# ---- report.html and report.md ----------------------------------------------------------------------------------

class _Page(HTMLParser):
    """Collects what the checks need: every tag with its attributes, table rows with their cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.rows: list[tuple[str, list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attributes))
        if tag == "tr":
            self.rows.append((attributes.get("class", ""), []))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def test_html_is_self_contained() -> None:
    native, reference = sample_frames()
    html = render_html(sample_report(), native, reference)
    page = _parse(html)
    assert not {"script", "link", "iframe", "object"} & {tag for tag, _ in page.tags}
    assert not re.search(r"https?:|url\(|@import", html)
    sources = [a["src"] for tag, a in page.tags if tag == "img"]
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert [_png(s.split(",", 1)[1]).shape for s in sources] == [(32, 32, 3)] * 3
    assert "a &lt;b&gt;cat&lt;/b&gt; | dog" in html  # the prompt is text, never markup


def test_html_stage_table_is_coloured_by_verdict_and_marks_the_first_divergence() -> None:
    page = _parse(render_html(sample_report()))
    stage_rows = {(cells[0], cells[1]): css for css, cells in page.rows if len(cells) == 9}
    assert stage_rows[("decode", "forced")] == "fail"
    assert stage_rows[("decode", "free")] == "pass" and stage_rows[("denoise", "forced")] == "pass"
    assert list(stage_rows)[1:] == [("encode", "free"), ("encode", "forced"), ("timesteps", "free"),
                                   ("timesteps", "forced"), ("denoise", "free"), ("denoise", "forced"),
                                   ("decode", "free"), ("decode", "forced")]
    firsts = [cells[:2] for css, cells in page.rows if "first" in css.split()]
    assert firsts == [["decode/latents", "forced"]]
    assert "decode/latents: rel_l2 0.3 &gt; tolerance 1e-05" in render_html(sample_report())


def test_every_row_shows_its_multiple_of_threshold_beside_its_floor_and_the_rule_once() -> None:
    report = sample_report()
    page = _parse(render_html(report))
    header = next(cells for _, cells in page.rows if cells[:2] == ["stage", "mode"])
    assert header[6:8] == ["worst x threshold", "worst x floor"]
    stages = {(cells[0], cells[1]): cells for _, cells in page.rows if len(cells) == 9}
    # transformer output 3e-7 * 6 at step 5 against rel_l2 1e-5; the failing decode 0.3 against 1e-5
    assert stages[("denoise", "free")][6:8] == ["0.18x", "2x"]
    assert stages[("decode", "forced")][6:8] == ["3e+04x", "3e+04x"]
    records = next(cells for _, cells in page.rows if cells[:2] == ["record", "mode"])
    assert records[7:9] == ["x threshold", "x floor"]
    step2 = next(cells for _, cells in page.rows if cells[:2] == ["denoise/transformer_output step 2", "free"])
    assert step2[7:9] == ["0.09x", "2x"]
    html = render_html(report)
    assert html.count("1.0 is the gate") == 1 and "3 x the calibrated floor" in html
    text = render_markdown(report)
    assert "| denoise | free | 12 | 0 | 1.800e-06 | 1.00000000 | 0.18x | 2x | ✅ pass |" in text
    assert text.count("1.0 is the gate") == 1


def test_a_report_predating_threshold_multiples_derives_them_and_reads_a_newer_one() -> None:
    from harness.report import view

    record = {"metrics": {"cos": 0.998}, "tolerance": {"metric": "cos", "threshold": 0.999}}
    assert view.threshold_multiple(record) == pytest.approx(2.0)  # 1 - cos over 1 - threshold
    assert view.threshold_multiple({**record, "threshold_multiple": "inf"}) == math.inf
    assert view.threshold_multiple({"metrics": {}, "tolerance": {"metric": "rel_l2", "threshold": 1e-5}}) is None


def test_record_results_serialise_their_threshold_multiple() -> None:
    from harness.compare.records import compare_record
    from harness.compare.tolerances import Tolerance
    from harness.trace.keys import RecordKey

    reference = torch.ones(4, 4)
    result = compare_record(RecordKey("decode", "image", None), reference * 1.001, reference,
                            Tolerance("rel_l2", 1e-3), floor=5e-4)
    data = result.to_dict()
    assert data["threshold_multiple"] == pytest.approx(1.0, rel=1e-3) and data["floor_multiple"] == pytest.approx(2.0,
                                                                                                            rel=1e-3)
    missing = compare_record(RecordKey("decode", "image", None), None, reference, Tolerance("rel_l2", 1e-3))
    assert missing.to_dict()["threshold_multiple"] is None


def test_terminal_stage_table_shows_both_multiples_and_wraps_the_rule() -> None:
    from harness.compare.records import Comparison, compare_record
    from harness.compare.tolerances import Tolerance
    from harness.report.build import format_stage_table
    from harness.trace.keys import RecordKey

    reference = torch.ones(8)
    comparison = Comparison([compare_record(RecordKey("denoise", "latents", 0), reference * 1.0005, reference,
                                            Tolerance("rel_l2", 1e-3), floor=2.5e-4)])
    rule = "threshold = 3 x the calibrated floor (golden/tolerances/" + "x" * 90 + ".json), at least 2 roundings"
    text = format_stage_table(comparison, tolerances={"rule": rule})
    lines = text.splitlines()
    assert lines[0].split()[5:7] == ["x", "thresh"] and "x floor" in lines[0]
    assert lines[1].split()[:6] == ["denoise", "1", "0", "5.000e-04", "0.5x", "2x"]
    assert all(len(line) <= 118 for line in lines if not line.startswith("first divergence"))
    assert "1.0 is the gate" in text and "x" * 90 in text


def test_html_and_markdown_show_the_noise_verdict_and_its_reasons() -> None:
    passing = sample_report(failing=False)
    page = _parse(render_html(passing))
    html = render_html(passing)
    assert "<h2>Noise detector</h2>" in html and "both outputs look like pictures (does not fail the run)" in html
    assert "no check fired; closest: pixel_noise 0.02 vs 0.35" in html
    checks = {cells[0]: cells for _, cells in page.rows if len(cells) == 5 and cells[0] != "check"}
    assert checks["pixel_noise"][1:] == ["0.02", "0.02", "0.35", "—"]
    assert checks["smooth_noise"][3] == "2.6, 3.5, -3.5, -1.25"

    flagged = sample_report(failing=False, noise_flagged=True)
    html = render_html(flagged)
    assert "FAIL</span> the native output is flagged as noise" in html and "(fails the run)" in html
    assert f"flagged: {NOISE_REASON}".replace(">", "&gt;") in html
    page = _parse(html)
    assert next(css for css, cells in page.rows if cells[:1] == ["pixel_noise"]) == "fail"
    text = render_markdown(flagged)
    assert f"**Noise detector:** the native output is flagged as noise while the reference is a picture (**fails the " \
           f"run**); native flagged: {NOISE_REASON}; reference ok" in text
    assert text.startswith("### ❌")
    assert "Noise detector" not in render_html({}) and "Noise detector" not in render_markdown({})


def test_html_drift_plot_draws_each_record_against_its_own_threshold() -> None:
    html = render_html(sample_report(steps=6))
    lines = re.findall(r"<polyline [^>]*>", html)
    assert len(lines) == 4
    assert sum("stroke-dasharray" in line for line in lines) == 2
    assert {re.search(r'stroke="(#\w+)"', line)[1] for line in lines} == {"#1f77b4", "#2ca02c"}
    assert "1.0: the gate" in html and 'aria-label="error / threshold per denoising step"' in html
    grid = {m[2]: float(m[1]) for m in re.finditer(r'y="([\d.]+)"[^>]*>1e(-?\d+)<', html)}
    gate = re.search(r'<line [^>]*y1="([\d.]+)"[^>]*stroke="#d9480f"', html)
    assert float(gate[1]) == pytest.approx(grid["0"] - 4, abs=0.11)  # the line at 1.0 sits on the 1e0 grid line
    # transformer output step 5: 1.8e-6 / 1e-5 = 0.18x, drawn between the 1e-1 and 1e0 grid lines
    free_tf = next(line for line in lines if "#2ca02c" in line and "dasharray" not in line)
    last_y = float(free_tf.split('points="')[1].split('"')[0].split()[-1].split(",")[1])
    expected = grid["-1"] - 4 + (grid["0"] - grid["-1"]) * math.log10(1.8)
    assert last_y == pytest.approx(expected, abs=0.2)
    page = _parse(html)
    growth = next(cells for _, cells in page.rows if cells[0] == "growth latents")
    assert growth[1:3] == ["—", "2"]
    multiples = next(cells for _, cells in page.rows if cells[0] == "transformer_output (free) x threshold")
    assert multiples[-1] == "0.18x"


def test_html_drift_comes_from_the_records_when_the_report_has_no_drift_section() -> None:
    html = render_html(sample_report(with_drift=False))
    assert "from the per-step records" in html
    assert len(re.findall(r"<polyline ", html)) == 4


def test_html_shows_the_environment_and_image_metrics() -> None:
    page = _parse(render_html(sample_report()))
    env = {cells[0]: cells[1] for _, cells in page.rows if len(cells) == 2}
    assert env["torch"] == "2.13.0+cpu" and env["cuda"] == "none" and env["gpu"] == "none"
    assert env["diffusers"] == "0.42.1" and env["dtype"] == "fp32" and env["attention_backend"] == "math"
    assert env["tf32_matmul"] == "off" and env["seed"] == "7"
    metrics = next(cells for _, cells in page.rows if cells[:2] == ["0", "29.10"])
    assert metrics == ["0", "29.10", "0.980000", "0.8"]


def test_html_renders_old_and_empty_reports() -> None:
    """The first schema (no modes, floors, drift or image metrics) and an empty document both render."""
    old = sample_report(with_drift=False, failing=False)
    for record in old["records"]:
        record.pop("mode")
        record.pop("floor_multiple")
    del old["image_metrics"]
    html = render_html(old)
    assert "x floor" not in html and "<img" not in html and "<polyline" in html
    assert "First divergence:</b> none: every record is within its tolerance" in html
    assert "<h1>" in render_html({})


def test_html_says_why_there_are_no_images_for_frames_of_another_shape() -> None:
    native, _ = sample_frames()
    html = render_html(sample_report(), native, native[..., :16])
    assert "no images: native frames [1, 3, 32, 32] and reference frames [1, 3, 32, 16] differ" in html


def test_markdown_fits_a_pull_request_comment() -> None:
    report = sample_report()
    report["image_metrics"]["frames"] = [{"frame": i, "psnr": 30.0 + i, "ssim": 0.9 + i / 100, "mad_255": 1.0}
                                         for i in range(8)]
    text = render_markdown(report)
    lines = text.splitlines()
    assert len(lines) <= 40
    assert lines[0] == "### ❌ diffparity `flux-tiny`: **FAIL**"
    assert "**First divergence:** decode/latents: rel_l2 0.3 > tolerance 1e-05" in text
    assert "| decode | forced | 1 | 1 | 3.000e-01 | 0.95000000 | 3e+04x | 3e+04x | ❌ **fail** |" in lines
    assert "| 0 (lowest SSIM of 8) | 30.00 | 0.900000 | 1 |" in lines
    assert "torch 2.13.0+cpu · CUDA none · GPU none · diffusers 0.42.1 · fp32 · attention math · TF32 off · seed 7" \
        in text


def test_side_by_side_scales_the_difference_to_the_run_and_prints_the_scale() -> None:
    """A passing run's tiny difference still lights the top of the ramp (not black), and the scale is printed."""
    native, _ = sample_frames()
    reference = native.clone()
    reference[0, 1, 3, 3] += 1e-4  # far below one grey level
    image, vmax = side_by_side(native, reference)
    array = np.asarray(image.convert("RGB"))
    scale = 6  # 32 px frames shown at 192 px, as in report.html
    assert vmax == pytest.approx(1e-4 * 255, rel=1e-3)
    heat = array[: 32 * scale, 64 * scale:]
    assert (heat[3 * scale, 3 * scale] == HEAT_STOPS[-1]).all() and (heat[0, 0] == HEAT_STOPS[0]).all()
    assert array.shape == (32 * scale + 30, 96 * scale, 3)
    footer = array[32 * scale:]
    assert (footer < 128).any(axis=-1).sum() > 100  # the printed labels (dark text on white)
    with pytest.raises(ValueError, match="differ"):
        side_by_side(native, native[..., :16])


# ---- wiring: what a run leaves on disk ----------------------------------------------------------------------------

class _StubTrace:
    def save(self, path: Path) -> None:
        path.write_bytes(b"trace")


def _result(native: torch.Tensor, reference: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(report=sample_report(), native_frames=native, reference_frames=reference,
                           native_trace=_StubTrace(), reference_trace=_StubTrace(), forced_trace=_StubTrace())


def test_run_artifacts_write_reports_before_report_json(tmp_path: Path, monkeypatch) -> None:
    written: list[str] = []
    for name in ("write_text_atomic", "write_json_atomic"):
        original = getattr(artifacts, name)
        monkeypatch.setattr(artifacts, name, lambda path, data, _f=original: (written.append(path.name),
                                                                             _f(path, data)))
    native, reference = sample_frames()
    artifacts.write_run_artifacts(_result(native, reference), tmp_path)
    assert written == ["report.html", "report.md", "report.json"]
    report = json.loads((tmp_path / "report.json").read_text())
    (row,) = report["image_metrics"]["frames"]
    assert row["frame"] == 0 and row["psnr"] < 40 and row["mad_255"] == pytest.approx(0.2 * 255 * 64 / 1024 / 3)
    assert report["reports"] == ["report.html", "report.md"] and "reports" in report["timings_s"]
    assert report["difference_max_255"] == pytest.approx(0.2 * 255, rel=1e-5)
    assert "0 to 51 / 255" in (tmp_path / "report.md").read_text()
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def test_run_artifacts_record_why_image_metrics_are_missing(tmp_path: Path) -> None:
    native, _ = sample_frames()
    artifacts.write_run_artifacts(_result(native, native[..., :16]), tmp_path)
    section = json.loads((tmp_path / "report.json").read_text())["image_metrics"]
    assert section["frames"] == [] and "differ in shape" in section["problem"]
    assert "differ in shape" in (tmp_path / "report.md").read_text()
