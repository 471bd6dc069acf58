"""Score and list the mutants of a finished `mutmut run` (scripts/mutation.sh); optionally measure survivors.

    python -m scripts.mutation_report                 # score, killing tests, surviving mutants (file:line, change)
    python -m scripts.mutation_report --measure       # + run each survivor through the parity requests below
    python -m scripts.mutation_report --json FILE     # the same as JSON (written atomically)

Measuring a survivor applies it (mutmut's trampolines: MUTANT_UNDER_TEST=<name> in the mutated copy under
mutants/) and runs the native side of each measurement request against a Diffusers reference recorded once
(the reference never runs native code, so one recording serves every mutant). It reports, per survivor, the
worst record as a multiple of its calibrated threshold (rel_l2 / threshold; a kill needs > 1) and how far the
mutant moves the native output at all (max rel_l2 between the mutated and the unmutated native trace over every
record; 0.0 means bit-identical). docs/mutation-report.md classifies the survivors from these figures.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scripts.mutation_classes import classify

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
KILL_LOG = MUTANTS / "killed_by.tsv"

# Measurement requests (flux-tiny overrides): the pipeline cases of the killing selection in pyproject's
# [tool.mutmut], i.e. cases/test_flux.py's true-CFG case, then cases/test_flux_mutation_guard.GUARD_REQUESTS
# (added at run time).
MEASURE_REQUESTS: dict[str, dict[str, Any]] = {
    "fp32-cfg-48x80": {"negative_prompt": "blurry low quality", "true_cfg_scale": 2.5, "height": 48, "width": 80},
}
# scripts/mutation.sh copies the mutated files here before mutmut runs: line numbers refer to this snapshot,
# even when the working tree has moved on since.
SNAPSHOT = MUTANTS / "source-snapshot"


class ReportError(Exception):
    """No mutmut results to read, or a results file that does not parse."""


@dataclass
class Survivor:
    name: str  # mutmut's key: module.x_function__mutmut_N or module.xǁClassǁmethod__mutmut_N
    path: str
    line: int | None
    removed: list[str]
    added: list[str]
    measured: dict[str, Any] = field(default_factory=dict)
    cls: str = ""
    reason: str = ""

    @property
    def short(self) -> str:
        """The key without the module path, as the report table shows it."""
        return self.name.rpartition(".")[2]


def mutmut_config() -> dict[str, Any]:
    import tomllib  # Python 3.11+, as mutmut 3 itself needs

    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["tool"]["mutmut"]


def load_results() -> dict[str, dict[str, int | None]]:
    """{source path: {mutant key: exit code}} for every mutated file (mutants/<path>.meta)."""
    results: dict[str, dict[str, int | None]] = {}
    for path in mutmut_config()["only_mutate"]:
        meta = MUTANTS / f"{path}.meta"
        if not meta.is_file():
            raise ReportError(f"{meta} missing: run scripts/mutation.sh first")
        try:
            results[path] = json.loads(meta.read_text())["exit_code_by_key"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ReportError(f"{meta}: not a mutmut results file ({exc})") from None
    return results


def status_of(exit_code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[exit_code]


def source_of(path: str) -> str:
    """The mutated file as mutmut saw it (the snapshot), else the working tree's copy."""
    snapshot = SNAPSHOT / path
    return (snapshot if snapshot.is_file() else ROOT / path).read_text()


def _function_def_line(path: str, name: str) -> int | None:
    """Line of `def` of the function or Class.method a mutant key names, in the original source."""
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    func, cls = orig_function_and_class_names_from_key(name)
    tree = ast.parse(source_of(path))
    scopes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls] if cls else [tree]
    for scope in scopes:
        for node in scope.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == func:
                return node.lineno
    return None


