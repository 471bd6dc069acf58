"""FLUX.1 parity cases that close the blind spots the mutation run found (scripts/mutation.sh).

The mutation run (docs/mutation-report.md) mutates the native FLUX DiT, RoPE, scheduler and pipeline and runs the
parity selection of pyproject's [tool.mutmut] against every mutant. Its first run, with only the fp32 true-CFG
case and the transformer/scheduler parity tests, left 20 mutants alive that change numbers or refuse a valid
request; these cases kill them, and each says which. Every check compares the native side with Diffusers: the
pipeline cases under the stored calibration
(as cases/test_flux.py), the transformer cases bit for bit on torch's SDPA kernel, where every other operation of
the native DiT mirrors Diffusers' exactly (tests/test_flux_transformer.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.report.build import describe_failure
from harness.run.cases import get_case
from harness.run.parity import ParityResult, run_parity
from native_models.attention import attention_backend
from native_models.loader import load_component
from native_models.models.flux_transformer import FP16_MAX, FluxTransformer2DModel

# Pipeline requests (flux-tiny overrides); scripts/mutation_report.py measures survivors with them too.
GUARD_REQUESTS: dict[str, dict[str, object]] = {
    # batch of 2 with true CFG, the transposed non-square size, another seed, guidance scale and step count
    "fp32-batch2-cfg-80x48-seed1-g5-6steps": {
        "batch_size": 2, "negative_prompt": "blurry low quality", "true_cfg_scale": 3.0, "height": 80, "width": 48,
        "seed": 1, "guidance_scale": 5.0, "steps": 6,
    },
    # bf16 without CFG, square: the DiT rounds guidance to bf16 before * 1000, as Diffusers does (2.5 * 1000 is
    # not a bf16 number, 2.0 * 1000 would be); one step: a one-step schedule must install for the forced run
    "bf16-1step-64x64-seed2-g2.5": {"dtype": "bf16", "steps": 1, "seed": 2, "guidance_scale": 2.5},
}

GRID = (3, 5)  # latent token grid: non-square, so the two spatial rotary axes differ
TEXT_LEN = 7
BATCH = 2
# (model dtype, scale of the text input, timestep/guidance dtype): what each transformer case exercises
TRANSFORMER_CASES = {
    # fresh loads, so mutants of the constructors (q/k RMSNorm eps=None -> finfo(fp32).eps) meet a bitwise check:
    # in the pipeline cases they stay at 0.3-0.4x the calibrated thresholds (rel L2 about 9e-7)
    "fp32": (torch.float32, 1.0, torch.float32),
    # timestep and guidance arrive in float32 and must be rounded to bf16 before * 1000, as Diffusers does
    "bf16-fp32-timesteps": (torch.bfloat16, 1.0, torch.float32),
    # the float16 branch: the text and joint streams are clipped to +-65504 after every block
    "fp16": (torch.float16, 1.0, torch.float16),
    # text activations beyond 65504 (checked below) must not be clipped outside float16
    "fp32-large-text": (torch.float32, 1e5, torch.float32),
}


def assert_parity(result: ParityResult) -> None:
    first = result.comparison.first_divergence
    assert result.passed, describe_failure(first) if first else "no records compared"
    assert result.report["tolerances"]["source"].startswith("golden/tolerances/")
    assert result.comparison.forced_records, "the teacher-forced run was not compared"


@pytest.mark.parametrize("label", sorted(GUARD_REQUESTS))
def test_flux_tiny_guard_parity(label: str) -> None:
    case = get_case("flux-tiny")
    request = case.request(**GUARD_REQUESTS[label])
    result = run_parity(case, request)
    assert_parity(result)
    latents = [r for r in result.comparison.records if r.stage == "latents"]
    assert latents and latents[0].shape[0] == request.batch_size


def transformer_inputs(dtype: torch.dtype, text_scale: float, time_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    n = GRID[0] * GRID[1]
    rows, cols = torch.arange(n) // GRID[1], torch.arange(n) % GRID[1]
    return {
        "hidden_states": torch.randn(BATCH, n, 64, generator=gen).to(dtype),
        "encoder_hidden_states": (text_scale * torch.randn(BATCH, TEXT_LEN, 32, generator=gen)).to(dtype),
        "pooled_projections": torch.randn(BATCH, 32, generator=gen).to(dtype),
        "timestep": torch.tensor([0.73, 0.215]).to(time_dtype),  # already / 1000, as FluxPipeline passes it
        "guidance": torch.full((BATCH,), 3.5).to(time_dtype),
        "img_ids": torch.stack((torch.zeros(n), rows.float(), cols.float()), dim=-1),
        "txt_ids": torch.zeros(TEXT_LEN, 3),
    }


@pytest.mark.parametrize("name", list(TRANSFORMER_CASES))
def test_transformer_bitwise_on_sdpa(tiny_flux: Path, name: str) -> None:
    from diffusers import FluxTransformer2DModel as DiffusersFlux

    dtype, text_scale, time_dtype = TRANSFORMER_CASES[name]
    folder = tiny_flux / "transformer"
    reference = DiffusersFlux.from_pretrained(folder, torch_dtype=dtype).eval()
    native = load_component(FluxTransformer2DModel, folder, dtype)
    inputs = transformer_inputs(dtype, text_scale, time_dtype)
    text_peaks: list[float] = []  # largest |text stream| after each double-stream block of the reference
    hooks = [block.register_forward_hook(lambda _m, _i, out: text_peaks.append(out[0].abs().max().item()))
             for block in reference.transformer_blocks]
    with torch.no_grad(), attention_backend("sdpa"):
        expected = reference(**inputs, return_dict=False)[0]
        actual = native(**inputs)
    for hook in hooks:
        hook.remove()
    assert expected.isfinite().all(), f"{name}: the reference output is not finite; the case tests nothing"
    if text_scale > 1:
        assert max(text_peaks) > FP16_MAX, f"{name}: text activations peak at {max(text_peaks):.3g}, not beyond fp16"
    assert actual.dtype == expected.dtype == dtype
    diff = (actual.double() - expected.double()).norm() / expected.double().norm()
    assert torch.equal(actual, expected), f"{name}: rel L2 {diff.item():.3e}, not bit-identical on SDPA"
