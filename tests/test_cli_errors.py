"""Bad input to `diffparity run`: exit 2, one line naming the problem, no traceback, only error.json written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli.main import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line_error(code: int, err: str, out_dir: Path | None, needle: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    error_lines = [line for line in lines if "error:" in line]
    assert len(error_lines) == 1, err
    assert needle in error_lines[0], error_lines[0]
    assert "Traceback" not in err
    if out_dir is not None:
        assert sorted(p.name for p in out_dir.iterdir()) == ["error.json"]
        report = json.loads((out_dir / "error.json").read_text())
        assert needle in report["error"] and report["exit_code"] == 2


def test_missing_checkpoint_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, err = run_cli(["run", "flux-tiny", "--model", str(tmp_path / "nope"), "--out", str(out)], capsys)
    assert_one_line_error(code, err, out, "checkpoint folder not found")


def test_model_index_names_unknown_class(tiny_flux_copy: Path, tmp_path: Path, capsys) -> None:
    index_path = tiny_flux_copy / "model_index.json"
    index = json.loads(index_path.read_text())
    index["transformer"] = ["diffusers", "MysteryTransformer3000"]
    index_path.write_text(json.dumps(index))
    out = tmp_path / "out"
    code, err = run_cli(["run", "flux-tiny", "--model", str(tiny_flux_copy), "--out", str(out)], capsys)
    assert_one_line_error(code, err, out, "unknown class 'MysteryTransformer3000' for component 'transformer'")


def test_truncated_safetensors(tiny_flux_copy: Path, tmp_path: Path, capsys) -> None:
    weights = next((tiny_flux_copy / "transformer").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code, err = run_cli(["run", "flux-tiny", "--model", str(tiny_flux_copy), "--out", str(out)], capsys)
    assert_one_line_error(code, err, out, "is not a readable safetensors file")


def test_height_not_divisible_by_16(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, err = run_cli(["run", "flux-tiny", "--height", "40", "--out", str(out)], capsys)
    assert_one_line_error(code, err, out, "height 40 is not divisible by 16")


def test_unknown_case_name(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, err = run_cli(["run", "flux-giant", "--out", str(out)], capsys)
    assert_one_line_error(code, err, out, "unknown case 'flux-giant'")


def test_malformed_argument_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "flux-tiny", "--height", "abc"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--height" in err


def test_frames_rejected_for_image_case(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, err = run_cli(["run", "flux-tiny", "--frames", "5", "--out", str(out)], capsys)
    assert_one_line_error(code, err, out, "--frames applies to video cases only")
