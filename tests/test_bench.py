"""`diffparity bench` measures (harness/bench/): the structure of what it reports, finite ratios, and a side made
slower on purpose is reported as the slower one. No test asserts a time: times depend on the machine."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from harness.bench import run_bench
from harness.bench.calls import CallCapture
from harness.bench.result import BenchResult
from harness.cli.main import main
from harness.run.cases import get_case

STAGES = ["text_encoder", "text_encoder_2", "transformer", "scheduler.step", "vae.decode"]
DELAY_S = 1.0  # far above a tiny model's call, even on a loaded machine


def test_flux_tiny_bench_reports_every_stage_with_finite_ratios() -> None:
    case = get_case("flux-tiny")
    request = case.request(steps=2)
    result = run_bench(case, request, repeats=2, warmup=0)
    assert [s.name for s in result.stages] == STAGES
    assert result.end_to_end is not None and result.end_to_end.name == "end to end"
    for stage in result.all_stages():
        assert len(stage.native.ms) == len(stage.reference.ms) == 2
        assert math.isfinite(stage.ratio) and stage.ratio > 0
    by_name = {s.name: s for s in result.stages}
    assert by_name["transformer"].native_calls == by_name["transformer"].reference_calls == 2  # one per step
    assert by_name["scheduler.step"].native_calls == by_name["scheduler.step"].reference_calls == 2
    assert by_name["vae.decode"].native_class == "AutoencoderKL"
    data = json.loads(json.dumps(result.to_dict()))  # plain JSON
    assert data["compile"] == {"native": None, "reference": None}
    assert data["environment"]["device"] == "cpu" and data["environment"]["diffusers"]
    assert set(data["stages"][0]["native"]) >= {"median_ms", "p25_ms", "p75_ms", "samples_ms", "weights_mib"}
    table = result.format()
    assert all(name in table for name in STAGES) and "native/Diffusers" in table
    assert data["untimed"] == {} and "not timed" not in table  # every stage was called on both sides
    load = data["environment"]["load_average"]
    assert load["cores"] == os.cpu_count() and load["start"] >= 0 and load["end"] >= 0


def test_a_bench_started_on_a_busy_machine_says_so() -> None:
    """Every core already busy when the bench starts: the table warns that its ratios are not to be quoted."""
    result = BenchResult("flux-tiny", {"height": 64, "width": 64, "steps": 1, "dtype": "fp32"},
                         {"device": "cpu", "threads": 2, "load_average": {"start": 2.0, "end": 3.5, "cores": 2}},
                         {"native": None, "reference": None}, repeats=1, warmup=0)
    assert result.format().splitlines()[-1] == (
        "busy machine: load average 2.0 on 2 cores when the bench started (3.5 at the end): these ratios are not "
        "to be quoted; re-run on a quiet machine")
    result.environment["load_average"]["start"] = 1.9
    assert "busy machine" not in result.format()
    result.environment.pop("load_average")  # a bench JSON written before the field existed
    assert "busy machine" not in result.format()


def test_a_stage_one_side_never_calls_is_named_not_dropped() -> None:
    """Qwen-Image's native text encoder is called through another method than forward(): the bench says so in
    the table and the JSON instead of leaving the stage out silently."""
    case = get_case("qwenimage-tiny")
    result = run_bench(case, case.request(steps=2), repeats=1, warmup=0, end_to_end=False)
    assert "text_encoder" not in {s.name for s in result.stages}
    assert result.untimed == {"text_encoder": "the native side never called its forward()"}
    assert "not timed: text_encoder" in result.format()


def _delay(*_: Any, **__: Any) -> None:
    time.sleep(DELAY_S)


def test_a_side_made_slower_on_purpose_is_reported_slower() -> None:
    """The native VAE decode and the Diffusers DiT each sleep DELAY_S per call: the table must say so."""
    def slow_native_decode(pipeline: Any) -> None:
        vae = pipeline.get_module("vae")
        decode = vae.decode
        vae.decode = lambda *a, **k: (_delay(), decode(*a, **k))[1]

    def slow_reference_transformer(pipe: Any) -> None:
        pipe.transformer.register_forward_pre_hook(lambda module, args: _delay())

    case = get_case("flux-tiny")
    result = run_bench(case, case.request(steps=1), repeats=3, warmup=0, end_to_end=False,
                       mutate_native=slow_native_decode, mutate_reference=slow_reference_transformer)
    by_name = {s.name: s for s in result.stages}
    decode, transformer = by_name["vae.decode"], by_name["transformer"]
    assert decode.ratio > 1 and decode.verdict == "native slower", decode.to_dict()
    assert min(decode.native.ms) >= DELAY_S * 1e3
    assert transformer.ratio < 1 and transformer.verdict == "native faster", transformer.to_dict()
    assert min(transformer.reference.ms) >= DELAY_S * 1e3


def test_capture_restores_an_instance_wrapper_it_found() -> None:
    class Owner:
        def step(self, x: int) -> int:
            return x + 1

    owner = Owner()
    owner.step = lambda x: x + 100  # a wrapper already installed (a fault, a slowdown)
    capture = CallCapture(owner, "step", stateful=True).install()
    assert owner.step(1) == 101 and capture.args == (1,) and capture.calls == 1
    capture.remove()
    assert owner.step(1) == 101  # the earlier wrapper is back, not the class method


def test_bench_cli_writes_json_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "flux-tiny", "--frames", "5"]) == 2
    assert "applies to video cases only" in capsys.readouterr().err
    assert main(["bench", "flux-tiny", "--json", str(tmp_path)]) == 2
    path = tmp_path / "bench.json"
    assert main(["bench", "flux-tiny", "--steps", "1", "--repeats", "1", "--warmup", "0", "--no-end-to-end",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "transformer" in out and "end to end" not in out
    data = json.loads(path.read_text())
    assert data["case"] == "flux-tiny" and [s["stage"] for s in data["stages"]] == STAGES