def describe(name: str, path: str) -> Survivor:
    """File line and the changed source lines of one mutant, from mutmut's own diff of the function."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(ROOT)  # mutmut reads mutants/<path> relative to the working directory
    try:
        diff = get_diff_for_mutant(name, path=path).splitlines()
    finally:
        os.chdir(cwd)
    removed = [line[1:].strip() for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++")]
    line = None
    def_line = _function_def_line(path, name)
    hunk = next((m for m in map(re.compile(r"^@@ -(\d+)").match, diff) if m), None)
    if removed and hunk and def_line is not None:
        # the diff is of the function alone: the first changed line's index in it approximates its distance from
        # `def` (comments or decorators above the function shift it by a few lines; the text match decides)
        after = diff[diff.index(hunk.string) + 1:]
        offset = int(hunk.group(1)) - 1 + next(i for i, text in enumerate(after) if text[:1] in "-+")
        source = source_of(path).splitlines()
        matches = [i + 1 for i in range(def_line - 1, len(source)) if source[i].strip() == removed[0]]
        line = min(matches, key=lambda n: abs(n - (def_line + offset))) if matches else None
    function_key = name.rpartition(".")[2].partition("__mutmut_")[0]
    cls, reason = classify(function_key, removed, added)
    return Survivor(name, path, line, removed, added, cls=cls, reason=reason)


def killing_tests() -> Counter[str]:
    """Killed mutants per killing test function (parametrisations merged), from the plugin's log."""
    counts: Counter[str] = Counter()
    if KILL_LOG.is_file():
        for row in KILL_LOG.read_text().splitlines():
            parts = row.split("\t")
            if len(parts) == 3:
                counts[parts[1].split("[")[0]] += 1
    return counts


# --- measuring survivors --------------------------------------------------------------------------------------


def _use_mutated_tree() -> None:
    """Import native_models/harness from mutants/ (where the trampolines are), never from the source tree."""
    if not (MUTANTS / "native_models").is_dir():
        raise ReportError("mutants/native_models missing: run scripts/mutation.sh first")
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    sys.path.insert(0, str(MUTANTS))
    if any(name == "native_models" or name.startswith("native_models.") for name in sys.modules):
        raise ReportError("native_models was imported before the mutated tree was put first on sys.path")
    os.chdir(MUTANTS)


def _ratio(record: Any) -> float:
    """A record's error as a multiple of its threshold (> 1 fails)."""
    metric, threshold = record.tolerance["metric"], record.tolerance["threshold"]
    if metric == "cos":
        return (1 - record.metrics["cos"]) / max(1 - threshold, 1e-30)
    return record.metrics[metric] / threshold


def _rel_l2(a: Any, b: Any) -> float:
    import torch

    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    if a64.shape != b64.shape:
        return float("inf")
    denom = b64.norm().item()
    diff = (a64 - b64).norm().item()
    return 0.0 if diff == 0 else (diff / denom if denom else float("inf"))


