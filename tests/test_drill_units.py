"""Unit tests of the drill's pieces (harness/drill/): output pairing, chunked metrics, the bounded store, the
generic call mapping, dtype casting, name patterns, targets and the verdict's reading order. No Diffusers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
from torch import nn

from harness.compare.metrics import tensor_metrics
from harness.drill.alignment import ComponentAlignment, NotForceable, cast_inputs, generic_name, map_call
from harness.drill.engine import CallResult
from harness.drill.floors import Judgement
from harness.drill.metrics import compare
from harness.drill.outputs import flatten, pair
from harness.drill.result import DrillResult, ModuleEntry, Side
from harness.drill.store import OutputStore, sample_indices
from harness.drill.target import DrillError, resolve_target
from native_models.pipelines.flux import FluxPipelineConfig


class Pair(NamedTuple):
    cos: torch.Tensor
    sin: torch.Tensor


@dataclass
class Output:
    last_hidden_state: torch.Tensor
    hidden_states: tuple | None = None


def test_flatten_labels_every_container_kind() -> None:
    a, b = torch.ones(2), torch.zeros(3)
    assert flatten(a).labels == ("",)
    assert flatten((a, None, b)).labels == ("0", "2") and not flatten((a, b)).named
    assert flatten(Pair(a, b)).labels == ("cos", "sin") and flatten(Pair(a, b)).named
    assert flatten(Output(a, (a, b))).labels == ("last_hidden_state", "hidden_states.0", "hidden_states.1")
    assert flatten({"sample": a}).labels == ("sample",)


def test_pair_by_name_then_by_position() -> None:
    a, b = torch.ones(2), torch.zeros(2)
    pairs, reason = pair(flatten(Output(a, (a, b))), flatten({"last_hidden_state": b, "pooler": a}))
    assert reason is None and [p[0] for p in pairs] == ["last_hidden_state"]
    pairs, reason = pair(flatten(a), flatten((b, None)))  # a bare tensor against Diffusers' (sample,) tuple
    assert reason is None and len(pairs) == 1
    pairs, reason = pair(flatten((a, b)), flatten(a))
    assert pairs == [] and "differ in structure" in reason
    assert flatten((a, b, a)).pick((2, 0)).tensors == (a, a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_metrics_equal_the_whole_tensor_metrics(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.drill.metrics as metrics

    monkeypatch.setattr(metrics, "CHUNK", 1000)  # many chunks
    generator = torch.Generator().manual_seed(0)
    ref = torch.randn(7, 1234, generator=generator).to(dtype)
    nat = (ref.float() + 1e-3 * torch.randn(7, 1234, generator=generator)).to(dtype)
    got, want = compare(nat, ref), tensor_metrics(nat, ref)
    for key in ("rel_l2", "max_abs", "cos"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12)


def test_metrics_of_non_finite_and_zero_tensors() -> None:
    assert math.isnan(compare(torch.tensor([1.0, math.nan]), torch.ones(2))["rel_l2"])
    zeros = compare(torch.zeros(3), torch.zeros(3))
    assert zeros["rel_l2"] == 0.0 and zeros["cos"] == 1.0
    assert compare(torch.ones(3), torch.zeros(3))["rel_l2"] == math.inf


def test_store_keeps_small_outputs_whole_and_samples_large_ones(tmp_path) -> None:
    store = OutputStore("denoise", tmp_path, full_bytes=4000, sample_size=100)
    small, large = torch.randn(10, 10), torch.randn(100, 100)
    store.put(("a.b", 0, ""), small)
    store.put(("a.c", 1, "0"), large)
    whole = store.get(("a.b", 0, ""))
    assert not whole.sampled and torch.equal(whole.tensor, small)
    sampled = store.get(("a.c", 1, "0"))
    assert sampled.sampled and sampled.shape == (100, 100) and sampled.tensor.numel() == 100
    assert torch.equal(sampled.counterpart(large), sampled.tensor)  # the same elements of the same tensor
    assert store.get(("a.b", 1, "")) is None
    store.save(tmp_path / "outputs.safetensors")
    reopened = OutputStore.open(tmp_path / "outputs.safetensors")
    assert torch.equal(reopened.get(("a.c", 1, "0")).tensor, sampled.tensor)
    assert list(tmp_path.iterdir()) == [tmp_path / "outputs.safetensors"]  # the spool is unnamed
    assert sample_indices(10, 100).tolist() == list(range(10))


def test_map_call_keeps_what_the_native_signature_takes() -> None:
    def forward(x, c=None, *, scale=1.0):  # noqa: ANN001, ANN202
        return x

    assert map_call((1, None, None), {"scale": 2.0, "return_dict": False, "mask": None}, forward) == (
        (1,), {"scale": 2.0})
    with pytest.raises(NotForceable, match="takes no 'feat_idx'"):
        map_call((1,), {"feat_idx": [0]}, forward)
    with pytest.raises(NotForceable, match="does not fit"):
        map_call((1, 2, 3), {}, forward)


def test_inputs_are_cast_only_when_the_native_weights_have_another_precision() -> None:
    fp32, bf16 = nn.Linear(2, 2), nn.Linear(2, 2).to(torch.bfloat16)
    x = torch.ones(1, 2)
    assert cast_inputs((x,), {}, bf16, fp32)[0][0].dtype == torch.bfloat16
    assert cast_inputs((x,), {}, fp32, fp32)[0][0] is x
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).to(torch.bfloat16))
    assert cast_inputs((x,), {}, mixed, fp32)[0][0] is x  # mixed precision on purpose: left alone


def test_patterns_star_only_homogeneous_stacks() -> None:
    root = nn.Module()
    root.layer = nn.ModuleList([nn.Linear(1, 1), nn.ReLU()])
    root.blocks = nn.ModuleList([nn.Linear(1, 1) for _ in range(3)])
    assert generic_name("blocks.2", root) == "blocks.*"
    assert generic_name("layer.1", root) == "layer.1"
    assert generic_name("blocks.12.attn") == "blocks.*.attn"
    assert generic_name("") == ""


def test_alignment_aliases_renames_and_rules() -> None:
    alignment = ComponentAlignment("X", aliases=(("shared", "encoder.embed_tokens"),),
                                   renames=(("text_model.", ""),))
    names = {"", "encoder.embed_tokens", "shared", "encoder.layers.0"}
    assert alignment.reference_name("shared", names) == "encoder.embed_tokens"
    assert alignment.reference_name("text_model.encoder.layers.0", names) == "encoder.layers.0"
    assert alignment.reference_name("text_model.final", names) is None


def test_targets_name_the_component_call() -> None:
    config = FluxPipelineConfig()
    assert resolve_target(config, True, 4, "denoise", "transformer_output_uncond", 2).call == 5
    assert resolve_target(config, False, 4, "denoise", "noise_pred", 3).call == 3
    encode = resolve_target(config, True, 4, "encode", "negative_pooled_prompt_embeds")
    assert (encode.component, encode.call) == ("text_encoder", 1)
    assert resolve_target(config, False, 4, "decode", "image").method == "decode"
    for stage, field, step in (("timesteps", "sigmas", None), ("denoise", None, 4), ("encode", "x", None)):
        with pytest.raises(DrillError):
            resolve_target(config, False, 4, stage, field, step)


def _entry(name: str, local: float | None, inherited: float | None = 0.0) -> ModuleEntry:
    def side(value: float | None) -> Side:
        result = None if value is None else CallResult({"rel_l2": value, "max_abs": value, "cos": 1.0})
        return Side(result, Judgement(None, 1e-5, "default"))

    return ModuleEntry(name, "Linear", name, "Linear", 1, side(local), side(inherited))


def test_the_verdict_is_the_first_local_failure_in_execution_order() -> None:
    entries = [_entry("a.x", 0.0), _entry("a.y", 1e-3, 1e-3), _entry("a", 5e-4, 5e-4), _entry("b", 1.0, 1.0)]
    result = DrillResult("transformer", {}, entries, {})
    assert result.named.module == "a.y" and result.basis == "local"
    assert [e.module for e in result.ranked(2)] == ["b", "a.y"]
    data = result.to_dict()
    assert data["module"] == "a.y" and data["summary"]["failed_local"] == 3
    # a module that could not be forced is named by its inherited error when nothing fails locally
    fallback = DrillResult("vae", {}, [_entry("c", 0.0), _entry("d", None, 1e-2)], {})
    assert fallback.named.module == "d" and fallback.basis == "inherited"
    assert DrillResult("vae", {}, [_entry("c", 0.0)], {}).named is None


def test_a_non_finite_module_output_fails_and_serialises() -> None:
    import json

    nan = ModuleEntry("m", "Linear", "m", "Linear", 1,
                      Side(CallResult({"rel_l2": math.nan, "max_abs": math.nan, "cos": math.nan}),
                           Judgement(None, 1e-5, "default")),
                      Side(None, Judgement(None, 1e-5, "default")))
    data = DrillResult("transformer", {}, [nan], {}).to_dict()
    assert data["module"] == "m" and data["modules"][0]["local"]["rel_l2"] == "nan"
    json.dumps(data, allow_nan=False)  # report.json is written without NaN
