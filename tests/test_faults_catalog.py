"""The fault catalog itself (harness/verdicts/faults.py; the faults in references/<family>/faults.py) and
`diffparity faults` (harness/cli/commands/faults.py).

Where each fault is caught is tests/test_flux_fault_localization.py; here: the catalog names every failure mode
it must (field notes section 5 and issue 5), its declarations are consistent, a fault breaks only the pipeline
it is applied to (no class or module patched), and the command's matrix, JSON and exit codes.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness.cli.main import main
from harness.run.cases import get_case
from harness.run.native_runner import plan_native_run, run_native
from harness.trace.keys import STAGES
from harness.trace.memory import Trace
from harness.verdicts.faults import DTYPES, FAULTS, Fault, faults_for, register

REQUIRED = {
    # field notes section 5
    "decode_scale_shift_wrong", "decode_shift_missing", "vae_scale_factor_wrong",  # latent scale/shift, factor
    "sigma_shift_not_applied", "sigmas_reversed", "timesteps_truncated_to_int", "timestep_value_range_wrong",
    "conditioning_kwargs_swapped", "rotary_style_swapped", "text_encoder_wrong_hidden_state",
    "prompt_embeds_not_a_list", "sigmas_not_a_list", "raw_latent_shape_missing",
    # issue 3
    "initial_noise_generator_order", "cfg_wrong_sign",
    # issue 5
    "attention_softmax_scale_wrong", "norm_eps_changed", "last_denoising_step_skipped", "text_encoder_mask_ignored",
    "image_ids_height_width_swapped", "vae_decode_in_bf16", "guidance_scale_wrong",
}


def test_catalog_names_every_required_failure_mode() -> None:
    assert {fault.name for fault in faults_for("flux")} >= REQUIRED


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=lambda f: f.name)
def test_fault_declarations_are_consistent(fault: Fault) -> None:
    assert fault.description and fault.expected_stage in STAGES
    inside_loop = fault.expected_stage == "denoise" and not fault.raises
    assert (fault.expected_step is not None) == inside_loop
    assert fault.expected_field is not None or not fault.raises  # a refusal names its field
    assert set(fault.dtypes) <= set(DTYPES) and fault.dtypes
    assert (set(fault.dtypes) == set(DTYPES)) or fault.scope_note
    assert all(stage in STAGES and stage != fault.expected_stage for stage in fault.also_fails)


def test_register_refuses_inconsistent_faults() -> None:
    fault = FAULTS["cfg_wrong_sign"]
    with pytest.raises(ValueError, match="already registered"):
        register(fault)
    with pytest.raises(ValueError, match="scope_note"):
        register(replace(fault, name="fp32_only_without_reason", dtypes=("fp32",)))
    with pytest.raises(ValueError, match="subset"):
        register(replace(fault, name="fp16_fault", dtypes=("fp16",), scope_note="x"))
    assert "fp32_only_without_reason" not in FAULTS and "fp16_fault" not in FAULTS


def test_requests_and_expectations_follow_the_fault() -> None:
    base = get_case("flux-tiny").request(steps=6)
    assert FAULTS["cfg_wrong_sign"].request_for(base).do_true_cfg and not base.do_true_cfg
    wide = FAULTS["image_ids_height_width_swapped"].request_for(base)
    assert wide.height != wide.width and (base.height, base.width) == (64, 64)
    assert FAULTS["last_denoising_step_skipped"].expected_for(base) == ("denoise", "transformer_output", 5)
    assert FAULTS["rotary_style_swapped"].expected_for(base) == ("denoise", "transformer_output", 0)


def test_a_fault_breaks_only_the_pipeline_it_is_applied_to(tiny_flux: Path) -> None:
    """Apply every fault to one built pipeline; a pipeline built afterwards must still reproduce a clean run bit
    for bit (nothing patched on a class, a module or a shared config)."""
    request = get_case("flux-tiny").request(steps=2, height=32, width=48, negative_prompt="x", true_cfg_scale=2.0)
    clean = Trace()
    run_native(tiny_flux, request, clean)
    plan = plan_native_run(tiny_flux, request)
    broken = plan.pipeline_cls(tiny_flux, plan.config, dtype=plan.batch.dtype, device=plan.batch.device)
    for fault in faults_for("flux"):
        fault.apply(broken)
    again = Trace()
    run_native(tiny_flux, request, again)
    assert again.keys() == clean.keys()
    for key, tensor in clean.items():
        assert torch.equal(again[key], tensor), key.name()


@pytest.mark.parametrize("case_name", ["qwenimage-tiny", "zimage-tiny"])
def test_llm_family_faults_break_only_their_pipeline(case_name: str) -> None:
    """The same for the LLM-encoder families (their single-rank faults: shard faults refuse one rank)."""
    case = get_case(case_name)
    checkpoint = case.build_checkpoint()
    request = case.request(steps=2, height=32, width=48)
    clean = Trace()
    run_native(checkpoint, request, clean)
    plan = plan_native_run(checkpoint, request)
    broken = plan.pipeline_cls(checkpoint, plan.config, dtype=plan.batch.dtype, device=plan.batch.device)
    faults = [fault for fault in faults_for(case.family) if fault.topology == (1, 1)]
    assert len(faults) >= 10
    for fault in faults:
        fault.apply(broken)
    again = Trace()
    run_native(checkpoint, request, again)
    assert again.keys() == clean.keys()
    for key, tensor in clean.items():
        assert torch.equal(again[key], tensor), key.name()


# ---- diffparity faults ----
def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_faults_command_writes_the_matrix_and_json(tmp_path: Path, capsys) -> None:
    path = tmp_path / "matrix.json"
    code, out, err = run_cli(["faults", "flux-tiny", "--dtype", "fp32", "--fault", "sigma_shift_not_applied",
                              "--fault", "raw_latent_shape_missing", "--fault", "vae_decode_in_bf16",
                              "--json", str(path)], capsys)
    assert code == 0, out + err
    # a progress line per fault, in the order they finish (two worker processes: any order)
    assert all(re.search(rf"\[[123]/3\] {name} \(fp32\)", err) for name in
               ("sigma_shift_not_applied", "raw_latent_shape_missing", "vae_decode_in_bf16")), err
    assert "2 worker processes" in err or "1 worker process" in err
    assert "3 of 3 runs caught and localized" in out
    rows = json.loads(path.read_text())
    assert [row["fault"] for row in rows] == ["sigma_shift_not_applied", "raw_latent_shape_missing",
                                              "vae_decode_in_bf16"]
    shift, refused, vae = rows
    assert shift["found"] == {"stage": "timesteps", "field": "sigmas", "step": None, "mode": "free"}
    assert shift["detected"] and shift["localized"] and shift["ok"]
    assert shift["x_floor"] == "inf"  # the sigma schedule's floor is 0: any difference is infinitely above it
    assert shift["x_threshold"] > 1e5 and shift["noise"] in ("ok", "flagged")
    assert refused["found"]["raised"] == "LatentPreparationStage" and refused["ok"]
    assert vae["found"]["stage"] == "decode" and vae["x_floor"] > 100


def test_faults_command_skips_a_precision_the_fault_does_not_exist_in(capsys) -> None:
    code, out, _ = run_cli(["faults", "flux-tiny", "--dtype", "bf16", "--fault", "vae_decode_in_bf16"], capsys)
    assert code == 0 and "skipped: fp32 only" in out and "0 of 0 runs" in out


def test_faults_command_fails_a_fault_caught_in_the_wrong_place(monkeypatch, tmp_path: Path, capsys) -> None:
    """Exit 1 when a fault is localized elsewhere than expected, or not detected at all."""
    wrong = replace(FAULTS["sigma_shift_not_applied"], name="claims_decode", expected_stage="decode",
                    expected_field="image")
    harmless = replace(FAULTS["sigma_shift_not_applied"], name="does_nothing", apply=lambda pipeline: None)
    monkeypatch.setitem(FAULTS, wrong.name, wrong)
    monkeypatch.setitem(FAULTS, harmless.name, harmless)
    path = tmp_path / "m.json"
    # --jobs 1: faults defined here (a lambda, FAULTS patched in this process) cannot reach worker processes
    code, out, _ = run_cli(["faults", "flux-tiny", "--dtype", "fp32", "--fault", "claims_decode", "--fault",
                            "does_nothing", "--json", str(path), "--jobs", "1"], capsys)
    assert code == 1
    rows = {row["fault"]: row for row in json.loads(path.read_text())}
    assert rows["claims_decode"]["detected"] and not rows["claims_decode"]["localized"]
    assert not rows["does_nothing"]["detected"] and rows["does_nothing"]["found"] is None
    assert "0 of 2 runs caught" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["faults", "flux-tiny", "--fault", "no_such_fault"], "unknown fault(s) no_such_fault"),
    (["faults", "no-such-case"], "unknown case 'no-such-case'"),
])
def test_faults_command_bad_input_is_one_line_exit_2(argv: list[str], needle: str, capsys) -> None:
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and needle in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_faults_command_bad_dtype_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["faults", "flux-tiny", "--dtype", "fp64"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid choice: 'fp64'" in err and len(err.strip().splitlines()) == 1


def test_faults_command_json_into_a_folder_is_refused_before_running(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["faults", "flux-tiny", "--json", str(tmp_path)], capsys)
    assert code == 2 and "cannot write a file there" in err and not list(tmp_path.iterdir())


def test_faults_command_lists_the_catalog(capsys) -> None:
    code, out, _ = run_cli(["faults", "flux-tiny", "--list"], capsys)
    assert code == 0 and {line.split()[0] for line in out.splitlines()} == {f.name for f in faults_for("flux")}
