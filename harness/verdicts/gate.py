"""The model-addition gate: what every model in the native registry must have before it counts as supported.

Per registry entry (its `family`, native_models/registry.py) the gate checks, and prints as a checklist:
0. todo blocks   no `TODO(scaffold:ID)` block of `diffparity scaffold` is left in the family's files (its pipeline
                 module, references/<family>/, its case file): each one left is named with file:line;
1. case file     `cases/test_<family>.py` exists;
2. cases         at least one `Case` declares the family (references/<family>/cases.py, `register_case`);
3. tiny builder  every case's `build_checkpoint` builds (or finds) its checkpoint offline, and the native
                 runtime resolves that checkpoint to this family's registry entry;
4. golden (cpu)  every case has a readable, uncorrupted fp32 golden for the `cpu` device class;
5. parity        every CPU golden of every case verifies (`verify_golden`: the native side against the golden);
6. not noise     the native output of every case that expects a picture (trained or real weights,
                 `Case.expects_picture`) is not flagged by harness/noise/detector.py, nor its decode/latents by the
                 latent check where the case names a signature (harness/run/latent_noise.py); n/a when none;
7. multi-rank    when the family's DiT class declares parallel plans (`_tp_plan` / `_sp_plan`), a test marked
                 `@pytest.mark.covers("<family>", "<topology of more than one rank>")` exists, and the first case's
                 fp32 golden verifies on ranks (tp2 x sp2, or the plans' own topology; harness/golden/
                 verify_ranks.py): against the golden and against check 5's single-rank run of it, neither of
                 which runs again; with `run_tests`, the marked tests also run and pass (a pytest subprocess,
                 which runs Diffusers again); n/a without plans.
Every native run of the gate is on one intra-op thread on the CPU, as goldens are recorded (RECORD_THREADS).
A check is ok, n/a, missing or failed; the gate passes when every check of every model is ok or n/a.
Goldens of cases that no longer exist, and stray files under golden/, are reported as unused (not a failure).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

    from harness.golden.verify import VerifyResult
    from harness.run.cases import Case
    from native_models.registry import ConfigEntry

ROOT = Path(__file__).resolve().parents[2]  # the repository
CASES_DIR = ROOT / "cases"
TEST_DIRS = (ROOT / "tests", ROOT / "cases")
GATE_DTYPE = "fp32"  # the golden every case must have on the CPU class; other dtypes are verified when present
SINGLE_RANK_TOPOLOGIES = {"1x1", "1", "single"}
OK, NA, MISSING, FAILED = "ok", "n/a", "missing", "failed"


class GateError(Exception):
    """The gate was asked about a model the registry does not have."""


@dataclass
class Check:
    name: str
    status: str  # ok, n/a, missing, failed
    detail: str

    @property
    def passed(self) -> bool:
        return self.status in (OK, NA)


@dataclass
class ModelChecklist:
    family: str
    config: str  # the registry entry's PipelineConfig class, module-qualified
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def missing(self) -> list[str]:
        return [check.name for check in self.checks if not check.passed]


@dataclass
class GateReport:
    models: list[ModelChecklist]
    unused: list[str] = field(default_factory=list)  # goldens of unknown cases, stray files
    orphan_cases: list[str] = field(default_factory=list)  # cases whose family no registry entry has

    @property
    def passed(self) -> bool:
        return bool(self.models) and all(model.passed for model in self.models)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "models": [{**asdict(m), "passed": m.passed} for m in self.models],
                "unused": self.unused, "orphan_cases": self.orphan_cases}

    def format(self) -> str:
        lines: list[str] = []
        for model in self.models:
            lines.append(f"{model.family}  ({model.config})")
            for check in model.checks:
                lines.append(f"  {check.status:<8} {check.name:<13} {check.detail}")
        for path in self.unused:
            lines.append(f"unused golden: {path}")
        for case in self.orphan_cases:
            lines.append(f"case without a registered model: {case}")
        if self.passed:
            lines.append(f"gate: PASS ({len(self.models)} model{'s' if len(self.models) != 1 else ''})")
        elif not self.models:
            lines.append("gate: FAIL: no registered model to check")
        else:
            failing = [f"{m.family} ({', '.join(m.missing())})" for m in self.models if not m.passed]
            lines.append(f"gate: FAIL: {'; '.join(failing)}")
        return "\n".join(lines)


def registry_entries() -> list[ConfigEntry]:
    """Every registry entry, after importing every pipeline module (each registers its family at import)."""
    from native_models.pipeline import discover_pipelines
    from native_models.registry import registered_configs

    discover_pipelines()
    return registered_configs()


def case_file(family: str, cases_dir: Path = CASES_DIR) -> Path:
    return cases_dir / f"test_{family.replace('-', '_')}.py"


def is_multi_rank(topology: str) -> bool:
    """'tp2', 'sp2', 'tp2-sp2', '2x1': more than one rank; '1x1', '1', 'single': one."""
    if topology in SINGLE_RANK_TOPOLOGIES:
        return False
    numbers = [int(n) for n in re.findall(r"\d+", topology)]
    return not numbers or math.prod(numbers) > 1


def check_models(models: list[str] | None = None, cases_dir: Path = CASES_DIR, golden_root: Path | None = None,
                 test_dirs: tuple[Path, ...] = TEST_DIRS, run: bool = True,
                 progress: Callable[[str], None] | None = None, run_tests: bool = False) -> GateReport:
    """The checklist of every registered model (or of `models`). `run=False` checks files only (no builds,
    no parity, no multi-rank run): those checks then read 'not run'. The gate works offline. `progress` hears
    each model and check as it starts. `run_tests`: the multi-rank check also runs the marked tests."""
    from harness.environment import intra_op_threads
    from harness.golden.record import RECORD_THREADS
    from harness.golden.store import scan_goldens
    from harness.run.cases import CASES

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    entries = registry_entries()
    families = [entry.family for entry in entries]
    if models:
        unknown = sorted(set(models) - set(families))
        if unknown:
            raise GateError(f"no registered model named {', '.join(unknown)}; registered: {', '.join(families)}")
        entries = [entry for entry in entries if entry.family in models]
    with intra_op_threads(RECORD_THREADS):  # as goldens are recorded: the same bits, and no thread contention
        report = GateReport([check_model(entry, cases_dir, golden_root, test_dirs, run, progress, run_tests)
                             for entry in entries])
    found, strays = scan_goldens(golden_root)
    report.unused = [str(f.path) for f in found if f.case not in CASES] + [str(p) for p in strays]
    report.orphan_cases = sorted(name for name, case in CASES.items() if case.family not in families)
    return report


def check_model(entry: ConfigEntry, cases_dir: Path = CASES_DIR, golden_root: Path | None = None,
                test_dirs: tuple[Path, ...] = TEST_DIRS, run: bool = True,
                progress: Callable[[str], None] | None = None, run_tests: bool = False) -> ModelChecklist:
    from harness.run.cases import cases_for_family

    family = entry.family
    say = progress or (lambda text: None)
    config = f"{entry.pipeline_config_cls.__module__}.{entry.pipeline_config_cls.__qualname__}"
    checklist = ModelChecklist(family, config)
    checks = checklist.checks
    path = case_file(family, cases_dir)
    checks.append(_check_todo_blocks(entry, path))
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    checks.append(Check("case file", OK, str(shown)) if path.is_file()
                  else Check("case file", MISSING, f"no {shown}: add the family's parity tests there"))
    cases = cases_for_family(family)
    if not cases:
        checks.append(Check("cases", MISSING, f"no Case with family '{family}' (references/{family}/cases.py, "
                                               "register_case)"))
        for name in ("tiny builder", "golden (cpu)", "parity", "not noise", "multi-rank"):
            checks.append(Check(name, MISSING, "no case"))
        return checklist
    checks.append(Check("cases", OK, ", ".join(case.name for case in cases)))
    say(f"{family}: tiny builder (each case's checkpoint, built once then cached)")
    checkpoints = _check_builders(entry, cases, checks, run)
    goldens = _check_goldens(cases, checks, golden_root)
    say(f"{family}: parity (every CPU golden verified by the native side)")
    results = _check_parity(cases, goldens, checkpoints, checks, golden_root, run)
    _check_noise(cases, results, checks)
    say(f"{family}: multi-rank (when plans exist: the fp32 golden verified on ranks"
        + (", then the tests marked covers(...) in a pytest subprocess)" if run_tests else ")"))
    _check_multi_rank(family, cases, checkpoints, checks, test_dirs, run, results, run_tests)
    return checklist


def family_files(entry: ConfigEntry, case_path: Path) -> list[Path]:
    """The files a family's TODO blocks can be in: its pipeline module, references/<family>/*.py, its case file."""
    import inspect

    files = []
    with contextlib.suppress(TypeError, OSError):
        files.append(Path(inspect.getsourcefile(entry.pipeline_config_cls) or ""))
    files += sorted((ROOT / "references" / entry.family).glob("*.py"))
    return [*files, case_path]


