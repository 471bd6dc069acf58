"""`diffparity run` without --out keeps every run (out/CASE/run-DATE-TIME, out/CASE/latest -> the newest), and
every artifact of a run gets the same permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.run.run_folders import LATEST, new_run_folder, point_latest

QUICK = ["--steps", "1", "--height", "32", "--width", "32", "--no-forcing", "--no-progress"]


def test_two_runs_keep_two_folders_and_latest_follows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "flux-tiny", *QUICK]) == 0
    first = capsys.readouterr().out
    assert main(["run", "flux-tiny", *QUICK, "--seed", "3"]) == 0
    second = capsys.readouterr().out
    case_root = tmp_path / "out" / "flux-tiny"
    runs = sorted(p for p in case_root.iterdir() if p.name.startswith("run-"))
    assert len(runs) == 2 and all((run / "report.json").is_file() for run in runs)
    assert f"report: out/flux-tiny/{runs[0].name}/report.json" in first
    assert f"report: out/flux-tiny/{runs[1].name}/report.json" in second
    latest = case_root / LATEST
    assert latest.is_symlink() and os.readlink(latest) == runs[1].name
    assert json.loads((latest / "report.json").read_text())["seed"] == 3
    assert json.loads((runs[0] / "report.json").read_text())["seed"] == 0  # the first run is still there


def test_a_run_that_cannot_start_writes_error_json_in_its_own_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "flux-tiny", "--frames", "5"]) == 2  # an image case takes no frames
    latest = tmp_path / "out" / "flux-tiny" / LATEST
    assert sorted(p.name for p in latest.iterdir()) == ["error.json"]
    assert "--frames applies to video cases only" in json.loads((latest / "error.json").read_text())["error"]


def test_run_folders_are_exclusive_within_a_second(tmp_path: Path) -> None:
    folders = [new_run_folder(tmp_path, now=1_800_000_000.0) for _ in range(3)]
    assert len({f.name for f in folders}) == 3 and folders[1].name.endswith("-2")
    point_latest(folders[0])
    point_latest(folders[2])
    assert os.readlink(tmp_path / LATEST) == folders[2].name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary link left


def test_every_artifact_has_the_same_permissions(tmp_path: Path) -> None:
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(["run", "flux-tiny", *QUICK[:-2], "--out", str(out), "--no-progress"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "report.json" in modes and "native.safetensors" in modes and "report.html" in modes
    assert set(modes.values()) == {0o644}, modes
