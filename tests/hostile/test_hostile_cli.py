"""Hostile command lines: every subcommand answers bad arguments with one printable line and exit 2, before any
model is built, and never writes outside the folder it was told to (a case name is never a path).

The heavy entry points (the parity run, calibration, the fault matrix) are replaced by a stub that raises
`Reached`, so a test knows an argument vector got through validation without running a model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hostile_helpers import HOSTILE, assert_one_line_error, fails_fast
from hypothesis import given
from hypothesis import strategies as st

from harness.cli.common import UsageError, one_line
from harness.run import cases
from native_models.errors import RequestError
from native_models.limits import check_request_limits


class Reached(UsageError):
    """Raised by the stubs: validation let the arguments through to the heavy work."""


def _reached(*args: object, **kwargs: object) -> None:
    raise Reached("reached the heavy entry point")


@pytest.fixture()
def stubbed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Heavy entry points stubbed, the reference made to fail loudly, and the working folder a fresh nested
    temporary folder (so '../x' would land inside tmp_path, where the test can see it). Returns tmp_path."""
    import harness.golden.calibrate
    import harness.run.parity
    import harness.verdicts.fault_matrix  # imported before run_parity is stubbed: it binds run_parity by name

    monkeypatch.setattr(harness.run.parity, "run_parity", _reached)
    monkeypatch.setattr(harness.golden.calibrate, "calibrate", _reached)
    monkeypatch.setattr(harness.verdicts.fault_matrix, "run_fault_matrix", _reached)
    for name, case in list(cases.CASES.items()):
        monkeypatch.setitem(cases.CASES, name, dataclasses.replace(case, run_reference=_reached,
                                                                   build_checkpoint=_reached))
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    return tmp_path


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---- case names that look like paths ---------------------------------------------------------------------------

CASE_NAMES = ["../x", "../../x", "/etc/passwd", "/tmp", "a\0b", "\x1b[31mred", "two\nlines", "x" * 5000, "",
              ".", "..", "flux-tiny/../flux-tiny", "~root", "c:\\windows"]


@pytest.mark.parametrize("command", [["run"], ["calibrate"], ["faults"], ["golden", "record"], ["golden", "verify"],
                                     ["golden", "promote"]])
@pytest.mark.parametrize("name", CASE_NAMES, ids=[repr(n)[:20] for n in CASE_NAMES])
def test_path_like_case_names(command: list[str], name: str, stubbed: Path, cli) -> None:
    with fails_fast():
        code, _, err = cli([*command, name])
    assert_one_line_error(code, err)
    assert files_under(stubbed) == [], files_under(stubbed)  # no error.json under out/../x or anywhere


# ---- sizes and numbers ------------------------------------------------------------------------------------------

RUN_ARGS = {
    "height-huge": (["--height", "10000000"], "height must be an integer in 1..8192"),
    "width-huge": (["--width", "10000000"], "width must be an integer in 1..8192"),
    "both-8192": (["--height", "8192", "--width", "8192", "--steps", "1"], None),  # allowed: reaches the stub
    "steps-huge": (["--steps", "1000000000"], "steps must be an integer in 1..1000"),
    "seed-2-64": (["--seed", str(2**64)], "larger than the largest seed"),
    "seed-huge-string": (["--seed", "9" * 5000], "is not a usable integer"),
    "seed-negative": (["--seed", "-1"], "must be >= 0"),
    "frames-huge": (["--frames", "1000000000"], "--frames applies to video cases only"),
    "guidance-nan": (["--guidance", "nan"], "is not a finite number"),
    "guidance-inf": (["--guidance", "inf"], "is not a finite number"),
    "true-cfg-minus-inf": (["--true-cfg=-inf"], "is not a finite number"),
    "true-cfg-dash-value": (["--true-cfg", "-inf"], "expected one argument"),  # argparse reads -inf as a flag
    "guidance-word": (["--guidance", "lots"], "is not a number"),
    "height-float": (["--height", "64.0"], "is not an integer"),
    "height-zero": (["--height", "0"], "must be a positive integer"),
    "dtype": (["--dtype", "fp16"], "invalid choice"),
    "device": (["--device", "tpu"], "invalid choice"),
    "unknown-flag": (["--frobnicate"], "unrecognized arguments"),
    "tp-zero": (["--tp", "0"], "must be a positive integer"),
    "prompt-huge": (["--prompt", "x" * 200_000], "prompt has 200000 characters, more than 100000"),
    "negative-prompt-huge": (["--negative-prompt", "x" * 200_000], "negative_prompt has 200000 characters"),
}