def _check_todo_blocks(entry: ConfigEntry, case_path: Path) -> Check:
    from harness.scaffold.markers import todo_blocks
    from harness.scaffold.templates import BLOCKS

    order = list(BLOCKS)  # the order of docs/adding-a-model.md
    left = sorted(todo_blocks(family_files(entry, case_path)),
                  key=lambda block: order.index(block.id) if block.id in order else len(order))
    if not left:
        return Check("todo blocks", OK, "no TODO(scaffold:...) block left")
    named = ", ".join(f"{block.id} ({block.where(ROOT)})" for block in left)
    return Check("todo blocks", MISSING, f"{len(left)} left, see docs/adding-a-model.md: {named}")


def _one_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _check_builders(entry: ConfigEntry, cases: list[Case], checks: list[Check], run: bool) -> dict[str, Path]:
    """Build every case's checkpoint; each must resolve to this registry entry."""
    from native_models.pipeline import pipeline_class_for
    from native_models.registry import get_configs

    if not run:
        checks.append(Check("tiny builder", MISSING, "not run (--no-run)"))
        return {}
    built: dict[str, Path] = {}
    problems: list[str] = []
    for case in cases:
        try:
            checkpoint = case.build_checkpoint()
            pipeline_cls = pipeline_class_for(checkpoint)
            resolved = get_configs(str(checkpoint), pipeline_cls.pipeline_name)
        except Exception as exc:  # noqa: BLE001 - any failure of a builder is the gate's finding, in one line
            problems.append(f"{case.name}: {_one_line(exc)}")
            continue
        if resolved.pipeline_config_cls is not entry.pipeline_config_cls:
            problems.append(f"{case.name}: its checkpoint resolves to family '{resolved.family}', not '{entry.family}'")
            continue
        built[case.name] = checkpoint
    if problems:
        checks.append(Check("tiny builder", FAILED, "; ".join(problems)))
    else:
        checks.append(Check("tiny builder", OK, "; ".join(f"{name} -> {path.name}" for name, path in built.items())))
    return built


