"""`diffparity scaffold` and docs/adding-a-model.md, followed mechanically on a toy family until the gate passes.

The toy family is FLUX.1's architecture under the name `toy` (its tiny checkpoint is FLUX's, its model_index.json
naming `ToyPipeline`, so the registry tells it from FLUX). The test copies the repository's code into a temporary
root, then walks the doc step by step: each `TODO(scaffold:ID)` block a step names is replaced by the toy's code
(FILLS below), and each command in the step's bash blocks is run as written in that root (`diffparity` and
`python -m pytest`), expecting the exit code its comment gives (`# exit 1`), else 0. Each command is a process of
its own, forked from a launcher that has torch and diffusers imported but none of the root's code
(tests/warm_commands.py): nine fresh interpreters would spend ~40 s importing them again. The doc's blocks, the
scaffold's blocks and FILLS must name the same ids, so a block added to either without the other fails here.
Everything is written under pytest's tmp_path (the copy, its tiny-checkpoint cache): nothing outside changes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from warm_commands import Completed, WarmCommands

from harness.cli.main import main
from harness.scaffold import scaffold_family, todo_blocks, todo_ids
from harness.scaffold.markers import replace_block
from harness.scaffold.templates import BLOCKS, family_files

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "adding-a-model.md"
FAMILY = "toy"
COPIED = ("harness", "native_models", "references", "cases", "golden", "conftest.py", "pyproject.toml")

FILLS = {
    "native-pipeline": '''from native_models.pipelines.flux import FluxPipeline, FluxPipelineConfig, FluxSamplingParams


@dataclass
class ToySamplingParams(FluxSamplingParams):
    """FLUX.1-dev's defaults."""


@dataclass
class ToyPipelineConfig(FluxPipelineConfig):
    """FLUX.1's callbacks: the toy is FLUX's architecture under another name."""


class ToyPipeline(FluxPipeline):
    pipeline_name = "ToyPipeline"
''',
    "tiny-builder": '''def build_tiny_toy(out_dir: Path, seed: int = 0) -> Path:
    """FLUX's tiny checkpoint, its model_index.json naming ToyPipeline."""
    import json

    from references.flux.tiny import build_tiny_flux

    build_tiny_flux(out_dir, seed=seed)
    index = out_dir / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "_class_name": "ToyPipeline"}, indent=2))
    return out_dir
''',
    "reference-runner": '''def run_toy_reference(checkpoint: Path, request: GenerationRequest, trace: Trace,
                      progress: Callable[[int, int], None] | None = None, force_from: Trace | None = None) -> None:
    """Diffusers' FluxPipeline (whatever model_index.json names) with the FLUX recorder and forcer."""
    from diffusers import FluxPipeline

    from references.common.reference_pipeline import run_reference_pipeline
    from references.flux.runner import _FluxForcer, _FluxRecorder, _fp64_start_latents, flux_pipeline_kwargs

    run_reference_pipeline(
        FluxPipeline, checkpoint, request, trace, recorder=_FluxRecorder, forcer=_FluxForcer,
        call_kwargs=lambda pipe: flux_pipeline_kwargs(request) | {"latents": _fp64_start_latents(pipe, request)},
        progress=progress, force_from=force_from,
    )
''',
    "case": '''DESCRIPTION = "FLUX.1 architecture under another name (tests/test_scaffold.py)"
DEFAULT_REQUEST = GenerationRequest(prompt="a photo of a cat", seed=0, steps=2, height=32, width=32,
                                    max_sequence_length=32)
''',
    "faults": '''from references.flux.faults import _no_sigma_shift

FAMILY_FAULTS: tuple[Fault, ...] = (Fault(
    name="toy_sigma_shift_not_applied",
    description="mu = 0: the sigma schedule is not shifted",
    expected_stage="timesteps", expected_field="sigmas", expected_step=None,
    apply=_no_sigma_shift, families=("toy",),
),)
''',
    "case-tests": '''SIZES = [(32, 32)]