class Measurer:
    """Runs the native side of each measurement request, unmutated once and then per mutant."""

    def __init__(self, requests: dict[str, dict[str, Any]]) -> None:
        from dataclasses import replace

        from harness.run.cases import get_case
        from harness.trace.memory import Trace

        os.environ["MUTANT_UNDER_TEST"] = ""
        base = get_case("flux-tiny")
        self.cases: dict[str, Any] = {}
        self.requests: dict[str, Any] = {}
        self.baseline: dict[str, dict[str, Any]] = {}
        self.thresholds: dict[str, dict[str, float]] = {}  # per request: record name -> rel_l2 threshold
        self.baseline_worst: dict[str, float] = {}
        for label, overrides in requests.items():
            request = base.request(**overrides)
            recorded = Trace()
            base.run_reference(base.build_checkpoint(), request, recorded, None)

            def replay(checkpoint: Path, req: Any, trace: Any, progress: Any = None, _rec: Any = recorded) -> None:
                trace.meta.update(_rec.meta)
                for key, tensor in _rec.items():
                    trace.record(key.stage, key.field, tensor, key.step)

            self.cases[label] = replace(base, run_reference=replay)
            self.requests[label] = request
            result, self.baseline[label] = self._native(label)
            records = [*result.comparison.records, *result.comparison.forced_records]
            self.thresholds[label] = {
                f"{r.mode}/{r.key().name()}": r.tolerance["threshold"]
                for r in records if r.tolerance["metric"] == "rel_l2"
            }
            self.baseline_worst[label] = max(_ratio(r) for r in records)

    def _native(self, label: str) -> tuple[Any, dict[str, Any]]:
        from harness.run.parity import run_parity

        result = run_parity(self.cases[label], self.requests[label])
        tensors = {f"free/{k.name()}": t for k, t in result.native_trace.items()}
        if result.forced_trace is not None:
            tensors.update({f"forced/{k.name()}": t for k, t in result.forced_trace.items()})
        return result, tensors

    def measure(self, mutant: str) -> dict[str, Any]:
        """Worst record / threshold and the mutant's own effect, per request; errors are reported, not raised."""
        os.environ["MUTANT_UNDER_TEST"] = mutant
        out: dict[str, Any] = {}
        try:
            for label in self.requests:
                try:
                    result, tensors = self._native(label)
                except Exception as exc:  # a survivor that breaks another request is a finding, not a crash
                    out[label] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                    continue
                records = [*result.comparison.records, *result.comparison.forced_records]
                worst = max(records, key=_ratio)
                base = self.baseline[label]
                moved = {key: _rel_l2(tensors[key], base[key]) for key in base if key in tensors}
                missing = sorted(set(base) ^ set(tensors))
                # the mutant's own effect per record, as a multiple of that record's threshold
                limits = self.thresholds[label]
                effect = {key: change / limits[key] for key, change in moved.items() if key in limits}
                top = max(effect, key=effect.get) if effect else None
                out[label] = {
                    "passed": result.passed,
                    "worst_record": f"{worst.mode}:{worst.key().name()}",
                    "worst_rel_l2": worst.metrics.get("rel_l2"),
                    "worst_threshold": worst.tolerance["threshold"],
                    "worst_multiple": _ratio(worst),
                    "baseline_worst_multiple": self.baseline_worst[label],
                    "max_change_vs_unmutated": max(moved.values(), default=0.0),
                    "effect_record": top,
                    "effect_rel_l2": moved[top] if top else 0.0,
                    "effect_threshold": limits[top] if top else None,
                    "effect_multiple": effect[top] if top else 0.0,
                    "records_differing_in_keys": missing,
                }
        finally:
            os.environ["MUTANT_UNDER_TEST"] = ""
        return out


# --- output -----------------------------------------------------------------------------------------------------


def summarise(results: dict[str, dict[str, int | None]]) -> dict[str, Any]:
    statuses = Counter(status_of(code) for keys in results.values() for code in keys.values())
    per_file = {path: dict(Counter(status_of(c) for c in keys.values())) for path, keys in results.items()}
    killed = statuses.get("killed", 0) + statuses.get("timeout", 0) + statuses.get("segfault", 0)
    judged = killed + statuses.get("survived", 0)
    return {
        "total": sum(statuses.values()),
        "statuses": dict(statuses),
        "per_file": per_file,
        "killed": killed,
        "survived": statuses.get("survived", 0),
        "score": killed / judged if judged else None,
    }


def measured_text(survivor: Survivor) -> str:
    """The Measured column: the mutant's own effect on the native run, per measurement request."""
    if not survivor.measured:
        return "not measured"
    errors = [label for label, m in survivor.measured.items() if "error" in m]
    moved = {label: m for label, m in survivor.measured.items() if "error" not in m and m["max_change_vs_unmutated"]}
    parts = [f"{label}: raises" for label in errors]
    for label, m in moved.items():
        parts.append(f"{label}: rel_l2 {m['effect_rel_l2']:.2g} / {m['effect_threshold']:.2g} = "
                     f"{m['effect_multiple']:.2g}x at {m['effect_record']}")
    if not parts:
        return f"bit-identical ({len(survivor.measured)} requests)"
    return "; ".join(parts)


