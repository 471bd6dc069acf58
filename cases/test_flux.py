"""FLUX.1 parity: the native pipeline against Diffusers' FluxPipeline, stage by stage.

`pytest cases/ -k flux` runs the tiny checkpoint at a square and a non-square size, two seeds, fp32 and bf16,
plus true CFG with a negative prompt, each free-running and teacher-forced. Tolerances are the stored
calibration (golden/tolerances/flux-tiny.*.cpu.json, harness/compare/tolerances.py). The full acceptance grid (3 seeds,
floor multiples per stage) is `python -m harness.verdicts.grid flux-tiny --seeds 3`.
"""

from __future__ import annotations

import pytest

from harness.report.build import describe_failure
from harness.run.cases import get_case
from harness.run.parity import run_parity

SIZES = [(64, 64), (48, 80)]
SEEDS = [0, 1]


def assert_parity(result) -> None:
    first = result.comparison.first_divergence
    assert result.passed, describe_failure(first) if first else "no records compared"
    # both runs were compared: the forced run covers every denoising step and the decode
    forced = {(r.stage, r.step) for r in result.comparison.forced_records}
    free = {(r.stage, r.step) for r in result.comparison.records if r.stage in ("denoise", "decode")}
    assert forced == free
    # calibrated tolerances: every record reports its error as a multiple of its floor
    assert result.report["tolerances"]["source"].startswith("golden/tolerances/")
    assert all(record["floor_multiple"] is not None for record in result.report["records"])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_flux_tiny_parity(size: tuple[int, int], seed: int, dtype: str) -> None:
    case = get_case("flux-tiny")
    result = run_parity(case, case.request(height=size[0], width=size[1], seed=seed, dtype=dtype))
    assert_parity(result)
    stages = {record.stage for record in result.comparison.records}
    assert stages == {"encode", "timesteps", "latents", "denoise", "decode"}
    denoise_steps = {r.step for r in result.comparison.records if r.stage == "denoise"}
    assert denoise_steps == set(range(case.default_request.steps))


def test_flux_tiny_true_cfg_parity() -> None:
    case = get_case("flux-tiny")
    request = case.request(negative_prompt="blurry low quality", true_cfg_scale=2.5, height=48, width=80)
    result = run_parity(case, request)
    assert_parity(result)
    fields = {record.field for record in result.comparison.records}
    assert {"negative_prompt_embeds", "negative_pooled_prompt_embeds", "transformer_output_uncond"} <= fields
