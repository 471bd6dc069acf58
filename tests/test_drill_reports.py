"""The drill inside a parity run and on the command line: report.json's `first_divergence.module` and `drill`
section, report.html's module tree, report.md's line, `diffparity drill` and `run --no-drill`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.drill.parity_hook import drill_on_failure
from harness.run.cases import get_case
from harness.run.parity import run_parity
from harness.verdicts.faults import FAULTS


@pytest.fixture(scope="module")
def faulted_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    case, fault = get_case("flux-tiny"), FAULTS["norm_weight_dropped"]
    out = tmp_path_factory.mktemp("faulted")
    run_parity(case, fault.request_for(case.request()), out_dir=out, mutate_native=fault.apply,
               extensions=[drill_on_failure])
    return json.loads((out / "report.json").read_text()), out


def test_a_failing_run_names_its_module_in_report_json(faulted_report: tuple[dict, Path]) -> None:
    report, _ = faulted_report
    assert report["verdict"] == "fail"
    first = report["first_divergence"]
    assert (first["stage"], first["field"], first["step"]) == ("denoise", "transformer_output", 0)
    assert (first["module"], first["component"]) == ("transformer_blocks.0.attn.norm_q", "transformer")
    drill = report["drill"]
    assert drill["status"] == "ran" and drill["basis"] == "local"
    assert drill["target"] == {"stage": "denoise", "field": "transformer_output", "step": 0,
                               "component": "transformer", "method": "forward", "call": 0}
    entry = next(m for m in drill["modules"] if m["module"] == "transformer_blocks.0.attn.norm_q")
    assert set(entry) >= {"module", "kind", "local", "inherited", "floor", "threshold", "passed"}
    assert set(entry["local"]) == {"rel_l2", "max_abs", "cos"} and entry["passed"] is False
    assert report["timings_s"]["drill"] > 0


def test_the_reports_show_the_module(faulted_report: tuple[dict, Path]) -> None:
    _, out = faulted_report
    html = (out / "report.html").read_text()
    assert "Drill-down: module of the first divergence" in html
    assert 'class="fail path named"><span class="name">norm_q</span>' in html
    assert "<script" not in html
    markdown = (out / "report.md").read_text()
    lines = [line for line in markdown.splitlines() if line.startswith("**Module:**")]
    assert len(lines) == 1 and "`transformer_blocks.0.attn.norm_q`" in lines[0]


def test_a_stage_without_a_component_is_not_drilled(tmp_path: Path) -> None:
    case, fault = get_case("flux-tiny"), FAULTS["sigmas_reversed"]
    result = run_parity(case, case.request(steps=2), mutate_native=fault.apply, extensions=[drill_on_failure])
    assert result.report["drill"]["status"] == "skipped" and "timesteps" in result.report["drill"]["reason"]
    assert result.report["first_divergence"]["module"] is None


def test_a_passing_run_has_no_drill(tmp_path: Path) -> None:
    case = get_case("flux-tiny")
    result = run_parity(case, case.request(steps=1, height=32, width=32), extensions=[drill_on_failure])
    assert result.passed and "drill" not in result.report and result.report["first_divergence"] is None


def test_diffparity_drill_names_a_faults_module(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["drill", "flux-tiny", "--stage", "decode", "--fault", "norm_bias_dropped", "--steps", "1",
                 "--height", "32", "--width", "32", "--out", str(tmp_path)])
    assert code == 1
    document = json.loads((tmp_path / "drill.json").read_text())
    assert document["drills"][0]["module"] == "decoder.mid_block.resnets.0.norm1"
    assert "module: decoder.mid_block.resnets.0.norm1 [GroupNorm] in vae" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"drill.json", "drill.md", "drill.html"}


@pytest.mark.parametrize(("argv", "message"), [
    (["drill", "flux-tiny", "--step", "1"], "--field and --step need --stage"),
    (["drill", "flux-tiny", "--stage", "denoise", "--step", "9"], "outside this run's steps"),
    (["drill", "flux-tiny", "--fault", "sp_heads_wrong_order"], "no fault 'sp_heads_wrong_order'"),
    (["drill", "flux-tiny", "--stage", "encode", "--field", "negative_prompt_embeds"], "only under true CFG"),
])
def test_drill_usage_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.parametrize("no_drill", [False, True], ids=["drilled", "no-drill"])
def test_diffparity_run_drills_a_failing_run_unless_told_not_to(no_drill: bool, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    """Through the command line: the drill is on by default for a failing run; `--no-drill` leaves the module null
    and says the drill was switched off. The run is broken by a catalog fault passed to the real `run_parity`."""
    import functools

    import harness.run.parity as parity

    fault = FAULTS["norm_bias_dropped"]
    monkeypatch.setattr(parity, "run_parity", functools.partial(parity.run_parity, mutate_native=fault.apply))
    argv = ["run", "flux-tiny", "--steps", "1", "--height", "32", "--width", "32", "--no-progress",
            "--out", str(tmp_path)]
    assert main(argv + (["--no-drill"] if no_drill else [])) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["first_divergence"]["stage"] == "decode"
    if no_drill:
        assert report["first_divergence"]["module"] is None and report["drill"]["status"] == "off"
        assert "drill off: switched off (--no-drill)" in capsys.readouterr().out
    else:
        assert report["first_divergence"]["module"] == "decoder.mid_block.resnets.0.norm1"
        assert report["drill"]["status"] == "ran" and report["drill"]["trigger"] == "first_divergence"
        assert "decoder.mid_block.resnets.0.norm1" in capsys.readouterr().out


def test_drilling_a_case_without_a_reference_probe_is_refused_before_any_work(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    """A case that declares no probe (wan-i2v-tiny) is one line and exit 2 before a checkpoint is built or the
    reference starts, not after the 'drilling ...' header."""
    assert main(["drill", "wan-i2v-tiny", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "declares no reference probe" in err and "drilling" not in err and len(err.strip().splitlines()) == 1


def test_a_failing_run_of_a_case_without_a_probe_says_the_drill_was_skipped_and_why(tmp_path: Path) -> None:
    """zimage-tiny declares no reference probe: its failing run keeps its verdict and the drill section says it
    was skipped for that reason (not an error), with `first_divergence.module` null."""
    from harness.verdicts.faults import faults_for

    case = get_case("zimage-tiny")
    assert case.run_reference_probe is None
    fault = next(f for f in faults_for("zimage") if f.applies_to("fp32") and f.topology == (1, 1))
    request = fault.request_for(case.request(dtype="fp32"))
    result = run_parity(case, request, mutate_native=fault.apply, extensions=[drill_on_failure])
    assert not result.passed
    drill = result.report["drill"]
    assert drill["status"] == "skipped" and "declares no reference probe" in drill["reason"]
    assert result.report["first_divergence"]["module"] is None