def markdown_table(survivors: list[Survivor]) -> str:
    """The classification table of docs/mutation-report.md."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| mutant | file:line | change | class | measured (mutant vs unmutated native) | why |",
             "|---|---|---|---|---|---|"]
    for s in sorted(survivors, key=lambda s: (s.path, s.line or 0, s.short)):
        change = f"`{' / '.join(s.removed)}` -> `{' / '.join(s.added) or '(deleted)'}`"
        lines.append(f"| {cell(s.short)} | {s.path.rpartition('/')[2]}:{s.line} | {cell(change)} | {s.cls} | "
                     f"{cell(measured_text(s))} | {cell(s.reason)} |")
    return "\n".join(lines) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


def snapshot_sources() -> None:
    """Copy the files mutmut is about to mutate to SNAPSHOT, so the report's line numbers match them."""
    for path in mutmut_config()["only_mutate"]:
        target = SNAPSHOT / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", action="store_true", help="only copy the files to mutate (before mutmut run)")
    parser.add_argument("--measure", action="store_true", help="run every survivor through the parity requests")
    parser.add_argument("--json", type=Path, help="also write summary, kills and survivors to this JSON file")
    parser.add_argument("--only", nargs="+", help="measure and list only these mutants (full or short keys; killed "
                                                 "ones too, e.g. to size a blind spot a guard case now kills)")
    parser.add_argument("--markdown", type=Path, help="write the survivors' classification table (Markdown) here")
    args = parser.parse_args(argv)
    # measuring changes the working directory (to mutants/): resolve output paths first
    args.json = args.json.resolve() if args.json else None
    args.markdown = args.markdown.resolve() if args.markdown else None
    if args.snapshot:
        snapshot_sources()
        return 0
    try:
        results = load_results()
        summary = summarise(results)
        wanted = set(args.only or ())
        survivors = [
            describe(name, path)
            for path, keys in results.items()
            for name, code in keys.items()
            if (name in wanted or name.rpartition(".")[2] in wanted if wanted else status_of(code) == "survived")
        ]
        if args.measure:
            _use_mutated_tree()
            requests = dict(MEASURE_REQUESTS)
            try:
                from cases.test_flux_mutation_guard import GUARD_REQUESTS

                requests.update(GUARD_REQUESTS)
            except ImportError:
                pass
            measurer = Measurer(requests)
            for i, survivor in enumerate(survivors, 1):
                survivor.measured = measurer.measure(survivor.name)
                print(f"  measured {i}/{len(survivors)} {survivor.short}", file=sys.stderr)
    except ReportError as exc:
        print(f"mutation report: {exc}", file=sys.stderr)
        return 2

    score = summary["score"]
    print(f"mutants: {summary['total']}  statuses: {summary['statuses']}")
    print(f"score: {summary['killed']}/{summary['killed'] + summary['survived']} = "
          f"{'n/a' if score is None else f'{100 * score:.1f}%'}")
    for path, counts in summary["per_file"].items():
        print(f"  {path}: {counts}")
    kills = killing_tests()
    if kills:
        print("first failing test per killed mutant:")
        for test, count in kills.most_common():
            print(f"  {count:5d}  {test}")
    title = "requested mutants" if wanted else "survivors"
    print(f"{title} ({len(survivors)}): {dict(Counter(s.cls for s in survivors))}")
    for s in survivors:
        change = " | ".join(s.removed) + "  ->  " + " | ".join(s.added)
        print(f"  {s.short}  {s.path}:{s.line}  {change}  [{s.cls}]")
        for label, m in s.measured.items():
            if "error" in m:
                print(f"      {label}: error {m['error']}")
            else:
                print(f"      {label}: passed {m['passed']}; worst {m['worst_record']} {m['worst_multiple']:.3g}x its "
                      f"threshold (unmutated {m['baseline_worst_multiple']:.3g}x); mutant's own effect: max rel_l2 "
                      f"{m['max_change_vs_unmutated']:.3e}, largest at {m['effect_record']} = "
                      f"{m['effect_multiple']:.3g}x its threshold")
    if args.markdown:
        write_text_atomic(args.markdown, markdown_table(survivors))
    if args.json:
        write_json_atomic(args.json, {"summary": summary, "killing_tests": dict(kills),
                                      "survivors": [asdict(s) for s in survivors]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
