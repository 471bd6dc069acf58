"""Killed, raced and malformed runs (issue 19): each of its twelve repros, as a test.

A run stopped by a signal leaves no process and no hidden folder and never a stale report that reads as
current; every bad checkpoint component, prompt, attention setting, output path or size is named before either
side runs; the disk's refusals are named; the report says what ran. The signal tests start a real `diffparity`
process and send it a real signal (tests/hostile/stop_signals.py); they are marked slow (about 30 s each on
the shared 2-core machine) and run in the CPU suite deliberately: they are the issue's acceptance.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hostile_helpers import assert_one_line_error, fails_fast
from stop_signals import hidden_folders, stop_run

import harness.run.parity
from harness.report import artifacts

ROOT = Path(__file__).resolve().parents[2]


class ReferenceReached(AssertionError):
    """The reference side started: every check that should have refused the run came too late."""


class _RefusingReference:
    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def run(self, reference: object = None) -> None:
        raise ReferenceReached("the reference side was reached")


@pytest.fixture()
def no_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Diffusers side fails the test if a run gets that far."""
    monkeypatch.setattr(harness.run.parity, "ReferenceRunner", _RefusingReference)


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _previous_run(out: Path) -> dict[str, bytes]:
    files = {"report.json": b'{"verdict": "pass"}\n', "report.html": b"<html>old</html>", "native.png": b"png"}
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


# ---- 1 and 7: signals on a multi-rank run, temporary folders ------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("moment", ["start", "ranks-start"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_multi_rank_run_leaves_no_process_no_folder_no_stale_report(signum: int, moment: str,
                                                                              tmp_path: Path) -> None:
    """Issue 19 #1/#6/#7: `run wan-tiny --tp 2 --sp 2` stopped while it imports (1 s in: the signal lands inside
    an import, where raising would break torch) or while its 4 ranks run: 5 s later no process of its session
    is alive (ranks, forkserver, resource tracker), no hidden folder is left, and the earlier run in --out moved
    to previous/ beside an error.json that says which signal stopped it."""
    result = stop_run(["run", "wan-tiny", "--tp", "2", "--sp", "2"], tmp_path / "out", moment, signum)
    assert result.processes_left == [], result
    assert result.hidden_left == [], result
    assert result.exit_code == 2, result
    assert result.stop_s < 5.0, result
    assert result.previous_state == "marked", result
    assert result.error_json["interrupted"] == signal.Signals(signum).name
    assert "Traceback" not in result.stderr_tail and "internal error" not in result.stderr_tail


# SIGTERM arrives (a real signal, sent by the process to itself) while report.html is rendered, in staging
WRITE_AND_DIE = """
import os, signal, sys
import harness.report.artifacts as artifacts
render = artifacts.render_html
def render_and_die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return render(*args, **kwargs)
artifacts.render_html = render_and_die
from harness.cli.main import main
sys.exit(main(["run", "flux-tiny", "--steps", "1", "--height", "32", "--width", "32", "--no-forcing",
               "--no-progress", "--out", sys.argv[1]]))
"""


