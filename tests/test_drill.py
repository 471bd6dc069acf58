"""The drill (harness/drill/) on real tiny pipelines: a correct pipeline flags no module, a module broken on
purpose in any component (CLIP, T5, UMT5, both DiTs, both VAEs) is named, at any depth of a stack.

The reference of each case runs once per module (the captured component calls are reused); each test builds its
own native components and breaks them by instance mutation, as the fault catalog does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.drill.capture import Captured
from harness.drill.floors import ModuleFloors, load_module_floors
from harness.drill.session import capture_reference, drill_call, native_components
from harness.drill.target import DrillTarget, every_component
from harness.run.cases import Case, get_case
from harness.run.native_runner import plan_native_run
from harness.run.request import GenerationRequest
from native_models.pipeline import ComposedPipeline


class Drilled:
    """One case's captured reference calls, drilled against native components built fresh per test."""

    def __init__(self, case: Case, request: GenerationRequest, checkpoint: Path | None = None) -> None:
        self.case, self.request = case, request
        self.checkpoint = checkpoint or case.build_checkpoint()
        plan = plan_native_run(self.checkpoint, request)
        self.targets = {t.component: t for t in every_component(plan.config, request.do_true_cfg, request.steps)}
        self.captured: dict[DrillTarget, Captured] = capture_reference(case, self.checkpoint, request,
                                                                       list(self.targets.values()))
        self.floors = load_module_floors(case.name, request.dtype, request.device)

    def drill(self, component: str, mutate: Callable[[ComposedPipeline], None] | None = None,
              floors: ModuleFloors | None = None) -> dict:
        target = self.targets[component]
        native = native_components(self.checkpoint, self.request, {component}, mutate=mutate)[component]
        return drill_call(self.captured[target], native, floors or self.floors, target.stage).to_dict()


def scale_parameter(component: str, module: str, factor: float = 1.02) -> Callable[[ComposedPipeline], None]:
    """Break one native module: its first parameter scaled (a module-local bug, nothing else changes)."""
    def mutate(pipeline: ComposedPipeline) -> None:
        target = pipeline.get_module(component).get_submodule(module)
        parameter = next(target.parameters())
        with torch.no_grad():
            parameter.mul_(factor)
    return mutate


def offset_output(component: str, module: str, offset: float = 1e-2) -> Callable[[ComposedPipeline], None]:
    """Break a composite module's own code (not a child): its output shifted (an instance-level forward)."""
    def mutate(pipeline: ComposedPipeline) -> None:
        target: nn.Module = pipeline.get_module(component).get_submodule(module)
        original = target.forward

        def forward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            out = original(*args, **kwargs)
            return out + offset if isinstance(out, torch.Tensor) else type(out)(o + offset for o in out)

        target.forward = forward
    return mutate


@pytest.fixture(scope="module")
def flux() -> Drilled:
    case = get_case("flux-tiny")
    return Drilled(case, case.request())


@pytest.fixture(scope="module")
def wan() -> Drilled:
    case = get_case("wan-tiny")
    return Drilled(case, case.request())


def assert_clean(data: dict) -> None:
    failures = [m["module"] for m in data["modules"] if m["passed"] is False or m["inherited_passed"] is False]
    assert data["module"] is None and failures == [], failures
    assert data["summary"]["compared"] >= 0.75 * data["summary"]["modules"]


@pytest.mark.parametrize("component", ["text_encoder", "text_encoder_2", "transformer", "vae"])
def test_a_correct_flux_pipeline_flags_no_module(flux: Drilled, component: str) -> None:
    assert_clean(flux.drill(component))


@pytest.mark.parametrize("component", ["text_encoder", "transformer", "vae"])
def test_a_correct_wan_pipeline_flags_no_module(wan: Drilled, component: str) -> None:
    assert_clean(wan.drill(component))


