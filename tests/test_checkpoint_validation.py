"""The reference runs first in a parity run, so a broken checkpoint must be caught by the native plan before
Diffusers touches it: one line, exit 2, and the reference never called."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.run import cases
from harness.run.native_runner import check_safetensors_header
from native_models.errors import CheckpointError


def weights(folder: Path) -> Path:
    return next((folder / "transformer").glob("*.safetensors"))


def test_intact_files_pass(tiny_flux: Path) -> None:
    for component in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        for file in (tiny_flux / component).glob("*.safetensors"):
            check_safetensors_header(file)


@pytest.mark.parametrize("damage, needle", [
    (lambda data: data[: len(data) // 2], "header declares"),
    (lambda data: data + b"\0" * 16, "header declares"),
    (lambda data: data[:5], "shorter than the 8-byte header length"),
    (lambda data: (10**9).to_bytes(8, "little") + data[8:], "exceeds the file's"),
    (lambda data: data[:8] + b"!" + data[9:], "is not a readable safetensors file"),
], ids=["truncated", "trailing-bytes", "tiny", "huge-header-length", "bad-json"])
def test_damaged_files_fail_with_the_loader_words(tiny_flux_copy: Path, damage, needle: str) -> None:
    file = weights(tiny_flux_copy)
    file.write_bytes(damage(file.read_bytes()))
    with pytest.raises(CheckpointError, match="is not a readable safetensors file") as info:
        check_safetensors_header(file)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("breakage", ["truncated", "unknown-class"])
def test_reference_never_runs_on_a_broken_checkpoint(breakage: str, tiny_flux_copy: Path, tmp_path: Path,
                                                     monkeypatch, capsys) -> None:
    if breakage == "truncated":
        file = weights(tiny_flux_copy)
        file.write_bytes(file.read_bytes()[:-100])
    else:
        index = json.loads((tiny_flux_copy / "model_index.json").read_text())
        index["vae"] = ["diffusers", "MysteryVAE"]
        (tiny_flux_copy / "model_index.json").write_text(json.dumps(index))

    def must_not_run(*args: object) -> None:
        raise AssertionError("the reference ran on a checkpoint the native plan should have rejected")

    case = dataclasses.replace(cases.CASES["flux-tiny"], run_reference=must_not_run)
    monkeypatch.setitem(cases.CASES, "flux-tiny", case)
    out = tmp_path / "out"
    code = main(["run", "flux-tiny", "--model", str(tiny_flux_copy), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert [p.name for p in out.iterdir()] == ["error.json"]