@pytest.mark.parametrize("name", list(RUN_ARGS))
def test_run_arguments(name: str, stubbed: Path, cli) -> None:
    argv, needle = RUN_ARGS[name]
    out = stubbed / "out"
    with fails_fast():
        code, _, err = cli(["run", "flux-tiny", "--out", str(out), *argv])
    line = assert_one_line_error(code, err)
    if needle is None:
        assert "reached the heavy entry point" in line
    else:
        assert needle in line, line


CALIBRATE_ARGS = {
    "seeds-huge": (["--seeds", "1000000000"], "is more than 1000"),
    "size-huge": (["--size", "10000000x64"], "is not a size HxW"),
    "size-side-over-limit": (["--size", "64x8200"], "a side is larger than 8192 pixels"),
    "size-zero": (["--size", "0x64"], "is not a size HxW"),
    "size-garbage": (["--size", "64by64"], "is not a size HxW"),
    "size-digits": (["--size", "9" * 5000 + "x64"], "is not a size HxW"),
    "out-is-folder": (["--out", "."], "is a folder; calibrate writes one file"),
    "out-under-file": (["--out", "/etc/passwd/x.json"], "exists and is not a folder"),
}


@pytest.mark.parametrize("name", list(CALIBRATE_ARGS))
def test_calibrate_arguments(name: str, stubbed: Path, cli) -> None:
    argv, needle = CALIBRATE_ARGS[name]
    with fails_fast():
        code, _, err = cli(["calibrate", "flux-tiny", *argv])
    assert_one_line_error(code, err, needle)
    assert files_under(stubbed) == []  # no error.json written into (or as) the --out file


def test_calibrate_error_never_turns_the_out_file_into_a_folder(stubbed: Path, cli) -> None:
    target = stubbed / "tol.json"
    code, _, err = cli(["calibrate", "flux-tiny", "--out", str(target)])
    assert_one_line_error(code, err, "reached the heavy entry point")
    assert not target.exists()


# ---- output folders ---------------------------------------------------------------------------------------------

def test_run_out_is_a_file(stubbed: Path, cli) -> None:
    target = stubbed / "report"
    target.write_text("keep")
    code, _, err = cli(["run", "flux-tiny", "--out", str(target)])
    assert_one_line_error(code, err, "exists and is not a folder")
    assert target.read_text() == "keep"


def test_run_out_below_a_file(stubbed: Path, cli) -> None:
    blocker = stubbed / "file"
    blocker.write_text("x")
    code, _, err = cli(["run", "flux-tiny", "--out", str(blocker / "sub" / "dir")])
    assert_one_line_error(code, err, "cannot create the folder")
    assert blocker.read_text() == "x"


def test_run_out_with_nul(stubbed: Path, cli) -> None:
    code, _, err = cli(["run", "flux-tiny", "--out", "a\0b"])
    assert_one_line_error(code, err, "cannot create the folder")


