"""Broken variants of the trained flux-digits model: each is caught by parity, the noise detector or the digit
classifier, and the correct pipeline by none (a sample of scripts/digits_fault_table.py, one digit and seed).

The sample spans the pipeline: the schedule (a wrong sigma order), the transformer (split-half rotary: smooth
output that image statistics cannot see, field notes section 7) and the decoder (latents scaled the wrong way).
"""

from __future__ import annotations

import pytest
from script_loader import load_script

from harness.verdicts.faults import FAULTS, get_fault

SAMPLED = ("sigmas_reversed", "rotary_style_swapped", "decode_scale_shift_wrong")


table = load_script("digits_fault_table")  # reuses the fault-table script's runner


def test_judge_ignores_a_detector_that_fires_on_the_correct_output() -> None:
    """At a size the model was not trained for the classifier misreads the correct output too: no catch."""
    control = table.RunOutcome(table.CONTROL, 3, 0, {}, noise_flagged=False, predicted=1)
    faulty = table.RunOutcome("f", 3, 0, {}, parity_failed=True, noise_flagged=True, predicted=4)
    table.judge(control, None, 3)
    table.judge(faulty, control, 3)
    assert control.caught_by == ["classifier"]
    assert faulty.caught_by == ["parity", "noise"]
    photo = table.RunOutcome("g", 3, 0, {}, photo_noise_flagged=True, predicted=3)
    table.judge(photo, control, 3)
    assert photo.caught_by == ["photo_noise"]


def test_sampled_faults_are_caught_and_the_control_is_not() -> None:
    missing = [name for name in SAMPLED if name not in FAULTS]
    assert not missing, f"sampled faults no longer in the catalog: {missing}"
    rows, outcomes = table.fault_table((3,), (0,), [get_fault(name) for name in SAMPLED])
    by_name = {row.variant: row for row in rows}
    control = by_name[table.CONTROL]
    assert control.status == "clean" and not control.caught_by, table.describe(control)
    assert control.classifier_hits == 1 and control.parity_failed == 0 and control.noise_flagged == 0
    assert control.photo_noise_flagged == 0  # the correct digit decoded by the photo VAE is a picture too
    for name in SAMPLED:
        row = by_name[name]
        assert row.status == "caught" and row.caught_runs == row.runs == 1, table.describe(row)
    assert len(outcomes) == 1 + len(SAMPLED)


@pytest.mark.parametrize("text", ["", "3,x", "10"])
def test_bad_digits_are_a_usage_error(text: str) -> None:
    with pytest.raises(table.UsageError):
        table.parse_int_list(text, "digits", 0, 9)


def test_unknown_fault_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert table.main(["--faults", "no_such_fault"]) == table.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_fault" in err[0]
