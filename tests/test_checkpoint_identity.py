"""A golden binds to the content that decides the numbers: library version strings in configs are a warning, a
changed tensor element, config value or tokenizer merge is another checkpoint (exit 2, naming the change)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from harness.cli.main import main
from harness.golden.checkpoint_identity import checkpoint_identity, compare_identities
from harness.golden.errors import GoldenError
from harness.golden.record import promote_golden, record_golden
from harness.golden.verify import verify_golden
from harness.run.cases import CASES, get_case

CASE = "flux-tiny"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, tiny_flux: Path) -> Path:
    root = tmp_path_factory.mktemp("golden")
    record_golden(get_case(CASE), "fp32", "cpu", root)
    promote_golden(CASE, "fp32", "cpu", root)
    return root


@pytest.fixture()
def checkpoint(tiny_flux: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of flux-tiny's checkpoint, which the case now builds (so the CLI verifies against it)."""
    copy = tmp_path / "flux-copy"
    shutil.copytree(tiny_flux, copy)
    monkeypatch.setitem(CASES, CASE, replace(get_case(CASE), build_checkpoint=lambda: copy))
    return copy


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def verify_cli(root: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["golden", "verify", CASE, "--golden-dir", str(root), "--no-forcing"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_strings_rewritten_pass_with_a_warning(recorded: Path, checkpoint: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    for config in checkpoint.rglob("*.json"):
        text = config.read_text()
        for key in ("transformers_version", "_diffusers_version"):
            text = text.replace(f'"{key}": "', f'"{key}": "0.0.1-')
        config.write_text(text)
    code, out, err = verify_cli(recorded, capsys)
    assert code == 0, out + err
    assert "warning: same tensors and config; saved with _diffusers_version" in out
    assert "transformers_version" in out and "0.0.1-" in out
    result = verify_golden(get_case(CASE), "fp32", "cpu", recorded, forcing=False, checkpoint=checkpoint)
    assert result.passed and result.report["warnings"][0].startswith("same tensors and config")
    assert result.report["golden"]["checkpoint_provenance_changes"]


def test_one_tensor_element_changed_is_another_checkpoint(recorded: Path, checkpoint: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    weights = checkpoint / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["proj_out.bias"][0] += 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    code, out, err = verify_cli(recorded, capsys)
    assert code == 2 and out == ""
    assert "recorded from another checkpoint" in err and "differs in 1 entries" in err
    assert "transformer/proj_out.bias: tensor differs" in err
    assert len(err.strip().splitlines()) == 1


def test_one_config_value_changed_is_named_with_both_values(recorded: Path, checkpoint: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    edit_json(checkpoint / "scheduler" / "scheduler_config.json", lambda d: d.__setitem__("max_shift", 1.2))
    code, _, err = verify_cli(recorded, capsys)
    assert code == 2 and "scheduler/scheduler_config.json:max_shift 1.15 -> 1.2" in err


def test_one_tokenizer_merge_changed_is_named(recorded: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    path = checkpoint / "tokenizer" / "tokenizer.json"
    data = json.loads(path.read_text())
    merges = data["model"]["merges"]
    assert merges, "the tiny CLIP tokenizer should have merges"
    merges[0], merges[-1] = merges[-1], merges[0]
    path.write_text(json.dumps(data))
    code, _, err = verify_cli(recorded, capsys)
    assert code == 2 and "tokenizer/tokenizer.json:model.merges differs" in err


def test_resharding_and_formatting_do_not_change_the_identity(checkpoint: Path, tmp_path: Path) -> None:
    """Tensors are keyed by component and name, configs by their parsed values: another shard layout or JSON
    indentation is the same checkpoint."""
    before = checkpoint_identity(checkpoint)
    weights = checkpoint / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    names = sorted(tensors)
    half = len(names) // 2
    weights.unlink()
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, checkpoint / "vae" / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (checkpoint / "vae" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    edit_json(checkpoint / "vae" / "config.json", lambda d: None)  # re-indented
    after = checkpoint_identity(checkpoint)
    assert compare_identities(before, after).same and after["digest"] == before["digest"]


def test_large_checkpoints_are_identified_by_headers(checkpoint: Path) -> None:
    """Above the content limit no tensor byte is read: a changed value goes unseen, a changed shape does not."""
    before = checkpoint_identity(checkpoint, content_limit=1)
    assert before["kind"] == "headers"
    weights = checkpoint / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["proj_out.bias"][0] += 1.0
    save_file(tensors, weights)
    assert compare_identities(before, checkpoint_identity(checkpoint, content_limit=1)).same
    tensors["proj_out.bias"] = tensors["proj_out.bias"][:-1]
    save_file(tensors, weights)
    changes = compare_identities(before, checkpoint_identity(checkpoint, content_limit=1)).changes
    assert changes == ["transformer/proj_out.bias: tensor differs (dtype, shape or bytes)"]


def test_verify_refuses_before_running_anything(recorded: Path, checkpoint: Path) -> None:
    (checkpoint / "vae" / "config.json").write_text(
        (checkpoint / "vae" / "config.json").read_text().replace('"scaling_factor": 0.3611', '"scaling_factor": 0.5'))
    with pytest.raises(GoldenError, match=r"vae/config.json:scaling_factor 0.3611 -> 0.5"):
        verify_golden(get_case(CASE), "fp32", "cpu", recorded, checkpoint=checkpoint)
