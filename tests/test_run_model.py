"""`diffparity run --model DIR_OR_HF_ID` without a case: family from model_index.json, the family's own request
defaults, --max-sequence-length, --expect, an offline Hugging Face cache id, and calibration by checkpoint identity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.compare.tolerances import ToleranceError
from harness.golden.model_calibration import model_calibration_path, model_tolerance_spec
from harness.run.expectation import resolve_expectation
from harness.run.model_case import model_case
from native_models.checkpoint_family import checkpoint_defaults
from native_models.errors import CheckpointError
from native_models.pipelines.wan import WAN_NEGATIVE_PROMPT


def config_folder(root: Path, pipeline: str, transformer: dict | None = None) -> Path:
    """A folder with model_index.json and a transformer config: all family detection and defaults read."""
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "transformer": ["diffusers", "X"]}))
    (root / "transformer").mkdir()
    (root / "transformer" / "config.json").write_text(json.dumps(transformer or {}))
    return root


def test_flux_dev_schnell_and_wan_defaults_come_from_the_family(tmp_path: Path) -> None:
    dev = model_case("dev", config_folder(tmp_path / "dev", "FluxPipeline", {"guidance_embeds": True}))
    assert dev.family == "flux" and dev.name == "flux@dev" and not dev.video
    request = dev.default_request
    assert (request.max_sequence_length, request.steps, request.guidance_scale) == (512, 28, 3.5)
    assert (request.height, request.width, request.negative_prompt, request.do_true_cfg) == (1024, 1024, None, False)

    schnell = model_case("s", config_folder(tmp_path / "s", "FluxPipeline", {"guidance_embeds": False})).default_request
    assert (schnell.max_sequence_length, schnell.steps, schnell.guidance_scale) == (256, 4, 0.0)

    wan = model_case("w", config_folder(tmp_path / "w", "WanPipeline"))
    request = wan.default_request
    assert wan.family == "wan" and wan.video
    assert (request.max_sequence_length, request.frames, request.height, request.width) == (512, 81, 480, 832)
    assert request.do_true_cfg and request.true_cfg_scale == 5.0 and request.negative_prompt == WAN_NEGATIVE_PROMPT


def test_family_is_decided_by_the_pipeline_class_not_the_folder_name(tmp_path: Path) -> None:
    entry, _ = checkpoint_defaults(config_folder(tmp_path / "flux-lookalike", "WanPipeline"))
    assert entry.family == "wan"
    with pytest.raises(CheckpointError, match=r"names pipeline 'FooPipeline'.*FluxPipeline \(flux\).*WanPipeline"):
        checkpoint_defaults(config_folder(tmp_path / "flux-named", "FooPipeline"))


def test_unregistered_pipeline_exits_2_listing_the_registered_ones(tmp_path: Path, capsys) -> None:
    folder = config_folder(tmp_path / "odd", "StableDiffusion3Pipeline")
    assert main(["run", "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "StableDiffusion3Pipeline" in err
    assert "registered: " in err and "FluxPipeline (flux)" in err and "WanPipeline (wan)" in err


def test_run_needs_a_case_or_a_model(capsys) -> None:
    assert main(["run"]) == 2
    assert "name a CASE" in capsys.readouterr().err


def test_expectation_auto_reads_the_build_record(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    assert resolve_expectation("auto", False, folder, "c").expects == "picture"  # no record: a real checkpoint
    (folder / "diffparity_build.json").write_text(json.dumps({"random_weights": True}))
    assert resolve_expectation(None, False, folder, "c").expects == "noise"
    (folder / "diffparity_build.json").write_text(json.dumps({"random_weights": False}))
    assert resolve_expectation("auto", False, folder, "c").expects == "picture"
    assert resolve_expectation("noise", True, folder, "c").to_dict() == {
        "requested": "noise", "expects": "noise", "reason": "--expect noise"}
    assert resolve_expectation("auto", True, None, "flux-digits").expects == "picture"
    assert resolve_expectation("auto", False, None, "flux-tiny").expects == "noise"


def test_calibration_lookup_is_by_identity(tmp_path: Path, monkeypatch) -> None:
    from references.flux.tiny import tiny_flux_checkpoint

    checkpoint = tiny_flux_checkpoint(seed=0)
    monkeypatch.setenv("DIFFPARITY_CACHE", str(tmp_path / "cache"))  # after the build: no calibrations stored
    spec = model_tolerance_spec("flux", checkpoint, "fp32", "cpu")
    assert spec.calibration is not None and spec.calibration["used"] is False
    assert "thresholds are the dtype defaults" in spec.describe()["calibration"]["note"]
    path = model_calibration_path("flux", "0" * 64, "fp32", "cpu")  # a calibration of another checkpoint ...
    digest_path = model_calibration_path("flux", spec.calibration["identity"] + "0" * 48, "fp32", "cpu")
    path.parent.mkdir(parents=True)
    document = {"schema_version": 1, "metric": "rel_l2", "dtype": "fp32", "records": [],
                "checkpoint_identity": {"digest": "0" * 64}}
    digest_path.write_text(json.dumps(document))  # ... stored under this checkpoint's name is refused
    with pytest.raises(ToleranceError, match="calibrates checkpoint 0000000000000000"):
        model_tolerance_spec("flux", checkpoint, "fp32", "cpu")
    assert not path.exists()


def hf_cache_with(checkpoint: Path, cache: Path, repo: str, revision: str = "0123456789abcdef" * 2 + "01234567"
                  ) -> Path:
    """The offline Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/SHA/...}."""
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(revision)
    snapshot = base / "snapshots" / revision
    shutil.copytree(checkpoint, snapshot)
    return snapshot


def test_hf_cache_id_runs_end_to_end_with_the_family_defaults_and_flags(tmp_path: Path) -> None:
    """The user's command on an id in the offline cache: its defaults (512 tokens) unless a flag says otherwise;
    the build record says random weights, so auto expects noise; the report says the thresholds are defaults."""
    from references.flux.tiny import tiny_flux_checkpoint

    snapshot = hf_cache_with(tiny_flux_checkpoint(seed=0), tmp_path / "hub", "acme/flux-mini")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"),
               DIFFPARITY_CACHE=str(tmp_path / "cache"))  # no calibration stored from other tests
    env.pop("HF_HOME", None)
    out = tmp_path / "run"
    script = Path(sys.executable).with_name("diffparity")
    proc = subprocess.run([str(script), "run", "--model", "acme/flux-mini", "--steps", "1", "--height", "32",
                           "--width", "32", "--max-sequence-length", "200", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["case"] == "flux@acme--flux-mini" and report["checkpoint"] == "acme/flux-mini"
    assert report["request"]["max_sequence_length"] == 200 and report["request"]["guidance_scale"] == 3.5
    assert report["expect"] == {"requested": "auto", "expects": "noise",
                                "reason": "diffparity_build.json says random weights"}
    assert report["tolerances"]["calibration"]["used"] is False
    assert "200 tokens" in proc.stderr and "thresholds: defaults" in proc.stderr
    embeds = [r for r in report["records"] if (r["stage"], r["field"]) == ("encode", "prompt_embeds")]
    assert embeds[0]["shape"][1] == 200  # T5 ran at the requested length on both sides
    assert snapshot.is_dir()


def test_calibrate_model_then_run_names_the_calibration(tmp_path: Path, monkeypatch, capsys) -> None:
    from references.flux.tiny import tiny_flux_checkpoint

    checkpoint = tiny_flux_checkpoint(seed=0)
    copy = tmp_path / "renamed-copy"  # the identity, not the path, finds the calibration
    shutil.copytree(checkpoint, copy)
    monkeypatch.setenv("DIFFPARITY_CACHE", str(tmp_path / "cache"))
    assert main(["calibrate", "--model", str(checkpoint), "--steps", "1", "--no-cfg",
                 "--max-sequence-length", "32"]) == 0
    stored = list((tmp_path / "cache" / "calibrations").glob("flux-*.fp32.cpu.json"))
    assert len(stored) == 1
    document = json.loads(stored[0].read_text())
    assert document["floors"].startswith("kernel-to-kernel and fp64")
    assert [p["name"] for p in document["perturbations"]] == ["attention_math", "threads", "fp64"]
    assert document["requests"] == [{"seed": 0, "height": 64, "width": 64, "steps": 1, "true_cfg": False}]
    out = tmp_path / "run"
    assert main(["run", "--model", str(copy), "--steps", "1", "--height", "32", "--width", "32",
                 "--max-sequence-length", "32", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    calibration = report["tolerances"]["calibration"]
    assert calibration["used"] is True and calibration["path"] == str(stored[0])
    assert report["tolerances"]["calibrated_records"] > 0
    assert any(r["tolerance"].get("source") == "calibrated" for r in report["records"])
    assert f"thresholds: calibration {stored[0]}" in capsys.readouterr().err
