"""The report writer under failure and hostile content: an existing report set is never half-overwritten, no
temporary or staging file is left behind, and strings from a trace or a request cannot inject markup.

Entry points: `write_run_artifacts` (harness/report/artifacts.py), `write_json_atomic` / `write_text_atomic`,
`Trace.save`, `render_html`, `render_markdown`.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.files import write_json_atomic
from harness.report import artifacts
from harness.report.html import render_html
from harness.report.markdown import render_markdown
from harness.trace.memory import Trace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/report_samples.py
from hostile_helpers import HOSTILE  # noqa: E402
from report_samples import sample_frames, sample_report  # noqa: E402


class DiskFull(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, "No space left on device")


def _trace(value: float) -> Trace:
    trace = Trace({"case": "flux-tiny"}, {"torch": "test"})
    trace.record("decode", "image", torch.full((1, 3, 4, 4), value))
    return trace


def _result(value: float = 1.0) -> SimpleNamespace:
    native, reference = sample_frames()
    report = sample_report()
    report["marker"] = value
    return SimpleNamespace(report=report, native_frames=native, reference_frames=reference,
                           native_trace=_trace(value), reference_trace=_trace(value), forced_trace=_trace(value),
                           ranks=None)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture()
def written(tmp_path: Path) -> Path:
    """A folder holding a complete earlier run (marker 1.0)."""
    artifacts.write_run_artifacts(_result(1.0), tmp_path)
    return tmp_path


def test_a_complete_run_leaves_no_staging_or_temporary_files(written: Path) -> None:
    names = sorted(p.name for p in written.iterdir())
    assert "report.json" in names and "native.safetensors" in names and "report.html" in names
    assert not [n for n in names if n.startswith(".")], names


FAILURES = {
    "trace-save": ("harness.trace.memory.Trace.save", 2),  # the second trace fails: the first was already written
    "side-by-side": ("harness.report.artifacts.save_side_by_side", 1),
    "render-html": ("harness.report.artifacts.render_html", 1),
    "render-markdown": ("harness.report.artifacts.render_markdown", 1),
    "report-json": ("harness.report.artifacts.write_json_atomic", 1),
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_a_failed_write_keeps_the_previous_run_whole(name: str, written: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target, fail_on_call = FAILURES[name]
    module_name, _, attribute = target.rpartition(".")
    owner = _resolve(module_name)
    original = getattr(owner, attribute)
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise DiskFull()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, failing)
    before = snapshot(written)
    with pytest.raises(OSError, match="No space left"):
        artifacts.write_run_artifacts(_result(2.0), written)
    assert snapshot(written) == before  # every old file byte for byte, no new file, no staging folder


def _resolve(dotted: str) -> object:
    import importlib

    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            owner: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            owner = getattr(owner, part)
        return owner
    raise ImportError(dotted)


def test_a_failure_while_publishing_never_leaves_an_old_report_beside_new_files(
        written: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If moving the files into place fails, report.json is absent or the new one: never the old report
    describing traces that were already replaced."""
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)) == written / "native.safetensors":  # moving into place, not writing into staging
            real_replace(src, dst)
            raise DiskFull()
        real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", replace)
    with pytest.raises(OSError):
        artifacts.write_run_artifacts(_result(2.0), written)
    if (written / "report.json").exists():
        assert json.loads((written / "report.json").read_text())["marker"] == 2.0
    assert not [p.name for p in written.iterdir() if p.name.startswith(".")]


def test_a_second_run_replaces_every_file(written: Path) -> None:
    artifacts.write_run_artifacts(_result(3.0), written)
    assert json.loads((written / "report.json").read_text())["marker"] == 3.0
    assert Trace.load(written / "native.safetensors").get(Trace.load(written / "native.safetensors").keys()[0])[
        0, 0, 0, 0] == 3.0
    assert not [p.name for p in written.iterdir() if p.name.startswith(".")]


def test_out_dir_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("keep")
    with pytest.raises(OSError):
        artifacts.write_run_artifacts(_result(), target)
    assert target.read_text() == "keep"


# ---- the atomic writers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_json_with_nan_is_refused_and_the_old_file_kept(value: float, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json_atomic(path, {"ok": 1})
    with pytest.raises(ValueError, match="Out of range float values"):
        write_json_atomic(path, {"ok": 2, "bad": value})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_json_write_interrupted_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up after half the document: the old file is intact and the temporary file is gone."""
    import harness.files

    path = tmp_path / "report.json"
    write_json_atomic(path, {"ok": 1})
    real_dump = json.dump

    def half_dump(data: object, handle: object, **kwargs: object) -> None:
        handle.write(json.dumps(data)[:5])  # type: ignore[attr-defined]
        raise DiskFull()

    monkeypatch.setattr(harness.files.json, "dump", half_dump)
    with pytest.raises(OSError):
        write_json_atomic(path, {"ok": 2, "long": "x" * 1000})
    monkeypatch.setattr(harness.files.json, "dump", real_dump)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_json_into_a_folder_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        write_json_atomic(blocker / "sub" / "report.json", {"a": 1})
    assert blocker.read_text() == "x"


def test_text_write_interrupted_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.md"
    artifacts.write_text_atomic(path, "old")

    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: object, **kwargs: object):
        handle = real_fdopen(fd, *args, **kwargs)
        original_write = handle.write

        def write(text: str) -> int:
            original_write(text[:3])
            raise DiskFull()

        handle.write = write
        return handle

    monkeypatch.setattr(artifacts.os, "fdopen", fdopen)
    with pytest.raises(OSError):
        artifacts.write_text_atomic(path, "new content")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_trace_save_interrupted_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "native.safetensors"
    _trace(1.0).save(path)
    before = path.read_bytes()
    trace = _trace(2.0)
    monkeypatch.setattr(trace, "_write_record", lambda key, out: (out.write(b"\0" * 3), (_ for _ in ()).throw(
        DiskFull())))
    with pytest.raises(OSError):
        trace.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native.safetensors"]


# ---- hostile strings in the content ------------------------------------------------------------------------------

INJECTIONS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "\"><svg onload=alert(1)>",
              "javascript:alert(1)", "</table><iframe src=//evil>", "a\n# heading\n| x | y |\n", "\x1b[31m\x00"]


@pytest.mark.parametrize("payload", INJECTIONS, ids=range(len(INJECTIONS)))
def test_hostile_strings_are_escaped_in_html_and_markdown(payload: str) -> None:
    report = sample_report()
    report["case"] = payload
    report["request"]["prompt"] = payload
    report["first_divergence_detail"] = payload
    report["checkpoint"] = payload
    report["environment"]["gpu"] = payload
    report["records"][0]["field"] = payload
    report["records"][0]["problem"] = payload
    native, reference = sample_frames()
    page = render_html(report, native, reference).lower()
    for raw in ("<script", "<img src=x", "<svg onload", "<iframe"):  # a tag, not its escaped text
        assert raw not in page, raw
    markdown = render_markdown(report)  # GitHub sanitises HTML itself; the structure must hold
    assert len(markdown.splitlines()) <= 40 and "\n# heading" not in markdown  # a value's newline starts no line


@HOSTILE
@given(text=st.text(max_size=40))
def test_any_prompt_renders(text: str) -> None:
    report = sample_report()
    report["request"]["prompt"] = text
    report["case"] = text
    page = render_html(report)
    assert "<script" not in page.lower()
    markdown = render_markdown(report)
    assert len(markdown.splitlines()) <= 40
