"""The model-addition gate: a registered model without its case, golden... fails and names what is missing.

The throwaway model is FLUX under another family name (its own PipelineConfig subclass, registered for its own
checkpoint folder), so a real parity run can pass once its case and golden exist.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import harness.run.cases as cases_module
import native_models.registry as registry
from harness.cli.main import main
from harness.golden.record import promote_golden, record_golden
from harness.run.cases import Case, get_case, register_case
from harness.verdicts.gate import (
    MISSING,
    NA,
    OK,
    check_models,
    is_multi_rank,
    multi_rank_test_files,
    run_multi_rank_tests,
)
from native_models.pipelines.flux import FluxPipelineConfig, FluxSamplingParams
from native_models.registry import register_configs

FAMILY = "throwaway"


@dataclass
class ThrowawayPipelineConfig(FluxPipelineConfig):
    """A model family the registry has never seen (FLUX numerics, so a parity run can pass)."""


@pytest.fixture()
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registry and case table changes made by a test are undone after it."""
    import native_models.pipelines.flux  # noqa: F401 - registers FLUX before the registry is copied

    monkeypatch.setattr(registry, "_REGISTRY", list(registry._REGISTRY))
    monkeypatch.setattr(cases_module, "CASES", dict(cases_module.CASES))


@pytest.fixture()
def throwaway(isolated: None, tmp_path: Path, tiny_flux: Path) -> Path:
    """Register the throwaway family for its own checkpoint folder (a copy of the tiny FLUX checkpoint)."""
    checkpoint = tmp_path / "checkpoints" / "throwaway-tiny"
    shutil.copytree(tiny_flux, checkpoint)
    register_configs(FluxSamplingParams, ThrowawayPipelineConfig, hf_model_paths=[str(checkpoint)], family=FAMILY)
    return checkpoint


def throwaway_case(checkpoint: Path) -> Case:
    flux = get_case("flux-tiny")
    return Case(name="throwaway-tiny", family=FAMILY, description="FLUX numerics under another family name",
                build_checkpoint=lambda: checkpoint, run_reference=flux.run_reference,
                run_reference_forced=flux.run_reference_forced,
                default_request=flux.request(steps=2, height=32, width=32))


def checks_of(report) -> dict[str, str]:
    (model,) = report.models
    return {check.name: check.status for check in model.checks}


