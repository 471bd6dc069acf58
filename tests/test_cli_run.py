"""The console script end to end: exit code, terminal table, and report.json in the documented schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.cli.main import main


def test_console_script_passes_and_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    script = Path(sys.executable).with_name("diffparity")
    proc = subprocess.run(
        [str(script), "run", "flux-tiny", "--seed", "3", "--steps", "2", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: PASS" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["case"] == "flux-tiny" and report["seed"] == 3
    assert report["verdict"] == "pass" and report["first_divergence"] is None
    for record in report["records"]:
        assert set(record) >= {"stage", "field", "step", "shape", "metrics", "tolerance", "passed"}
        assert set(record["metrics"]) >= {"max_abs", "mean_abs", "rel_l2", "cos"}
        assert record["stage"] in {"encode", "timesteps", "latents", "denoise", "decode"}
    steps = {r["step"] for r in report["records"] if r["stage"] == "denoise"}
    assert steps == {0, 1}
    for name in ("native.safetensors", "reference.safetensors", "native.png", "reference.png", "side_by_side.png"):
        assert (out / name).is_file(), name


def test_parity_failure_exits_1(tmp_path: Path, monkeypatch, capsys) -> None:
    """A wrong native pipeline gives exit 1 and a report naming the first divergence."""
    from native_models.pipelines import flux

    def no_shift_config_decode(self, vae):  # the native pipeline forgets the VAE's shift factor
        return float(vae.scaling_factor), 0.0

    monkeypatch.setattr(flux.FluxPipelineConfig, "get_decode_scale_and_shift", no_shift_config_decode)
    out = tmp_path / "run"
    code = main(["run", "flux-tiny", "--steps", "2", "--out", str(out), "--no-progress"])
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "fail"
    first = report["first_divergence"]
    assert {key: first[key] for key in ("stage", "field", "step")} == {"stage": "decode", "field": "latents",
                                                                      "step": None}
    # drilled (on by default): the VAE is right on the reference's latents, so no module is named
    assert first["module"] is None and report["drill"]["status"] == "ran"
    assert "first divergence: decode/latents" in capsys.readouterr().out