def _check_goldens(cases: list[Case], checks: list[Check], golden_root: Path | None) -> dict[str, list[str]]:
    """case -> the dtypes with a usable CPU golden; every case needs the fp32 one."""
    from harness.golden.errors import GoldenError, GoldenMissing
    from harness.golden.store import scan_goldens
    from harness.golden.verify import load_golden_for

    found, _ = scan_goldens(golden_root)
    usable: dict[str, list[str]] = {}
    problems: list[str] = []
    for case in cases:
        dtypes = sorted({f.dtype for f in found if f.case == case.name and f.kind == "golden"
                         and f.device_class == "cpu"} | {GATE_DTYPE})
        for dtype in dtypes:
            try:
                golden = load_golden_for(case, dtype, "cpu", golden_root)
            except GoldenMissing:
                problems.append(f"{case.name}: no {dtype} golden for the cpu class (diffparity golden record "
                                f"{case.name} && diffparity golden promote {case.name})")
                continue
            except GoldenError as exc:
                problems.append(f"{case.name} {dtype}: {_one_line(exc)}")
                continue
            if golden.request() != case.request(dtype=dtype, device="cpu"):
                problems.append(f"{case.name} {dtype}: the golden was recorded for another request than the case's "
                                "default (the case changed): record it again")
                continue
            usable.setdefault(case.name, []).append(dtype)
    detail = "; ".join(f"{name} {' '.join(dtypes)}" for name, dtypes in usable.items())
    if problems:
        checks.append(Check("golden (cpu)", MISSING, "; ".join(problems) + (f" (have: {detail})" if detail else "")))
    else:
        checks.append(Check("golden (cpu)", OK, detail))
    return usable