@pytest.mark.parametrize(("component", "module"), [
    ("text_encoder", "text_model.encoder.layers.1.mlp.fc2"),  # CLIP
    ("text_encoder_2", "encoder.block.1.layer.1.DenseReluDense.wo"),  # T5
    ("transformer", "transformer_blocks.1.attn.to_add_out"),
    ("transformer", "single_transformer_blocks.1.proj_mlp"),
    ("vae", "decoder.up_blocks.2.resnets.0.conv2"),
])
def test_a_broken_flux_module_is_named(flux: Drilled, component: str, module: str) -> None:
    data = flux.drill(component, scale_parameter(component, module))
    assert (data["module"], data["basis"]) == (module, "local")
    named = next(m for m in data["modules"] if m["module"] == module)
    assert named["local"]["rel_l2"] > 10 * named["threshold"]


@pytest.mark.parametrize(("component", "module"), [
    ("text_encoder", "encoder.block.1.layer.0.SelfAttention.o"),  # UMT5
    ("transformer", "blocks.1.ffn.net.2"),
    ("transformer", "blocks.0.attn2.norm_k"),
    ("vae", "decoder.up_blocks.1.resnets.1.conv1"),  # a causal conv inside a block that takes run state
])
def test_a_broken_wan_module_is_named(wan: Drilled, component: str, module: str) -> None:
    data = wan.drill(component, scale_parameter(component, module))
    assert (data["module"], data["basis"]) == (module, "local")


def test_a_composite_modules_own_code_is_named_at_that_module(flux: Drilled) -> None:
    """The children of single block 1 all pass on their inputs; the block's own arithmetic does not."""
    data = flux.drill("transformer", offset_output("transformer", "single_transformer_blocks.1"))
    assert data["module"] == "single_transformer_blocks.1"
    children = [m for m in data["modules"] if m["module"].startswith("single_transformer_blocks.1.")]
    assert children and all(m["passed"] is not False for m in children)


def test_the_verdict_carries_inputs_outputs_and_the_worst_modules(flux: Drilled) -> None:
    data = flux.drill("transformer", scale_parameter("transformer", "transformer_blocks.0.attn.norm_q", 0.5))
    verdict = data["verdict"]
    assert verdict["module"] == "transformer_blocks.0.attn.norm_q" and verdict["kind"] == "RMSNorm"
    assert verdict["inputs"] and verdict["outputs"] and verdict["local"]["rel_l2"] > verdict["threshold"]
    assert data["worst"][0]["passed"] is False and len(data["worst"]) == 10
    positions = [m["module"] for m in data["modules"]]
    assert positions.index("transformer_blocks.0.attn.norm_q") < positions.index("transformer_blocks.0.attn")


def test_a_fault_in_the_middle_of_a_deep_stack_is_named_at_its_block() -> None:
    """8 single-stream blocks; only block 5 broken (its q norm without its weight): named at block 5, not 0."""
    from references.flux.tiny import TinyFluxConfig, tiny_flux_checkpoint

    case = get_case("flux-tiny")
    checkpoint = tiny_flux_checkpoint(seed=0, config=TinyFluxConfig(dit_single_layers=8))
    deep = Drilled(case, case.request(steps=2, height=32, width=32), checkpoint)

    def drop_norm_q_of_block_5(pipeline: ComposedPipeline) -> None:
        pipeline.get_module("transformer").single_transformer_blocks[5].attn.norm_q.weight = None

    data = deep.drill("transformer", drop_norm_q_of_block_5)
    assert data["module"] == "single_transformer_blocks.5.attn.norm_q"
    assert sum(m["module"].startswith("single_transformer_blocks.") for m in data["modules"]) > 8 * 10
    earlier = [m for m in data["modules"] if m["module"].startswith(("single_transformer_blocks.4.",
                                                                       "single_transformer_blocks.0."))]
    assert earlier and all(m["passed"] and m["inherited_passed"] for m in earlier)
