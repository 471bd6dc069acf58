"""Image metrics, the |difference| heat-map, the SVG drift plot, report.html and report.md, and their wiring."""

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
from report_samples import HOT, sample_frames, sample_report

from harness.report import artifacts
from harness.report.html import render_html
from harness.report.image_metrics import ImageMetricsError, image_metrics, json_safe
from harness.report.images import HEAT_STOPS, frame_images
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
    stage_rows = {(cells[0], cells[1]): css for css, cells in page.rows if len(cells) == 8}
    assert stage_rows[("decode", "forced")] == "fail"
    assert stage_rows[("decode", "free")] == "pass" and stage_rows[("denoise", "forced")] == "pass"
    assert list(stage_rows)[1:] == [("encode", "free"), ("encode", "forced"), ("timesteps", "free"),
                                   ("timesteps", "forced"), ("denoise", "free"), ("denoise", "forced"),
                                   ("decode", "free"), ("decode", "forced")]
    firsts = [cells[:2] for css, cells in page.rows if "first" in css.split()]
    assert firsts == [["decode/latents", "forced"]]
    assert "decode/latents: rel_l2 0.3 &gt; tolerance 1e-05" in render_html(sample_report())


def test_html_drift_plot_shows_free_solid_and_forced_dashed_with_growth() -> None:
    html = render_html(sample_report(steps=6))
    lines = re.findall(r"<polyline [^>]*>", html)
    assert len(lines) == 4
    assert sum("stroke-dasharray" in line for line in lines) == 2
    assert {re.search(r'stroke="(#\w+)"', line)[1] for line in lines} == {"#1f77b4", "#2ca02c"}
    page = _parse(html)
    growth = next(cells for _, cells in page.rows if cells[0] == "growth latents")
    assert growth[1:3] == ["—", "2"]


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
    assert "| decode | forced | 1 | 1 | 3.000e-01 | 0.95000000 | 3e+04x | ❌ **fail** |" in lines
    assert "| 0 (lowest SSIM of 8) | 30.00 | 0.900000 | 1 |" in lines
    assert "torch 2.13.0+cpu · CUDA none · GPU none · diffusers 0.42.1 · fp32 · attention math · TF32 off · seed 7" \
        in text


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
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def test_run_artifacts_record_why_image_metrics_are_missing(tmp_path: Path) -> None:
    native, _ = sample_frames()
    artifacts.write_run_artifacts(_result(native, native[..., :16]), tmp_path)
    section = json.loads((tmp_path / "report.json").read_text())["image_metrics"]
    assert section["frames"] == [] and "differ in shape" in section["problem"]
    assert "differ in shape" in (tmp_path / "report.md").read_text()