def _check_parity(cases: list[Case], goldens: dict[str, list[str]], checkpoints: dict[str, Path],
                  checks: list[Check], golden_root: Path | None, run: bool) -> dict[str, VerifyResult]:
    """Verify every usable CPU golden; the fp32 one of each case must exist and pass."""
    from harness.golden.verify import verify_golden

    if not run:
        checks.append(Check("parity", MISSING, "not run (--no-run)"))
        return {}
    results: dict[str, VerifyResult] = {}
    parts: list[str] = []
    failed = False
    for case in cases:
        if case.name not in goldens or case.name not in checkpoints:
            parts.append(f"{case.name}: not run (no golden or no checkpoint)")
            failed = True
            continue
        for dtype in goldens[case.name]:
            try:
                result = verify_golden(case, dtype, "cpu", golden_root, write_obtained=False,
                                       checkpoint=checkpoints[case.name])
            except Exception as exc:  # noqa: BLE001 - reported as this check's failure, in one line
                parts.append(f"{case.name} {dtype}: error: {_one_line(exc)}")
                failed = True
                continue
            if dtype == GATE_DTYPE:
                results[case.name] = result
            multiples = [r.floor_multiple for r in result.comparison.all_records() if r.floor_multiple is not None]
            worst = f", worst {max(multiples):.2f}x floor" if multiples else ""
            first = result.comparison.first_divergence
            where = "" if first is None else f" at {first.key().name()} ({first.mode})"
            parts.append(f"{case.name} {dtype} {'pass' if result.comparison.passed else 'FAIL'}{where}{worst}")
            failed = failed or not result.comparison.passed
    checks.append(Check("parity", FAILED if failed else OK, "; ".join(parts)))
    return results


def _check_noise(cases: list[Case], results: dict[str, VerifyResult], checks: list[Check]) -> None:
    picture_cases = [case for case in cases if case.expects_picture]
    if not picture_cases:
        checks.append(Check("not noise", NA, "no trained or real-weight case (Case.expects_picture)"))
        return
    parts: list[str] = []
    failed = False
    for case in picture_cases:
        result = results.get(case.name)
        noise = None if result is None else result.report.get("noise")
        if noise is None:
            parts.append(f"{case.name}: not judged (no passing verify run)")
            failed = True
        elif noise["fails_run"]:
            parts.append(f"{case.name}: native output flagged as noise ({noise['native'].get('reason')})")
            failed = True
        else:
            checks_run = [c.get("name") for c in noise["native"].get("checks", [])]
            stats = noise["native"].get("statistics", {})
            small = min(stats.get("height", 0), stats.get("width", 0)) < 64  # judged by the small-frame heads
            how = ("rule checks; the learned check needs 32 px or more" if "decoded_noise" not in checks_run
                   else "rules and learned check" + (" (small-frame model)" if small else ""))
            latent = noise["native"].get("latent")
            if latent is not None:
                how += f"; latent check {latent['verdict']}"
            overruled = noise["native"].get("overruled")
            if overruled:  # harness/noise/overrule.py: the noise_latents head alone, answered by the latents
                how += (f"; image flag by head {overruled['head']} (logit {overruled['logit']:+.1f} >= "
                        f"{overruled['threshold']:+.1f}) overruled: the latents carry the VAE's pattern "
                        f"(pattern_alignment {overruled['pattern_alignment']:+.2f})")
            parts.append(f"{case.name}: native output is a picture ({how})")
    checks.append(Check("not noise", FAILED if failed else OK, "; ".join(parts)))


def parallel_plans(checkpoint: Path) -> list[str]:
    """'Class._tp_plan' / '._sp_plan' of the checkpoint's parallelisable components (the DiT) that declare one."""
    import importlib

    from native_models.components import MODEL_CLASSES
    from native_models.loader import read_model_index
    from native_models.pipeline import pipeline_class_for

    pipeline_cls = pipeline_class_for(checkpoint)
    components = read_model_index(checkpoint)
    declared = []
    for name in getattr(pipeline_cls, "_parallel_modules", ("transformer",)):
        class_name = components.get(name, (None, None))[1]
        if class_name not in MODEL_CLASSES:
            continue
        module_name, class_attr = MODEL_CLASSES[class_name].split(":")
        cls = getattr(importlib.import_module(module_name), class_attr)
        declared += [f"{cls.__name__}.{plan}" for plan in ("_tp_plan", "_sp_plan") if getattr(cls, plan, None)]
    return declared


