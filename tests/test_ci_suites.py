"""The CI suite plugin: selection by suite, de-duplication, balanced partitions, retries, execution reports."""

from __future__ import annotations

import json

import pytest

from ci.partition import partition, totals

pytest_plugins = ["pytester"]

SAMPLE = """
import pytest, pathlib

@pytest.mark.covers("flux", "1x1")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_flux(dtype):
    pass

@pytest.mark.covers("flux", "1x1")
@pytest.mark.parametrize("dtype", ["fp32"])
def test_flux_again(dtype):
    pass

@pytest.mark.gpu(1)
def test_on_one_gpu():
    pass

@pytest.mark.gpu(2)
def test_on_two_gpus():
    pass

def test_flaky_machine():
    marker = pathlib.Path(__file__).parent / "oom-once"
    if not marker.exists():
        marker.write_text("x")
        raise MemoryError("simulated out of memory")

def test_accuracy_failure(record_property):
    record_property("first_divergence", {"stage": "denoise", "field": "latents", "step": 0})
    assert False, "rel_l2 too large"
"""


def test_lpt_partition_balances_and_covers_everything() -> None:
    durations = {f"t{i}": float(d) for i, d in enumerate([9, 7, 6, 5, 4, 3, 2, 2, 1, 1])}
    parts = partition(durations, 2)
    assert sorted(t for part in parts for t in part) == sorted(durations)
    low, high = sorted(totals(parts, durations))
    assert high - low <= 1.0


def test_partition_rejects_zero() -> None:
    with pytest.raises(ValueError, match="partition count"):
        partition({"a": 1.0}, 0)


def run_sample(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    pytester.makepyfile(test_sample=SAMPLE)
    report = pytester.path / "exec.json"
    result = pytester.runpytest("-p", "ci.pytest_plugin", "--execution-report", str(report), *args)
    return result, json.loads(report.read_text())


def test_cpu_suite_dedupes_retries_infra_and_reports(pytester: pytest.Pytester) -> None:
    result, report = run_sample(pytester, "--suite", "cpu")
    tests = {t["case"].split("::")[1]: t for t in report["tests"]}
    # gpu tests are not in the cpu suite; test_flux_again[fp32] duplicates test_flux[fp32] coverage
    assert set(tests) == {"test_flux[fp32]", "test_flux[bf16]", "test_flaky_machine", "test_accuracy_failure"}
    assert tests["test_flaky_machine"]["outcome"] == "passed" and tests["test_flaky_machine"]["attempts"] == 2
    failure = tests["test_accuracy_failure"]
    assert failure["outcome"] == "failed" and failure["attempts"] == 1 and not failure["infra_failure"]
    assert failure["first_divergence"] == {"stage": "denoise", "field": "latents", "step": 0}
    assert result.ret == 1


def test_gpu_suites_select_by_marker(pytester: pytest.Pytester) -> None:
    _, report = run_sample(pytester, "--suite", "gpu-2")
    assert [t["case"].split("::")[1] for t in report["tests"]] == ["test_on_two_gpus"]


def test_infra_failure_reported_when_retries_exhausted(pytester: pytest.Pytester) -> None:
    _, report = run_sample(pytester, "--suite", "cpu", "--infra-retries", "0", "-k", "flaky")
    (entry,) = report["tests"]
    assert entry["outcome"] == "failed" and entry["infra_failure"] is True


def test_partitions_are_disjoint_and_complete(pytester: pytest.Pytester) -> None:
    seen = []
    for k in (1, 2):
        _, report = run_sample(pytester, "--suite", "cpu", "--partition", f"{k}/2", "-k", "not flaky")
        seen.append({t["case"] for t in report["tests"]})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 3


SECOND_MODULE = """
def test_long():
    pass

def test_short():
    pass
"""


def test_a_suite_runs_its_longest_modules_first(pytester: pytest.Pytester) -> None:
    """Recorded durations order the suite module by module (a test never measured counts as the median of those
    that were), each module keeping its own order, so xdist hands out the long modules first; without --suite the
    collection order stays."""
    pytester.makepyfile(test_sample=SAMPLE, test_second=SECOND_MODULE)
    durations = pytester.path / "durations.json"
    durations.write_text(json.dumps({"test_sample.py::test_flux[bf16]": 2.0, "test_sample.py::test_flaky_machine": 0.1,
                                     "test_sample.py::test_accuracy_failure": 1.0,
                                     "test_second.py::test_long": 9.0, "test_second.py::test_short": 0.5}))

    def order(*args: str) -> list[str]:
        result = pytester.runpytest("-p", "ci.pytest_plugin", "--collect-only", "-q", *args)
        return [line for line in result.outlines if "::" in line]

    # test_second.py: 9.5 s; test_sample.py: 2.0 + 1.0 (median, test_flux[fp32]) + 0.1 + 1.0 = 4.1 s
    assert order("--suite", "cpu", "--durations-file", str(durations)) == [
        "test_second.py::test_long", "test_second.py::test_short", "test_sample.py::test_flux[fp32]",
        "test_sample.py::test_flux[bf16]", "test_sample.py::test_flaky_machine",
        "test_sample.py::test_accuracy_failure"]
    durations.write_text(json.dumps({"test_sample.py::test_flaky_machine": 30.0, "test_second.py::test_long": 1.0}))
    assert order("--suite", "cpu", "--durations-file", str(durations))[0].startswith("test_sample.py::")
    assert order()[0] == "test_sample.py::test_flux[fp32]"