def test_unregistered_model_fails_the_gate_naming_case_and_golden_then_passes(
        throwaway: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases_dir, golden_root = tmp_path / "cases", tmp_path / "golden"
    cases_dir.mkdir()
    report = check_models([FAMILY], cases_dir=cases_dir, golden_root=golden_root)
    assert not report.passed
    checks = checks_of(report)
    assert checks["case file"] == checks["cases"] == checks["golden (cpu)"] == MISSING
    text = report.format()
    assert f"no {cases_dir / 'test_throwaway.py'}" in text and "no Case with family 'throwaway'" in text
    assert "gate: FAIL: throwaway (case file, cases, tiny builder, golden (cpu), parity" in text

    # the case alone is not enough: the golden is still missing, and named
    (cases_dir / "test_throwaway.py").write_text("def test_placeholder():\n    pass\n")
    case = throwaway_case(throwaway)
    register_case(case)
    report = check_models([FAMILY], cases_dir=cases_dir, golden_root=golden_root)
    checks = checks_of(report)
    assert checks["case file"] == checks["cases"] == checks["tiny builder"] == OK
    assert checks["golden (cpu)"] == MISSING and checks["parity"] != OK
    assert "throwaway-tiny: no fp32 golden for the cpu class" in report.format()

    record_golden(case, "fp32", "cpu", golden_root)
    promote_golden(case.name, "fp32", "cpu", golden_root)
    report = check_models([FAMILY], cases_dir=cases_dir, golden_root=golden_root)
    assert report.passed, report.format()
    assert checks_of(report) == {"todo blocks": OK, "case file": OK, "cases": OK, "tiny builder": OK,
                                 "golden (cpu)": OK, "parity": OK, "not noise": NA, "multi-rank": NA}
    assert report.format().endswith("gate: PASS (1 model)")

    # the case's default request changes, its golden does not: stale, named
    cases_module.CASES[case.name] = replace(case, default_request=replace(case.default_request, steps=3))
    report = check_models([FAMILY], cases_dir=cases_dir, golden_root=golden_root)
    assert checks_of(report)["golden (cpu)"] == MISSING and "recorded for another request" in report.format()


def test_gate_fails_when_the_case_no_longer_matches_its_golden(throwaway: Path, tmp_path: Path) -> None:
    """A golden passes only for the native side it was recorded against: a broken pipeline fails parity."""
    from harness.verdicts.faults import get_fault

    case = throwaway_case(throwaway)
    register_case(case)
    (tmp_path / "test_throwaway.py").write_text("")
    record_golden(case, "fp32", "cpu", tmp_path / "golden")
    promote_golden(case.name, "fp32", "cpu", tmp_path / "golden")
    fault = get_fault("sigma_shift_not_applied")
    original = ThrowawayPipelineConfig.compute_mu
    ThrowawayPipelineConfig.compute_mu = lambda self, batch, scheduler: 0.0  # the fault, on the class this time
    try:
        report = check_models([FAMILY], cases_dir=tmp_path, golden_root=tmp_path / "golden")
    finally:
        ThrowawayPipelineConfig.compute_mu = original
    assert fault.expected_stage == "timesteps"
    checks = checks_of(report)
    assert checks["parity"] == "failed" and not report.passed
    assert "throwaway-tiny fp32 FAIL at timesteps/sigmas" in report.format()


def test_a_case_whose_checkpoint_is_another_family_fails_the_builder_check(throwaway: Path, tmp_path: Path) -> None:
    flux = get_case("flux-tiny")
    register_case(Case(name="throwaway-wrong", family=FAMILY, description="builds FLUX's own checkpoint",
                       build_checkpoint=flux.build_checkpoint, run_reference=flux.run_reference,
                       default_request=flux.default_request))
    report = check_models([FAMILY], cases_dir=tmp_path, golden_root=tmp_path)
    assert checks_of(report)["tiny builder"] == "failed"
    assert "resolves to family 'flux', not 'throwaway'" in report.format()


def test_gate_cli(capsys: pytest.CaptureFixture) -> None:
    assert main(["gate", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no registered model named no-such-model" in err
    assert main(["gate", "flux", "--no-run"]) == 1  # checks that were not run are not passes
    assert "not run (--no-run)" in capsys.readouterr().out


def test_multi_rank_check_runs_only_tests_covering_the_family_on_several_ranks(tmp_path: Path) -> None:
    assert is_multi_rank("tp2") and is_multi_rank("tp2-sp2") and is_multi_rank("2x1")
    assert not is_multi_rank("1x1") and not is_multi_rank("single")
    (tmp_path / "test_ranks.py").write_text(
        "import pytest\n"
        "@pytest.mark.covers('throwaway', 'tp2')\ndef test_two_ranks():\n    pass\n"
        "@pytest.mark.covers('throwaway', '1x1')\ndef test_one_rank():\n    raise AssertionError('not selected')\n"
        "@pytest.mark.covers('other', 'tp2')\ndef test_other_family():\n    raise AssertionError('not selected')\n"
    )
    assert multi_rank_test_files("throwaway", (tmp_path,)) == [tmp_path / "test_ranks.py"]
    assert run_multi_rank_tests("throwaway", (tmp_path,)) == {"passed": 1, "failed": 0, "skipped": 0}
    (tmp_path / "test_more.py").write_text(
        "import pytest\n"
        "@pytest.mark.covers('throwaway', 'sp2')\ndef test_broken():\n    raise AssertionError('diverges')\n"
        "@pytest.mark.covers('throwaway', 'sp4')\ndef test_needs_gpus():\n    pytest.skip('4 GPUs')\n"
    )
    assert run_multi_rank_tests("throwaway", (tmp_path,)) == {"passed": 1, "failed": 1, "skipped": 1}
    assert run_multi_rank_tests("nobody", (tmp_path,)) == {"passed": 0, "failed": 0, "skipped": 0}


def test_gate_over_the_real_registry() -> None:
    """Every model registered in native_models/ has everything the gate asks for (the CI gate)."""
    report = check_models()
    print(report.format())
    assert {model.family for model in report.models} >= {"flux"}
    assert report.passed, report.format()


def test_multi_rank_check_fails_without_a_single_rank_verification_to_compare_with(tmp_path: Path) -> None:
    """The ranks are judged against the parity check's single-rank run; with none, the check fails (not n/a)."""
    from harness.verdicts.gate import _check_multi_rank

    (tmp_path / "test_ranks.py").write_text(
        "import pytest\n@pytest.mark.covers('wan', 'tp2')\ndef test_two_ranks():\n    pass\n")
    case = get_case("wan-tiny")
    checks: list = []
    _check_multi_rank("wan", [case], {case.name: case.build_checkpoint()}, checks, (tmp_path,), True, {})
    (check,) = checks
    assert check.status == "failed" and "no passing single-rank verification" in check.detail, check