def _check_multi_rank(family: str, cases: list[Case], checkpoints: dict[str, Path], checks: list[Check],
                      test_dirs: tuple[Path, ...], run: bool, results: dict[str, VerifyResult],
                      run_tests: bool = False) -> None:
    if not run:
        checks.append(Check("multi-rank", MISSING, "not run (--no-run)"))
        return
    checkpoint = next((checkpoints[c.name] for c in cases if c.name in checkpoints), None)
    if checkpoint is None:
        checks.append(Check("multi-rank", MISSING, "no checkpoint to read the DiT class from"))
        return
    plans = parallel_plans(checkpoint)
    if not plans:
        checks.append(Check("multi-rank", NA, "the DiT declares no _tp_plan / _sp_plan"))
        return
    declared = " and ".join(plans)
    if not multi_rank_test_files(family, test_dirs):
        checks.append(Check("multi-rank", MISSING, f"{declared} declared, but no test is marked "
                                                   f"@pytest.mark.covers('{family}', '<topology, e.g. tp2>')"))
        return
    parts = [_verify_on_ranks(cases, checkpoints, results, plans)]
    failed = not parts[0][0]
    if run_tests:
        outcome = run_multi_rank_tests(family, test_dirs)
        summary = ", ".join(f"{n} {k}" for k, n in outcome.items() if n)
        ok = sum(outcome.values()) > 0 and not outcome["failed"] and not outcome["skipped"] and outcome["passed"]
        parts.append((ok, f"multi-rank tests {summary or 'none collected'}"))
        failed = failed or not ok
    checks.append(Check("multi-rank", FAILED if failed else OK, f"{declared}: " + "; ".join(p for _, p in parts)))


def _verify_on_ranks(cases: list[Case], checkpoints: dict[str, Path], results: dict[str, VerifyResult],
                     plans: list[str]) -> tuple[bool, str]:
    """(passed, detail) of the first case's fp32 golden verified on ranks, reusing check 5's single-rank run."""
    from harness.golden.verify_ranks import parallel_topology, verify_golden_on_ranks

    case = next((c for c in cases if c.name in results and c.name in checkpoints), None)
    if case is None:
        return False, "no passing single-rank verification of a golden to compare the ranks with"
    single, checkpoint = results[case.name], checkpoints[case.name]
    try:
        topology = parallel_topology(checkpoint, single, plans)
        if topology is None:
            return False, f"{case.name}: no tp2/sp2 topology fits its model (heads, plans)"
        verified = verify_golden_on_ranks(single, checkpoint, topology)
    except Exception as exc:  # noqa: BLE001 - a failing rank is this check's finding, in one line
        return False, f"{case.name}: error on ranks: {_one_line(exc)}"
    return verified.passed, f"{case.name} {GATE_DTYPE} golden on {verified.summary()}"


class MultiRankSelector:
    """pytest plugin object: keeps the items marked covers(family, multi-rank topology), counts outcomes."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.outcomes = {"passed": 0, "failed": 0, "skipped": 0}

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        def wanted(item: pytest.Item) -> bool:
            return any(len(mark.args) >= 2 and str(mark.args[0]) == self.family and is_multi_rank(str(mark.args[1]))
                       for mark in item.iter_markers("covers"))

        kept = [item for item in items if wanted(item)]
        config.hook.pytest_deselected(items=[item for item in items if not wanted(item)])
        items[:] = kept

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.outcomes[report.outcome] += 1
        elif report.outcome != "passed":  # a skip or an error in setup/teardown
            self.outcomes["failed" if report.failed else "skipped"] += 1

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        print(f"\nMULTI-RANK-OUTCOMES {json.dumps(self.outcomes)}")


def multi_rank_test_files(family: str, test_dirs: tuple[Path, ...]) -> list[Path]:
    """Test files that mention a covers marker naming the family (a cheap text filter before collecting)."""
    pattern = re.compile(r"covers\(\s*['\"]" + re.escape(family) + r"['\"]")
    files = []
    for folder in test_dirs:
        for path in sorted(folder.glob("**/test_*.py")):
            try:
                if pattern.search(path.read_text(errors="replace")):
                    files.append(path)
            except OSError:
                continue
    return files


def run_multi_rank_tests(family: str, test_dirs: tuple[Path, ...] = TEST_DIRS) -> dict[str, int]:
    """Run the family's multi-rank tests in a pytest subprocess; {passed, failed, skipped} counts."""
    files = multi_rank_test_files(family, test_dirs)
    if not files:
        return {"passed": 0, "failed": 0, "skipped": 0}
    code = ("import sys, pytest\nfrom harness.verdicts.gate import MultiRankSelector\n"
            "sys.exit(pytest.main(sys.argv[2:], plugins=[MultiRankSelector(sys.argv[1])]))")
    proc = subprocess.run([sys.executable, "-c", code, family, "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           *map(str, files)], cwd=ROOT, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("MULTI-RANK-OUTCOMES "):
            return json.loads(line.removeprefix("MULTI-RANK-OUTCOMES "))
    return {"passed": 0, "failed": 1, "skipped": 0}  # the subprocess died before reporting
