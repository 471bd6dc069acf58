"""pytest plugin behind the CI suites (`-p ci.pytest_plugin`).

Options: `--suite NAME` keeps one suite's tests (duplicated coverage removed); `--partition K/N` keeps the
K-th of N runtime-balanced partitions (durations from `--durations-file`); `--execution-report PATH` writes a
JSON record per test (outcome, duration, attempts, first divergence, infrastructure failure);
`--record-durations PATH` stores measured durations for later balancing; `--infra-retries N` reruns a test
whose failure is infrastructure (out of memory, timeout), never one that failed on accuracy.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

from ci.partition import partition
from ci.suites import select

DEFAULT_DURATIONS = Path(__file__).with_name("durations.json")
INFRA_TYPES: tuple[type[BaseException], ...] = (MemoryError, TimeoutError, subprocess.TimeoutExpired)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ci suites")
    group.addoption("--suite", help="keep only this suite's tests (cpu, gpu-1, gpu-2, gpu-4)")
    group.addoption("--partition", help="K/N: keep the K-th (1-based) of N runtime-balanced partitions")
    group.addoption("--durations-file", type=Path, default=DEFAULT_DURATIONS, help="measured durations (JSON)")
    group.addoption("--execution-report", type=Path, help="write a JSON execution report here")
    group.addoption("--record-durations", type=Path, help="merge this run's measured durations into this JSON")
    group.addoption("--infra-retries", type=int, default=1, help="reruns of a test failing on infrastructure")


def parse_partition(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--partition must look like K/N, got '{text}'") from None
    if not 1 <= index <= count:
        raise pytest.UsageError(f"--partition {text}: K must be within 1..N")
    return index, count


def load_durations(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise pytest.UsageError(f"{path} is not a durations JSON file ({exc})") from None
    return {str(k): float(v) for k, v in data.items()}


def estimated_durations(node_ids: list[str], measured: dict[str, float]) -> dict[str, float]:
    """Measured seconds per test; a test never measured counts as the median of those that were."""
    default = statistics.median(measured.values()) if measured else 1.0
    return {node_id: measured.get(node_id, default) for node_id in node_ids}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    suite = config.getoption("--suite")
    spec = config.getoption("--partition")
    dropped: list[pytest.Item] = []
    kept = list(items)
    if suite:
        kept, dropped = select(kept, suite)
    if spec:
        index, count = parse_partition(spec)
        durations = estimated_durations([i.nodeid for i in kept], load_durations(config.getoption("--durations-file")))
        chosen = set(partition(durations, count)[index - 1])
        dropped += [i for i in kept if i.nodeid not in chosen]
        kept = [i for i in kept if i.nodeid in chosen]
    if suite:
        kept = longest_first(kept, load_durations(config.getoption("--durations-file")))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def longest_first(items: list[pytest.Item], measured: dict[str, float]) -> list[pytest.Item]:
    """`items` module by module, the modules by their recorded total duration, longest first; within a module the
    collection order stays. xdist hands out whole modules (`--dist loadscope`, ci/runner.py), so the long modules
    start first and the short ones fill in the end (no worker left running a 60 s module after the other one
    finished), while a module's own fixtures are still set up once per worker."""
    durations = estimated_durations([i.nodeid for i in items], measured)
    totals: dict[str, float] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        totals[module] = totals.get(module, 0.0) + durations[item.nodeid]
    return sorted(items, key=lambda item: -totals[item.nodeid.split("::")[0]])


def is_infra_failure(excinfo: pytest.ExceptionInfo[BaseException] | None) -> bool:
    """Out of memory or a timeout: the machine failed, not the numbers."""
    if excinfo is None:
        return False
    if isinstance(excinfo.value, INFRA_TYPES):
        return True
    name = type(excinfo.value).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(excinfo.value).lower()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.failed and is_infra_failure(call.excinfo):
        report.user_properties.append(("infra_failure", True))


def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Run a test, rerunning it (at most --infra-retries times) only while it fails on infrastructure."""
    retries = item.config.getoption("--infra-retries")
    if retries <= 0:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    attempt = 0
    while True:
        attempt += 1
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        infra = any(r.failed and ("infra_failure", True) in r.user_properties for r in reports)
        if not infra or attempt > retries:
            break
    for report in reports:
        report.user_properties.append(("attempts", attempt))
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


class ExecutionRecorder:
    """Registered as a plugin object: collects one entry per test from the reports and writes them at the end.

    Reports reach the controller under xdist, so this works with `-n`; workers write nothing.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tests: dict[str, dict[str, Any]] = {}
        self.started = time.time()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.tests.setdefault(
            report.nodeid, {"case": report.nodeid, "outcome": "passed", "duration_s": 0.0, "attempts": 1,
                            "first_divergence": None, "infra_failure": False}
        )
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 3)
        properties = dict(report.user_properties)
        entry["attempts"] = max(entry["attempts"], int(properties.get("attempts", 1)))
        if "first_divergence" in properties:
            entry["first_divergence"] = properties["first_divergence"]
        if properties.get("infra_failure"):
            entry["infra_failure"] = True
        if report.failed:
            entry["outcome"] = "error" if report.when != "call" else "failed"
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(self.config, "workerinput"):  # xdist worker: the controller writes
            return
        tests = sorted(self.tests.values(), key=lambda t: t["case"])
        report_path = self.config.getoption("--execution-report")
        if report_path:
            write_json_atomic(report_path, {
                "suite": self.config.getoption("--suite") or "all",
                "partition": self.config.getoption("--partition"),
                "exit_status": int(exitstatus),
                "wall_s": round(time.time() - self.started, 3),
                "total_test_s": round(sum(t["duration_s"] for t in tests), 3),
                "counts": {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "error", "skipped")},
                "tests": tests,
            })
        durations_path = self.config.getoption("--record-durations")
        if durations_path:
            merged = load_durations(durations_path)
            merged.update({t["case"]: t["duration_s"] for t in tests if t["outcome"] in ("passed", "failed")})
            write_json_atomic(durations_path, dict(sorted(merged.items())))


# A test process holds torch, Diffusers and transformers: every automatic full garbage collection walks all of
# their long-lived objects (~0.13 s each, ~20 per minute of tests). Gen-1 collections between full ones: 10 by
# default, 100 here. Measured on 238 parity tests in one process: full collections 4.0 -> 2.2 s of 62 s of CPU,
# peak RSS unchanged (748 vs 751 MB). A model held by a cycle is still collected at once (harness/release.py).
FULL_COLLECTION_EVERY = 100


def pytest_configure(config: pytest.Config) -> None:
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    config.addinivalue_line("markers", "gpu(n): needs n CUDA GPUs (suite gpu-n)")
    config.addinivalue_line("markers", "covers(model, topology): what a case covers, for de-duplication")
    if config.getoption("--execution-report") or config.getoption("--record-durations"):
        config.pluginmanager.register(ExecutionRecorder(config), "ci-execution-recorder")


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)