@pytest.mark.slow
def test_sigterm_while_writing_leaves_no_staging_folder(tmp_path: Path) -> None:
    """Issue 19 #7/#6: SIGTERM while the artifacts are written left `.staging-*` and no marker; now the staging
    folder goes, the earlier run moves to previous/ and error.json says SIGTERM (a real process, a real signal)."""
    out = tmp_path / "out"
    files = _previous_run(out)
    proc = subprocess.run([sys.executable, "-c", WRITE_AND_DIE, str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert hidden_folders(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["error.json", "previous"]
    assert {n: (out / "previous" / n).read_bytes() for n in files} == files
    assert json.loads((out / "error.json").read_text())["interrupted"] == "SIGTERM"
    assert "Traceback" not in proc.stderr


def test_folders_of_killed_runs_are_swept(tmp_path: Path) -> None:
    """Issue 19 #7: `.staging-*` / `.ranks-*` of a run killed outright (SIGKILL: no handler) are removed by the
    next run into the folder; a live owner's folder is left alone."""
    from test_hostile_reports import _result

    from harness.lifetime import owner_pid, temporary_folder_prefix

    dead = _dead_pid()
    stale = [tmp_path / f".staging-{dead}-abc", tmp_path / f".ranks-{dead}-def"]
    live = tmp_path / f"{temporary_folder_prefix('staging')}live"
    for folder in (*stale, live):
        folder.mkdir()
        (folder / "native.safetensors").write_bytes(b"x" * 100)
    artifacts.write_run_artifacts(_result(1.0), tmp_path)
    assert not any(folder.exists() for folder in stale)
    assert live.is_dir() and owner_pid(live.name, "staging") == os.getpid()


def test_a_killed_checkpoint_build_is_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19 #7: a first checkpoint build killed outright leaves `.NAME.PID.xxxx` in the cache; the next
    build removes it, and a build interrupted by a signal removes its own."""
    from harness.lifetime import CommandLifetime, Interrupted
    from references.common.tiny_build import build_once

    final = tmp_path / "checkpoints" / "tiny-x"
    final.parent.mkdir(parents=True)
    stale = final.parent / f".tiny-x.{_dead_pid()}.abcd"
    stale.mkdir()

    def interrupted_build(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted), CommandLifetime():
        build_once(final, interrupted_build)
    assert hidden_folders(final.parent) == []
    assert not final.exists()


# ---- 2, 3: checkpoint components named before either side runs ----------------------------------------------

def _edit_json(path: Path, **changes: object) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


CHECKPOINT_DAMAGE = {
    "tokenizer-json-list": (lambda c: (c / "tokenizer_2" / "tokenizer.json").write_text("[1,2,3]"),
                            "tokenizer_2/tokenizer.json"),
    "tokenizer-json-truncated": (lambda c: (c / "tokenizer_2" / "tokenizer.json").write_bytes(
        (c / "tokenizer_2" / "tokenizer.json").read_bytes()[:200]), "tokenizer_2/tokenizer.json"),
    "vae-latent-channels-8": (lambda c: _edit_json(c / "vae" / "config.json", latent_channels=8), "vae"),
    "vae-latent-channels-0": (lambda c: _edit_json(c / "vae" / "config.json", latent_channels=0), "vae"),
    "library-path": (lambda c: _edit_json(c / "model_index.json", vae=["../../etc", "AutoencoderKL"]),
                     "model_index.json"),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_DAMAGE))
def test_a_broken_component_is_named_before_either_side_runs(name: str, tiny_flux_copy: Path, tmp_path: Path,
                                                            no_reference: None, cli) -> None:
    """Issue 19 #2/#3: a corrupt tokenizer, a config whose shapes disagree with the weights, a library that is a
    path: one line naming the file, exit 2, before the reference side starts."""
    damage, needle = CHECKPOINT_DAMAGE[name]
    damage(tiny_flux_copy)
    with fails_fast(30.0):
        code, _, err = cli(["run", "flux-tiny", "--model", str(tiny_flux_copy), "--steps", "1", "--out",
                            str(tmp_path / "out"), "--no-progress"])
    assert_one_line_error(code, err, needle)


def test_a_wrong_shaped_tensor_is_named_before_either_side_runs(tiny_flux_copy: Path, tmp_path: Path,
                                                              no_reference: None, cli) -> None:
    """Issue 19 #3: one VAE tensor replaced by a tensor of another shape (a valid file): named with its file."""
    from safetensors.torch import load_file, save_file

    weights = next((tiny_flux_copy / "vae").glob("*.safetensors"))
    state = load_file(weights)
    name = next(key for key in sorted(state) if key.endswith("conv_in.weight"))
    state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
    save_file(state, weights)
    code, _, err = cli(["run", "flux-tiny", "--model", str(tiny_flux_copy), "--steps", "1", "--out",
                        str(tmp_path / "out"), "--no-progress"])
    line = assert_one_line_error(code, err, name)
    assert weights.name in line


# ---- 4, 5, 8, 10: request and environment refused up front ---------------------------------------------------

def test_a_prompt_that_is_not_utf8_is_refused_up_front(tmp_path: Path, no_reference: None, cli) -> None:
    """Issue 19 #4: bytes that are not UTF-8 on the command line (`$'a cat \\xff\\xfe'`) arrive as lone
    surrogates; refused as input at once, not a TypeError inside the reference tokenizer."""
    prompt = os.fsdecode(b"a cat \xff\xfe")
    with fails_fast(5.0):
        code, _, err = cli(["run", "flux-tiny", "--prompt", prompt, "--out", str(tmp_path / "out")])
    assert_one_line_error(code, err, "not valid UTF-8")


@pytest.mark.parametrize("value", ["bogus", "flash"])
def test_an_attention_backend_that_cannot_run_is_refused(value: str, tmp_path: Path, no_reference: None,
                                                         monkeypatch: pytest.MonkeyPatch, cli) -> None:
    """Issue 19 #5: DIFFPARITY_ATTENTION=bogus (and =flash without flash-attn) ran SDPA while the report named
    the requested backend; now exit 2 listing the choices."""
    import native_models.attention as attention

    if value == "flash" and attention.flash_attn_available():
        pytest.skip("flash-attn is installed here")
    monkeypatch.setattr(attention, "_selected", value)  # what the module read from the environment at import
    code, _, err = cli(["run", "flux-tiny", "--steps", "1", "--out", str(tmp_path / "out"), "--no-progress"])
    line = assert_one_line_error(code, err, "DIFFPARITY_ATTENTION")
    assert "sdpa" in line and "math" in line


def test_an_out_path_too_long_for_the_artifacts_is_refused_up_front(tmp_path: Path, no_reference: None, cli) -> None:
    """Issue 19 #8: a 4,075-character --out passed mkdir and failed after the whole run."""
    out = tmp_path
    while len(str(out)) < 4075 - 201:
        out = out / ("d" * 200)
    out = out / ("e" * (4075 - len(str(out)) - 1))
    assert len(str(out)) == 4075
    with fails_fast(10.0):
        code, _, err = cli(["run", "flux-tiny", "--out", str(out)])
    assert_one_line_error(code, err, "path limit")


def test_a_size_that_cannot_fit_in_memory_is_refused_before_running(tmp_path: Path, no_reference: None,
                                                                     cli) -> None:
    """Issue 19 #10: 4096x4096 is inside the structural limits but needs far more memory than any machine here
    has (the math kernel's score matrices): refused with the estimate, before the reference starts."""
    with fails_fast(30.0):
        code, _, err = cli(["run", "flux-tiny", "--height", "4096", "--width", "4096", "--steps", "1",
                            "--out", str(tmp_path / "out"), "--no-progress"])
    assert_one_line_error(code, err, "GiB")


def test_a_size_refused_under_a_memory_limit(tmp_path: Path) -> None:
    """Issue 19 #10: 2048x2048 under `ulimit -v` 3 GiB failed allocating 2.2 GB mid-run; now exit 2 at once,
    naming the estimate (a real process with a real address-space limit)."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "flux-tiny", "--height", "2048", "--width",
                           "2048", "--steps", "1", "--out", str(tmp_path / "out"), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, preexec_fn=cap, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "GiB of memory is available")


# ---- 6: a failed run never leaves the previous report looking current ----------------------------------------

def test_a_failed_run_moves_the_previous_run_aside(tmp_path: Path, no_reference: None, cli) -> None:
    """Issue 19 #6: an exit-2 run into a folder holding a passing run left the old report.json (verdict pass)
    beside the new error.json; now the earlier run is in previous/, byte for byte, and error.json names it."""
    out = tmp_path / "out"
    files = _previous_run(out)
    code, _, err = cli(["run", "flux-tiny", "--prompt", os.fsdecode(b"\xff"), "--out", str(out)])
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["error.json", "previous"]
    assert {n: (out / "previous" / n).read_bytes() for n in files} == files
    record = json.loads((out / "error.json").read_text())
    assert record["previous_run"]["folder"] == "previous" and record["interrupted"] is None


def test_compare_into_a_run_folder_leaves_no_mixed_folder(tmp_path: Path, cli) -> None:
    """Issue 19 #6: `compare --out` into a run folder replaced report.json and kept the run's html, md, images
    and traces beside it; now they move to previous/ (the compared traces named there)."""
    from test_hostile_trace import sample_trace

    out = tmp_path / "run"
    files = _previous_run(out)
    sample_trace().save(out / "reference.safetensors")
    sample_trace().save(out / "native.safetensors")
    code, stdout, err = cli(["compare", str(out / "reference.safetensors"), str(out / "native.safetensors"),
                             "--out", str(out)])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["previous", "report.json"]
    assert (out / "previous" / "report.html").read_bytes() == files["report.html"]
    report = json.loads((out / "report.json").read_text())
    assert Path(report["compared_traces"]["reference"]["path"]).is_file()


# ---- 9: concurrent golden promote --------------------------------------------------------------------------

def test_the_loser_of_two_promotions_gets_a_named_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    """Issue 19 #9: two `golden promote --force` at once: the loser printed `internal error: FileNotFoundError`.
    The other promotion is made to win between this one's reading the draft and renaming it."""
    from test_hostile_golden import INFO, _request_fields, sample_trace

    import harness.golden.record as record
    from harness.golden.file_format import write_golden
    from harness.golden.model import golden_from_trace
    from harness.golden.store import golden_path

    info = {**INFO, "request": {k: v for k, v in INFO["request"].items() if k in _request_fields()}}
    for kind in ("golden", "draft"):
        write_golden(golden_from_trace(sample_trace(), info), golden_path("flux-tiny", "fp32", "cpu", tmp_path, kind))
    original = record.largest_change

    def other_promotion_wins(old: object, new: object) -> object:
        os.replace(golden_path("flux-tiny", "fp32", "cpu", tmp_path, "draft"),
                   golden_path("flux-tiny", "fp32", "cpu", tmp_path))
        return original(old, new)

    monkeypatch.setattr(record, "largest_change", other_promotion_wins)
    code, _, err = cli(["golden", "promote", "flux-tiny", "--force", "--golden-dir", str(tmp_path)])
    assert_one_line_error(code, err, "promoted by another process")


# ---- 11: the disk's refusals, NaN frames, modes, escaped paths -----------------------------------------------

@pytest.mark.parametrize("code_name", ["ENOSPC", "EROFS"])
def test_a_full_or_read_only_disk_is_named(code_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           cli) -> None:
    """Issue 19 #11: a full disk or a read-only cache was an 'internal error'; now the file and the reason."""
    number = getattr(errno, code_name)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(number, os.strerror(number), str(tmp_path / "cache" / "checkpoints"))

    monkeypatch.setattr(harness.run.parity, "run_parity", refuse)
    code, _, err = cli(["run", "flux-tiny", "--out", str(tmp_path / "out")])
    line = assert_one_line_error(code, err, os.strerror(number))
    assert "checkpoints" in line


def test_a_read_only_cache_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    """Issue 19 #11: DIFFPARITY_CACHE on a file system that refuses writes (here /sys: EPERM/EROFS even for
    root, who ignores permission bits): one line naming the folder, not an internal error."""
    monkeypatch.setenv("DIFFPARITY_CACHE", "/sys/diffparity-cache")
    code, _, err = cli(["run", "flux-tiny", "--steps", "1", "--out", str(tmp_path / "out"), "--no-progress"])
    assert_one_line_error(code, err, "/sys/diffparity-cache")


def test_nan_frames_print_no_numpy_warning(tmp_path: Path) -> None:
    """Issue 19 #11: a run whose output is NaN printed numpy's 'invalid value encountered in cast'."""
    nan = torch.full((1, 3, 8, 8), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        artifacts.save_side_by_side(nan, torch.rand(1, 3, 8, 8), tmp_path)
        artifacts.frames_to_uint8(torch.full((1, 3, 4, 4), float("inf")))


def test_report_json_has_the_mode_of_the_other_artifacts(tmp_path: Path) -> None:
    """Issue 19 #11: report.json came out 0600 beside 0644 artifacts; every file gets the umask's mode."""
    from test_hostile_reports import _result

    artifacts.write_run_artifacts(_result(1.0), tmp_path)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o666 & ~_umask()}, modes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_newline_in_the_out_path_stays_on_the_report_line(tmp_path: Path, cli) -> None:
    """Issue 19 #11: the `report:` line printed a newline in a path as-is (two lines, the second a fake)."""
    from test_hostile_trace import sample_trace

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sample_trace().save(a)
    sample_trace().save(b)
    out = tmp_path / "x\nreport: /etc/passwd"
    code, stdout, err = cli(["compare", str(a), str(b), "--out", str(out)])
    assert code == 0, err
    lines = [line for line in stdout.splitlines() if line.startswith("report:")]
    assert len(lines) == 1 and "\\n" in lines[0], stdout


# ---- 12: weights stored narrower than the run ----------------------------------------------------------------

def test_the_report_says_weights_were_stored_in_bf16(tiny_flux_copy: Path, tmp_path: Path) -> None:
    """Issue 19 #12: bf16-stored weights run in an fp32 comparison without the report saying so."""
    from safetensors.torch import load_file, save_file

    from harness.run.cases import get_case

    for weights in (tiny_flux_copy / "transformer").glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(weights).items()}, weights)
    case = get_case("flux-tiny")
    request = case.request(steps=1, height=32, width=32)
    result = harness.run.parity.run_parity(case, request, model=str(tiny_flux_copy), forcing=False)
    weights = result.report["weights"]
    assert weights["stored_dtypes"]["transformer"] == ["BF16"] and weights["run_dtype"] == "fp32"
    assert weights["stored_narrower_than_run"] == ["transformer"] and "upcast" in weights["note"]



def _square(value: int) -> int:
    return value * value


def test_ranks_can_start_again_after_a_stopped_command_stopped_the_forkserver(monkeypatch: pytest.MonkeyPatch
                                                                             ) -> None:
    """A stop (or an error unwinding a command) stops every descendant, multiprocessing's forkserver included; a
    process that goes on (a test session, a notebook calling main()) must still launch ranks afterwards. Before
    harness.lifetime.forget_stopped_forkserver, the next launch raised ChildProcessError (waitpid of a reaped pid).
    The two servers here start bare: the ranks' preload, set by an earlier multi-rank test in this worker, would
    cost ~2 s of imports each and plays no part in the stop."""
    import multiprocessing
    from multiprocessing import forkserver

    from harness.lifetime import stop_descendants

    monkeypatch.setattr(forkserver._forkserver, "_preload_modules", [])
    context = multiprocessing.get_context("forkserver")
    with context.Pool(1) as pool:
        assert pool.apply(_square, (3,)) == 9
    assert stop_descendants(grace_s=0.5) >= 1  # the forkserver (and the resource tracker) were running
    with context.Pool(1) as pool:
        assert pool.apply(_square, (4,)) == 16
    stop_descendants(grace_s=0.5)  # leave no forkserver without the ranks' preload to this worker's later tests
