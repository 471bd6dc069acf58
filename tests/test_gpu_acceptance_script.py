"""scripts/gpu_acceptance.sh on the CPU (`--device cpu`: the tiny cases): it runs every step and writes one JSON.

Opt-in (DIFFPARITY_ACCEPTANCE=1): it compiles DiT blocks with inductor several times, minutes on this machine,
more than the CPU suite's budget. The same script is what a GPU runs (docs/speed.md section 5)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DIFFPARITY_ACCEPTANCE") != "1", reason="opt-in: DIFFPARITY_ACCEPTANCE=1")
def test_acceptance_script_runs_on_the_cpu(tmp_path: Path) -> None:
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_acceptance.sh"), "--device", "cpu", "--cases", "flux-tiny",
                           "--repeats", "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "acceptance.json").read_text())
    entry = summary["cases"]["flux-tiny"]
    assert entry["parity_bf16"]["verdict"] == "pass" and entry["compile_parity"]["verdict"] == "pass"
    assert entry["compile_parity"]["compile"]["native"]["backend"] == "inductor"
    assert [s["stage"] for s in entry["bench_eager"]["stages"]][2] == "transformer"
    assert entry["bench_compiled"]["compile"]["reference"] is not None
    assert entry["capture_overhead"]["on_ms"] > 0 and entry["capture_overhead"]["off_ms"] > 0
