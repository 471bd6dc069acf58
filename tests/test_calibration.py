"""Calibration measures real floors, derives thresholds as documented, and parity runs use what it stored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from harness.cli.main import main
from harness.compare import tolerances
from harness.compare.tolerances import (
    FLOOR_MULTIPLE,
    ToleranceError,
    ToleranceSpec,
    calibrated_threshold,
    load_tolerance_spec,
    minimum_threshold,
)
from harness.golden.calibrate import calibrate, calibration_requests, perturbations_for, write_calibration
from harness.run.cases import get_case
from harness.run.parity import run_parity


@pytest.fixture(scope="module")
def small_calibration(tiny_flux: Path) -> dict:
    """One seed, one 32x32 size, with and without true CFG, on the CPU in fp32 (about 20 reference runs)."""
    return calibrate(get_case("flux-tiny"), dtype="fp32", seeds=1, sizes=[(32, 32)], checkpoint=tiny_flux)


def entry(document: dict, stage: str, field: str) -> dict:
    return next(e for e in document["records"] if (e["stage"], e["field"]) == (stage, field))


def test_perturbations_apply_per_device_and_dtype() -> None:
    assert [p.name for p in perturbations_for("cpu", "fp32")] == ["attention_math", "threads", "fp64"]
    assert [p.name for p in perturbations_for("cpu", "bf16")] == ["attention_math", "threads"]
    assert [p.name for p in perturbations_for("cuda", "fp32")] == ["attention_math", "attention_efficient",
                                                                   "tf32", "fp64"]


def test_calibration_requests_cover_seeds_sizes_and_cfg() -> None:
    requests = calibration_requests(get_case("flux-tiny"), "bf16", "cpu", seeds=2)
    assert [(r.seed, r.height, r.width, r.do_true_cfg, r.steps) for r in requests] == [
        (0, 64, 64, False, 4), (0, 48, 80, False, 4), (0, 48, 80, True, 4), (0, 32, 32, True, 1),
        (1, 64, 64, False, 4), (1, 48, 80, False, 4), (1, 48, 80, True, 4), (1, 32, 32, True, 1),
    ]
    named = calibration_requests(get_case("flux-tiny"), "bf16", "cpu", seeds=1, sizes=[(64, 64)])
    assert [(r.height, r.width, r.do_true_cfg, r.steps) for r in named] == [(64, 64, False, 4), (64, 64, True, 4)]
    assert all(r.dtype == "bf16" for r in requests)
    # a case that guides by default (Wan) gets its other request unguided: both kinds of run have floors
    wan = calibration_requests(get_case("wan-tiny"), "fp32", "cpu", seeds=1)
    assert [(r.height, r.width, r.do_true_cfg, r.steps) for r in wan] == [
        (48, 80, True, 4), (48, 80, False, 4), (32, 32, True, 1)]


def test_floors_are_measured_not_assumed(small_calibration: dict) -> None:
    doc = small_calibration
    # the attention kernel moves the DiT output and the decoded image: real, nonzero floors
    for stage, field in (("denoise", "transformer_output"), ("decode", "image"), ("encode", "prompt_embeds")):
        assert 0 < entry(doc, stage, field)["floor"] < 1e-5, (stage, field)
    # nothing perturbs the float32 schedule or the initial noise: zero floors, thresholds at the minimum
    for stage, field in (("timesteps", "sigmas"), ("latents", "initial")):
        e = entry(doc, stage, field)
        assert e["floor"] == 0.0 and e["threshold"] == minimum_threshold(torch.float32)
    # the CFG request gave floors to the negative fields too
    assert entry(doc, "encode", "negative_prompt_embeds")["floor"] > 0
    assert entry(doc, "denoise", "transformer_output_uncond")["floor"] > 0


def test_thresholds_follow_the_documented_rule(small_calibration: dict) -> None:
    for e in small_calibration["records"]:
        dtype = getattr(torch, e["record_dtype"])
        for values in (e, e.get("forced")):
            if values is not None:
                assert values["threshold"] == max(FLOOR_MULTIPLE * values["floor"], minimum_threshold(dtype))
                assert values["threshold"] == calibrated_threshold(values["floor"], dtype)


def test_forced_floors_cover_exactly_the_forced_stages(small_calibration: dict) -> None:
    forced = {(e["stage"], e["field"]) for e in small_calibration["records"] if "forced" in e}
    assert {stage for stage, _ in forced} == {"denoise", "decode"}
    # the decoder's forced input is the baseline's own tensor: no perturbation can move it
    assert entry(small_calibration, "decode", "latents")["forced"]["floor"] == 0.0
    # a step from identical inputs differs less than the accumulated free run at the last step
    dit = entry(small_calibration, "denoise", "latents")
    assert dit["forced"]["floor"] <= dit["floor"]


def test_stored_calibration_is_what_a_run_uses(small_calibration: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tolerances, "GOLDEN_DIR", tmp_path)
    path = tolerances.calibration_path("flux-tiny", "fp32", "cpu")
    assert path == tmp_path / "flux-tiny.fp32.cpu.json"
    write_calibration(small_calibration, path)
    spec = load_tolerance_spec("flux-tiny", "fp32", "cpu")
    assert spec.source.endswith("flux-tiny.fp32.cpu.json")
    e = entry(small_calibration, "denoise", "noise_pred")
    assert spec.tolerance("denoise", "noise_pred").threshold == e["threshold"]
    assert spec.tolerance("denoise", "noise_pred", "forced").threshold == e["forced"]["threshold"]
    encode = entry(small_calibration, "encode", "prompt_embeds")
    assert spec.floor("encode", "prompt_embeds", "forced") == encode["floor"]  # not forced: the free floor

    case = get_case("flux-tiny")
    result = run_parity(case, case.request(height=32, width=32, steps=2))
    assert result.report["tolerances"]["source"] == spec.source
    for record in result.report["records"]:
        assert record["tolerance"]["source"] == "calibrated"
        assert record["floor"] is not None and record["floor_multiple"] is not None
    denoise = next(r for r in result.comparison.forced_records if r.field == "transformer_output")
    assert math.isclose(denoise.floor_multiple, denoise.metrics["rel_l2"] / denoise.floor)


def test_no_calibration_means_defaults(tmp_path: Path) -> None:
    spec = load_tolerance_spec("flux-tiny", "bf16", "cpu", root=tmp_path)
    assert spec == ToleranceSpec("bf16")
    assert spec.tolerance("denoise", "latents").to_dict() == {"metric": "cos", "threshold": 0.999, "source": "default"}
    assert spec.floor("denoise", "latents") is None


@pytest.mark.parametrize("content", ["{not json", json.dumps({"schema_version": 99, "records": []}),
                                     json.dumps({"schema_version": 1, "metric": "rel_l2", "case": "flux-tiny",
                                                 "dtype": "fp32", "records": [{"stage": "encode"}]})])
def test_bad_calibration_file_is_one_line_exit_2(content: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(tolerances, "GOLDEN_DIR", tmp_path)
    tolerances.calibration_path("flux-tiny", "fp32", "cpu").write_text(content)
    with pytest.raises(ToleranceError):
        load_tolerance_spec("flux-tiny", "fp32", "cpu")
    code = main(["run", "flux-tiny", "--steps", "1", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "calibration" in errors[0] and "Traceback" not in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["error.json"]


def test_calibrate_command_writes_the_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cal.json"
    code = main(["calibrate", "flux-tiny", "--seeds", "1", "--size", "32x32", "--no-cfg", "--dtype", "bf16",
                 "--out", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["case"] == "flux-tiny" and doc["dtype"] == "bf16" and doc["device_class"] == "cpu"
    assert [r["true_cfg"] for r in doc["requests"]] == [False]
    assert "denoise/transformer_output" in capsys.readouterr().out


def test_calibrate_bad_size_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["calibrate", "flux-tiny", "--size", "48by80"])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