SEEDS = [0]
DTYPES = ["fp32"]
''',
}


def doc_steps() -> list[tuple[str, list[str], list[tuple[str, int]]]]:
    """(title, block ids, [(command, expected exit)]) per `## Step` section of the doc, in order."""
    steps = []
    for section in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        title, _, body = section.partition("\n")
        if not title.startswith("Step"):
            continue
        commands = []
        for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
            for line in block.splitlines():
                command, _, comment = line.partition("#")
                exit_code = re.search(r"\bexit (\d)", comment)
                if command.strip():
                    commands.append((command.strip(), int(exit_code[1]) if exit_code else 0))
        steps.append((title, todo_ids(body), commands))
    return steps


def copy_repository(target: Path) -> Path:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.draft.*",
                                                                                 "*.obtained.*"))
        else:
            shutil.copy2(source, target / name)
    return target


# Two of the doc's commands run narrowed: the toy is FLUX's numerics, so the whole fault catalog in both dtypes
# (tests/test_flux_fault_localization.py) and three-seed floors (tests/test_calibration.py) are other tests'
# business; here each command only has to work for a family it has never seen (one dtype of faults, one seed:
# ~20 s of the walk-through's ~45 s).
NARROWED = {
    "diffparity faults FAMILY-tiny": ["--dtype", "fp32"],
    "diffparity calibrate FAMILY-tiny": ["--seeds", "1"],
}


def run_command(command: str, warm: WarmCommands) -> Completed:
    """`command` as the doc writes it (NARROWED adds its flags), in the copied root; from a warm interpreter
    (tests/warm_commands.py) that has torch and diffusers imported but none of the root's code, which each
    command imports afresh."""
    argv = command.replace("FAMILY", FAMILY).split() + NARROWED.get(command, [])
    if argv[0] == "diffparity":
        return warm.run("harness.cli.main", argv[1:])
    if argv[:3] == ["python", "-m", "pytest"]:
        return warm.run("pytest", [*argv[3:], "-q", "-p", "no:cacheprovider"])
    raise AssertionError(f"docs/adding-a-model.md runs a command this test does not know: {command}")


def test_doc_scaffold_and_fills_name_the_same_blocks() -> None:
    steps = doc_steps()
    in_doc = [block for _, blocks, _ in steps for block in blocks]
    assert in_doc == list(BLOCKS), "docs/adding-a-model.md names the scaffold's blocks in another order or set"
    written = "".join(family_files(FAMILY).values())
    assert todo_ids(written) == list(BLOCKS)
    assert set(FILLS) == set(BLOCKS)
    assert [title.split(":")[0] for title, _, _ in steps] == [f"Step {n}" for n in range(1, len(steps) + 1)]


def test_scaffold_refuses_bad_and_existing_names_writing_nothing(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    root = copy_repository(tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    families = (root / "references" / "families.py").read_text()
    for name in ("Toy", "1toy", "to-y", "class", "common", "flux", "wan", "x" * 21, "toy/../../etc"):
        assert main(["scaffold", name, "--root", str(root)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("diffparity scaffold: error: "), err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert (root / "references" / "families.py").read_text() == families

    assert main(["scaffold", FAMILY, "--root", str(root)]) == 0
    written = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and Path(p.relative_to(root))
                     not in before)
    assert [str(p) for p in written] == sorted(family_files(FAMILY))
    assert '    "references.toy",\n)' in (root / "references" / "families.py").read_text()
    assert not list(root.glob(".scaffold-*"))  # the staging folder is gone
    assert main(["scaffold", FAMILY, "--root", str(root)]) == 2  # now it exists
    assert "family 'toy' already exists" in capsys.readouterr().err

    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                           str(ROOT / "pyproject.toml"), *map(str, written)], cwd=root, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout  # the skeleton itself is clean
    blocks = todo_blocks([root / p for p in written])
    assert sorted(b.id for b in blocks) == sorted(BLOCKS)


def test_a_write_that_fails_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_repository(tmp_path)
    families = (root / "references" / "families.py").read_text()
    real_rename = os.rename
    calls = {"n": 0}

    def failing_rename(source, target):
        calls["n"] += 1
        if calls["n"] == 2:  # the reference package is in place; the pipeline module fails
            raise OSError(28, "No space left on device")
        return real_rename(source, target)

    monkeypatch.setattr("harness.scaffold.writer.os.rename", failing_rename)
    with pytest.raises(OSError, match="No space left"):
        scaffold_family(FAMILY, root)
    assert not (root / "references" / FAMILY).exists() and not (root / "native_models/pipelines/toy.py").exists()
    assert (root / "references" / "families.py").read_text() == families
    assert not list(root.glob(".scaffold-*"))


def follow_step(title: str, blocks: list[str], commands: list[tuple[str, int]], files: list[Path],
                warm: WarmCommands, ran: list[str]) -> None:
    """Fill the step's TODO blocks, then run its commands, each expected to exit as the doc's comment says."""
    for block in blocks:
        owner = next(b.path for b in todo_blocks(files) if b.id == block)
        owner.write_text(replace_block(owner.read_text(), block, FILLS[block]))
    for command, expected in commands:
        proc = run_command(command, warm)
        output = proc.stdout + proc.stderr
        assert proc.returncode == expected, f"{title}: `{command}` exited {proc.returncode}:\n{output[-3000:]}"
        ran.append(command)
        if command.startswith("diffparity gate") and expected == 1:
            # right after the scaffold the gate names every block and what the stubs leave missing
            assert all(f"{block} (" in output for block in BLOCKS), output
            assert "missing  todo blocks   6 left" in output and "TODO(scaffold:tiny-builder)" in output
            assert "gate: FAIL: toy (todo blocks, tiny builder, golden (cpu), parity" in output


def test_following_adding_a_model_on_a_toy_family_passes_the_gate(tmp_path: Path) -> None:
    root = copy_repository(tmp_path / "repo")
    env = {**os.environ, "DIFFPARITY_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "DIFFPARITY_HEARTBEAT_S": "60"}
    ran = []
    files = [root / path for path in family_files(FAMILY)]  # where the scaffold writes (the templates hold markers too)
    with WarmCommands(root, env) as warm:
        for title, blocks, commands in doc_steps():
            follow_step(title, blocks, commands, files, warm, ran)
    assert set(NARROWED) <= set(ran), "a narrowed command is no longer in docs/adding-a-model.md"
    assert ran[0] == "diffparity scaffold FAMILY" and ran[-2:] == ["diffparity gate FAMILY",
                                                                    "python -m pytest cases/test_FAMILY.py"]
    assert not todo_blocks(files)
    assert (root / "golden" / "toy-tiny" / "fp32.cpu.safetensors").is_file()
    assert (root / "golden" / "tolerances" / "toy-tiny.fp32.cpu.json").is_file()
