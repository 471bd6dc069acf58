"""Regional torch.compile (native_models/compile.py) and compile parity (`run --compile`, harness/run/parity.py):
the repeated blocks are found and compiled, a compiled run is compared as usual and its report says what ran
compiled, and `calibrate --compile` floors live in their own file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.compare.tolerances import calibration_path, load_tolerance_spec
from harness.golden.calibrate import perturbations_for
from harness.run.cases import get_case
from harness.run.parity import compiled_sides, run_parity
from native_models.compile import CompileSettings, compile_repeated_blocks, repeated_blocks


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class Model(nn.Module):
    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(blocks))
        self.to_out = nn.ModuleList([nn.Linear(4, 4)])  # one element: not a repeated block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.to_out[0](x)


def test_repeated_blocks_are_the_items_of_lists_of_one_class() -> None:
    model = Model()
    assert repeated_blocks(model) == list(model.blocks)
    model._repeated_blocks = ["Linear"]  # Diffusers' convention: class names
    assert len(repeated_blocks(model)) == 4
    with pytest.raises(ValueError, match="no repeated blocks"):
        compile_repeated_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_compiled_blocks_give_the_eager_numbers_within_rounding() -> None:
    torch.manual_seed(0)
    model, x = Model(), torch.randn(8, 4)
    eager = model(x)
    assert compile_repeated_blocks(model, CompileSettings()) == 3
    compiled = model(x)
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in model.blocks)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_compile_choices_and_the_compiled_calibration_file() -> None:
    assert compiled_sides("both") == (True, True) and compiled_sides("none") == (False, False)
    with pytest.raises(ValueError, match="--compile must be one of"):
        compiled_sides("all")
    path = calibration_path("flux-tiny", "fp32", "cpu", compiled=True)
    assert path.name == "flux-tiny.fp32.cpu.compiled.json"
    assert [p.name for p in perturbations_for("cpu", "fp32", compiled=True)][-1] == "compiled"
    assert "compiled" not in [p.name for p in perturbations_for("cpu", "fp32")]
    if not path.is_file():  # falls back to the eager calibration
        assert load_tolerance_spec("flux-tiny", "fp32", "cpu", compiled=True).source == \
            load_tolerance_spec("flux-tiny", "fp32", "cpu").source


def test_compiled_reference_against_eager_native_passes_and_the_report_says_so() -> None:
    case = get_case("flux-tiny")
    result = run_parity(case, case.request(steps=1), compile_choice="reference", forcing=False)
    compiled = result.report["compile"]
    assert compiled["native"] is None
    assert compiled["reference"] == {"backend": "inductor", "mode": "default", "scope": "repeated blocks (regional)"}
    assert result.passed, result.report["first_divergence"]