def test_run_out_not_writable(stubbed: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only folder (root ignores permission bits, so the access check itself is made to say no)."""
    import harness.cli.common

    target = stubbed / "ro"
    target.mkdir()
    monkeypatch.setattr(harness.cli.common.os, "access", lambda path, mode: Path(path) != target)
    code, _, err = cli(["run", "flux-tiny", "--out", str(target)])
    assert_one_line_error(code, err, "the folder is not writable")


# ---- the other subcommands --------------------------------------------------------------------------------------

OTHER_ARGV = {
    "no-command": ([], None),
    "bogus-command": (["bogus"], "invalid choice"),
    "list-extra": (["list", "extra"], "unrecognized arguments"),
    "compare-missing": (["compare", "nope-a", "nope-b", "--out", "o"], "trace file not found"),
    "compare-no-out": (["compare", "a", "b"], "the following arguments are required: --out"),
    "compare-dir": ([".", ".", "--out", "o"], None),
    "noise-missing": (["noise", "nope.png"], "no such file or folder"),
    "noise-nul": (["noise", "a\0b.png"], "no such file or folder"),
    "noise-range": (["noise", "--range", "0,2", "x.png"], "invalid choice"),
    "faults-unknown-fault": (["faults", "flux-tiny", "--fault", "../../etc"], "unknown fault(s) ../../etc"),
    "faults-json-folder": (["faults", "flux-tiny", "--json", "."], "cannot write a file there"),
    "golden-no-action": (["golden"], None),
    "golden-list-file-root": (["golden", "list", "--golden-dir", "/etc/passwd"], None),
    "gate-unknown-model": (["gate", "../../etc", "--no-run"], None),
}


@pytest.mark.parametrize("name", list(OTHER_ARGV))
def test_other_subcommands(name: str, stubbed: Path, cli) -> None:
    argv, needle = OTHER_ARGV[name]
    if name == "compare-dir":
        argv = ["compare", *argv]
    with fails_fast():
        code, out, err = cli(argv)
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.isprintable() or all(line.isprintable() for line in err.splitlines()), err
    if needle is not None:
        assert_one_line_error(code, err, needle)
    else:
        assert code in (0, 1, 2), (code, err)


# ---- property-based: random argument vectors --------------------------------------------------------------------

_VALUES = st.one_of(
    st.sampled_from(["-1", "0", "1", "3", "64", "nan", "inf", "-inf", "1e9", "10000000", str(2**64), "9" * 50,
                     "flux-tiny", "flux-digits", "../x", "/etc/passwd", "/etc/passwd/x", "\x1b[31m", "a\nb", "",
                     "fp16", "fp32", "bf16", "cuda", "cpu", "64x64", "0x0", "-5x5", "10000000x10000000", "a\0b",
                     "x" * 300, "0,1", "auto"]),
    st.text(max_size=8),
)
_FLAGS = st.sampled_from(["--seed", "--steps", "--height", "--width", "--frames", "--guidance", "--true-cfg",
                          "--dtype", "--device", "--out", "--model", "--prompt", "--negative-prompt", "--no-forcing",
                          "--no-progress", "--seeds", "--size", "--no-cfg", "--json", "--range", "--images", "--tp",
                          "--sp", "--help"])
_ARGV = st.tuples(st.sampled_from(["run", "compare", "calibrate", "noise", "list", "bogus", "--help"]),
                  st.lists(st.one_of(_FLAGS, _VALUES), max_size=8)).map(lambda t: [t[0], *t[1]])


@HOSTILE
@given(argv=_ARGV)
def test_random_argument_vectors(argv: list[str], stubbed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever the vector: an exit code, at most one error line, printable, never a traceback or an internal
    error, and nothing written outside the temporary folder."""
    from hostile_helpers import run_cli

    with fails_fast(seconds=30.0):
        code, _, err = run_cli(argv, capsys)
    assert code in (0, 1, 2), (argv, code, err)
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) <= 1, (argv, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    assert all(line.isprintable() for line in error_lines), (argv, err)
    if code == 2 and error_lines:
        assert error_lines[0].startswith(("diffparity", "usage")), (argv, err)


# ---- the bounds themselves, and the one-line printer -----------------------------------------------------------

@HOSTILE
@given(height=st.integers(-5, 20_000), width=st.integers(-5, 20_000), steps=st.integers(-5, 2000),
       seed=st.integers(-5, 2**65))
def test_request_limits_accept_exactly_the_documented_range(height: int, width: int, steps: int, seed: int) -> None:
    ok = 1 <= height <= 8192 and 1 <= width <= 8192 and 1 <= steps <= 1000 and 0 <= seed <= 2**64 - 1
    try:
        check_request_limits(height=height, width=width, steps=steps, seed=seed)
    except RequestError as exc:
        assert not ok and "\n" not in str(exc)
    else:
        assert ok


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "3", None, True])
def test_request_limits_refuse_non_numbers(value: object) -> None:
    with pytest.raises(RequestError, match="guidance_scale must be a finite number"):
        check_request_limits(height=64, width=64, steps=1, seed=0, guidance_scale=value)


@HOSTILE
@given(text=st.text())
def test_one_line_is_one_printable_line(text: str) -> None:
    shown = one_line(text)
    assert shown.isprintable() and "\n" not in shown
    assert one_line(shown) == shown
