"""The import graph of harness/, native_models/ and references/: no cycles, no family code in the harness, sizes.

The graph is read from the source with `ast` (nothing is imported). Every import counts: module level, inside a
function, and under `if TYPE_CHECKING:` (a cycle that only type hints close is still two modules that cannot be
read apart). `from package import name` is an edge to the submodule `package.name` when there is one, else to
the package; the parent packages Python initialises on the way are not edges (every submodule would otherwise
depend on its package's `__init__`). Run this file directly to print the figures.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "native_models", "references")
MAX_LINES = 500
# harness modules allowed above MAX_LINES because they hold one job (module -> why); keep this short
LARGE_HARNESS_MODULES: dict[str, str] = {}
# Where model knowledge lives: a family's reference package (anything under references/ but the registry line and
# the shared helpers), a native pipeline module, a native model module. Written as rules, so a new family is covered.
FAMILY_NEUTRAL_REFERENCES = ("references", "references.families", "references.common")
FAMILY_NATIVE_PACKAGES = ("native_models.pipelines", "native_models.models")


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imported_names(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Candidate dotted names an import statement reaches (resolved against `module` when relative)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The known modules `module` imports anywhere in its source."""
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        candidates = _imported_names(module, path.name == "__init__.py", node)
        if isinstance(node, ast.ImportFrom):
            # `from pkg import a, b`: each name that is a submodule is an edge to it; the rest come from pkg itself
            submodules = [name for name in candidates[:-1] if name in known]
            candidates = submodules + ([candidates[-1]] if len(submodules) < len(candidates) - 1 else [])
        for name in candidates:
            while name and name not in known:  # `import a.b.c` of a non-module attribute: its longest module
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
    return edges


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    files = module_files(root, packages)
    return {module: imports_of(module, path, set(files)) for module, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted; sorted by first name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_family_code(module: str) -> bool:
    """Model-specific code: references.<family>..., native_models.pipelines.<x>, native_models.models.<x>."""
    if _within(module, "references"):
        return not any(module == p or (p == "references.common" and _within(module, p))
                       for p in FAMILY_NEUTRAL_REFERENCES)
    return any(module.startswith(package + ".") for package in FAMILY_NATIVE_PACKAGES)


def harness_family_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(harness module, family module) for every import of model-specific code from the harness."""
    return sorted((module, target) for module, targets in graph.items() if _within(module, "harness")
                  for target in targets if is_family_code(target))


def line_counts(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, int]:
    return {module: len(path.read_text().splitlines()) for module, path in module_files(root, packages).items()}


def large_modules(counts: dict[str, int], limit: int = MAX_LINES) -> dict[str, int]:
    return {module: lines for module, lines in sorted(counts.items()) if lines > limit}


def declared_families(root: Path = ROOT) -> tuple[str, ...]:
    """FAMILIES of references/families.py, read without importing it."""
    tree = ast.parse((root / "references" / "families.py").read_text())
    for node in tree.body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == "FAMILIES" for t in targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("references/families.py defines no FAMILIES")


# --- the rules, on this repository --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def harness_package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between harness subpackages (harness.run, harness.trace...; a top-level module is its own node)."""
    def node(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if _within(module, "harness") and module != "harness":
            edges.setdefault(node(module), set()).update(
                node(t) for t in targets if _within(t, "harness") and node(t) != node(module))
    return edges


# The harness's layers, lowest first; a subpackage imports only from layers below its own (one list entry may hold
# peers that never import each other). Why each sits where it does:
# - drill (harness/drill/) above run: it re-runs a component of a run (run's cases, native plan and parity
#   extension hook) and compares modules with trace storage and compare's tolerances; below golden and verdicts,
#   which use it (module floors are calibrated in golden, the fault matrix checks each fault's expected module),
#   and cli, which offers it. run reaches it only through `run_parity(extensions=...)`, never by import.
# - progress and scaffold at the bottom: they import nothing from the harness (scaffold's templates are text).
HARNESS_LAYERS: tuple[tuple[str, ...], ...] = (
    ("harness.files", "harness.environment", "harness.families", "harness.progress", "harness.scaffold",
     "harness.lifetime", "harness.release"),
    ("harness.outcome",),
    ("harness.trace",),
    ("harness.compare",),
    ("harness.report", "harness.noise"),
    ("harness.run",),
    ("harness.drill", "harness.bench"),
    ("harness.golden",),
    ("harness.verdicts",),
    ("harness.cli",),
)


def layer_violations(edges: dict[str, set[str]], layers: tuple[tuple[str, ...], ...] = HARNESS_LAYERS
                     ) -> list[tuple[str, str]]:
    """(importer, imported) harness subpackage pairs where the importer is not above the imported."""
    rank = {name: index for index, members in enumerate(layers) for name in members}
    return sorted((a, b) for a, targets in edges.items() for b in targets
                  if a in rank and b in rank and rank[b] >= rank[a] and a != b)


def test_harness_subpackages_form_layers(graph: dict[str, set[str]]) -> None:
    """Data flows one way: outcome -> trace -> compare -> report/noise -> run -> drill/bench -> golden -> verdicts
    -> cli, so each subpackage can be read without the ones above it (no cycle between subpackages either)."""
    edges = harness_package_graph(graph)
    cycles = find_cycles(edges)
    assert not cycles, "harness subpackages import each other: " + "; ".join(" <-> ".join(c) for c in cycles)
    unknown = sorted(set(edges) - {name for members in HARNESS_LAYERS for name in members})
    assert not unknown, f"harness subpackages without a layer in HARNESS_LAYERS: {unknown}"
    violations = layer_violations(edges)
    assert not violations, "harness imports against the layer order: " + ", ".join(f"{a} -> {b}" for a, b in
                                                                                   violations)


def test_a_layer_violation_is_found() -> None:
    assert layer_violations({"harness.run": {"harness.drill"}, "harness.drill": {"harness.run"}}) == [
        ("harness.run", "harness.drill")]


def test_harness_imports_no_family_code(graph: dict[str, set[str]]) -> None:
    found = harness_family_imports(graph)
    assert not found, "harness modules import model-specific code: " + ", ".join(f"{a} -> {b}" for a, b in found)


def test_harness_modules_stay_small() -> None:
    large = {m: n for m, n in large_modules(line_counts(ROOT, ("harness",))).items()
             if m not in LARGE_HARNESS_MODULES}
    assert not large, f"harness modules over {MAX_LINES} lines (split them by job, or list one in " \
                      f"LARGE_HARNESS_MODULES with the reason): {large}"


def test_every_family_package_is_registered() -> None:
    """A folder under references/ other than common/ is a family: listed in FAMILIES, so its cases register."""
    packages = {f"references.{p.name}" for p in (ROOT / "references").iterdir()
                if (p / "__init__.py").is_file() and p.name != "common"}
    assert packages == set(declared_families()), "references/families.py FAMILIES and the family folders differ"


def test_family_code_comes_in_on_first_use_of_a_registry() -> None:
    """Importing the harness registries loads no family; the first read of CASES / FAULTS imports the families'
    `cases` / `faults` modules (references/families.py), and neither pulls in Diffusers or transformers."""
    code = (
        "import json, sys\n"
        "from harness.run.cases import CASES\n"
        "from harness.verdicts.faults import FAULTS\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.startswith('references.') and 'families' not in m)\n"
        "before = loaded()\n"
        "cases = list(CASES)\n"
        "after_cases = loaded()\n"
        "families = sorted({fault.families[0] for fault in FAULTS.values()})\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers'})\n"
        "print(json.dumps([before, cases, after_cases, families, heavy]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    before, cases, after_cases, families, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before == [] and heavy == []
    assert {"flux-tiny", "flux-digits", "wan-tiny"} <= set(cases)
    assert {f"{package}.cases" for package in declared_families()} <= set(after_cases)
    assert not [m for m in after_cases if m.endswith(".faults")]  # reading CASES loads no fault
    assert {"flux", "wan"} <= set(families)


# --- the checks can fail ------------------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_synthetic_cycle_is_found(tmp_path: Path) -> None:
    _write(tmp_path, {
        "harness/__init__.py": "",
        "harness/a.py": "def f():\n    from harness.b import g\n",  # function-level import
        "harness/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from harness import a\n",
        "harness/c.py": "from . import a\n",  # relative, not in the cycle
    })
    graph = import_graph(tmp_path, ("harness",))
    assert graph["harness.c"] == {"harness.a"}
    assert find_cycles(graph) == [["harness.a", "harness.b"]]


def test_a_synthetic_subpackage_cycle_is_found(tmp_path: Path) -> None:
    _write(tmp_path, {
        "harness/__init__.py": "", "harness/up/__init__.py": "", "harness/down/__init__.py": "",
        "harness/up/a.py": "from harness.down.b import x\n",
        "harness/down/c.py": "import harness.up.a\n",  # no module cycle, but the packages depend on each other
        "harness/down/b.py": "x = 1\n",
    })
    graph = import_graph(tmp_path, ("harness",))
    assert find_cycles(graph) == []
    assert find_cycles(harness_package_graph(graph)) == [["harness.down", "harness.up"]]


def test_a_harness_import_of_a_new_family_is_found(tmp_path: Path) -> None:
    _write(tmp_path, {
        "harness/__init__.py": "",
        "harness/x.py": "import references.newfam.runner\nfrom references.families import FAMILIES\n",
        "harness/y.py": "from native_models.pipelines import newfam\nfrom references.common import tiny_build\n",
        "references/__init__.py": "", "references/families.py": "FAMILIES = ()\n",
        "references/newfam/__init__.py": "", "references/newfam/runner.py": "",
        "references/common/__init__.py": "", "references/common/tiny_build.py": "",
        "native_models/__init__.py": "", "native_models/pipelines/__init__.py": "",
        "native_models/pipelines/newfam.py": "",
    })
    found = harness_family_imports(import_graph(tmp_path))
    assert found == [("harness.x", "references.newfam.runner"), ("harness.y", "native_models.pipelines.newfam")]


def test_a_large_module_is_listed(tmp_path: Path) -> None:
    _write(tmp_path, {"harness/__init__.py": "", "harness/big.py": "x = 1\n" * (MAX_LINES + 1)})
    assert large_modules(line_counts(tmp_path, ("harness",))) == {"harness.big": MAX_LINES + 1}


if __name__ == "__main__":
    graph = import_graph()
    counts = line_counts()
    print(f"{len(graph)} modules, {sum(len(v) for v in graph.values())} internal imports")
    print("cycles:", find_cycles(graph) or "none")
    print("harness subpackage cycles:", find_cycles(harness_package_graph(graph)) or "none")
    print("harness -> family code:", harness_family_imports(graph) or "none")
    print(f"modules over {MAX_LINES} lines:", large_modules(counts) or "none")
