"""Fused projections (native_models/models/fused_linear.py, used by the Wan DiT) and the per-channel RoPE
(native_models/models/rope.py, used by the FLUX and Wan DiTs).

Both exist only to make the native DiT forward cheaper; each must give the same numbers as the plain code, keep
the checkpoint's parameter names, and step aside whenever the plain calls matter (hooks, autograd, compile).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import native_models.models.fused_linear as fused_module
from native_models.errors import CheckpointError
from native_models.loader import load_component
from native_models.models.flux_transformer import FluxConfig, FluxTransformer2DModel
from native_models.models.fused_linear import FusedLinears, fusable
from native_models.models.rope import apply_rotary, channel_tables, rotate_channels
from native_models.models.wan_transformer import WanConfig, WanTransformer3DModel
from native_models.parallel.tensor_parallel import ColwiseLinear, RowwiseLinear

K = 48


def make_parts(sizes: tuple[int, ...] = (32, 32, 64), bias: bool = True, dtype: torch.dtype = torch.float32,
               seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    return nn.ModuleList(nn.Linear(K, n, bias=bias) for n in sizes).to(dtype)


def make_x(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(2, 9, K, generator=torch.Generator().manual_seed(5)).to(dtype)


def shares_storage(part: torch.Tensor, fused: torch.Tensor) -> bool:
    return part.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()


# --- FusedLinears -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_equals_separate_and_parts_become_views(dtype: torch.dtype, bias: bool) -> None:
    parts, x = make_parts(bias=bias, dtype=dtype), make_x(dtype)
    keys = list(parts.state_dict())
    expected = [part(x) for part in parts]
    fused = FusedLinears()
    with torch.no_grad():
        outputs = fused(x, list(parts))
    assert fused.weight is not None and tuple(fused.weight.shape) == (128, K), "the group was not fused"
    for part in parts:
        assert shares_storage(part.weight, fused.weight)
        assert part.bias is None or (fused.bias is not None and shares_storage(part.bias, fused.bias))
    for out, ref in zip(outputs, expected, strict=True):
        assert out.shape == ref.shape and out.is_contiguous()
        assert torch.equal(out, ref)
    assert list(parts.state_dict()) == keys, "fusing must not change the parameter names"


def test_a_write_into_a_part_reaches_the_fused_gemm() -> None:
    parts, x, fused = make_parts(), make_x(), FusedLinears()
    with torch.no_grad():
        fused(x, list(parts))
        parts[1].load_state_dict(make_parts(seed=9)[1].state_dict())  # copy_ into the fused storage
        expected = [part(x) for part in parts]
        outputs = fused(x, list(parts))
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected, strict=True))
    assert not torch.equal(outputs[1], make_parts()[1](x)), "the write did not change the fused output"


def test_refused_after_a_cast_and_after_a_replaced_weight() -> None:
    parts, x, fused = make_parts(), make_x(), FusedLinears()
    with torch.no_grad():
        fused(x, list(parts))
        first = fused.weight
        parts.double()  # new storage for every part: the fused tensor is stale
        outputs = fused(x.double(), list(parts))
        assert fused.weight is not first and fused.weight is not None and fused.weight.dtype == torch.float64
        # float64 only to the last bit: MKL's AVX-512 dgemm sums the 128-row fused product in another order than
        # a 32-row one (2.2e-16 measured); float32 and bfloat16 stay bit-equal (the first test of this file)
        assert all(torch.allclose(a, p(x.double()), rtol=0, atol=1e-14) for a, p in zip(outputs, parts, strict=True))
        parts[0].weight = nn.Parameter(torch.ones_like(parts[0].weight))  # a module-level replacement
        outputs = fused(x.double(), list(parts))
    assert torch.equal(outputs[0], parts[0](x.double()))


def test_observed_parts_run_their_own_call() -> None:
    parts, x, fused = make_parts(), make_x(), FusedLinears()
    seen: list[torch.Tensor] = []
    handle = parts[2].register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        outputs = fused(x, list(parts))
    handle.remove()
    assert fused.weight is None and len(seen) == 1 and torch.equal(seen[0], outputs[2])
    parts[0].forward = lambda inp: torch.zeros(*inp.shape[:-1], 32)  # type: ignore[method-assign]
    with torch.no_grad():
        assert torch.equal(fused(x, list(parts))[0], torch.zeros(2, 9, 32)), "a replaced forward was skipped"


def test_autograd_gets_the_parts() -> None:
    parts, x, fused = make_parts(), make_x(), FusedLinears()
    sum(out.sum() for out in fused(x, list(parts))).backward()
    assert fused.weight is None
    assert all(part.weight.grad is not None for part in parts)


@torch.no_grad()
def test_only_compatible_plain_linears_fuse() -> None:
    assert fusable(list(make_parts()))
    assert not fusable(list(make_parts())[:1])
    mixed = list(make_parts()) + [nn.Linear(K + 1, 4)]
    assert not fusable(mixed)
    assert not fusable([nn.Linear(K, 4), nn.Linear(K, 4, bias=False)])
    column = ColwiseLinear.shard(nn.Linear(K, 8), 0, 2, "q")  # nn.Linear's forward: fusable per rank
    assert fusable([column, ColwiseLinear.shard(nn.Linear(K, 8), 1, 2, "k")])
    row = RowwiseLinear.shard(nn.Linear(K, 8), 0, 2, None, "o")  # its own forward (an all-reduce): never
    assert not fusable([row, row])


# --- the DiTs: fused and unfused give the same numbers --------------------------------------------------------


FLUX_TINY = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
             "joint_attention_dim": 24, "pooled_projection_dim": 12, "in_channels": 8, "axes_dims_rope": [4, 6, 6],
             "guidance_embeds": True}
WAN_TINY = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 4,
            "out_channels": 4, "text_dim": 16, "freq_dim": 16, "ffn_dim": 40, "rope_max_seq_len": 64}


def flux_inputs(dtype: torch.dtype, rows: int = 3) -> tuple[object, ...]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.zeros(rows * 4, 3)
    ids[:, 1], ids[:, 2] = torch.arange(rows * 4) // 4, torch.arange(rows * 4) % 4
    return (torch.randn(2, rows * 4, 8, generator=gen).to(dtype), torch.randn(2, 5, 24, generator=gen).to(dtype),
            torch.randn(2, 12, generator=gen).to(dtype), torch.tensor([0.7, 0.2]), ids, torch.zeros(5, 3),
            torch.tensor([3.5, 3.5]))


def wan_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(2)
    return (torch.randn(2, 4, 2, 4, 6, generator=gen).to(dtype), torch.tensor([700.0, 20.0]),
            torch.randn(2, 5, 16, generator=gen).to(dtype))


def without_fusion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_module, "fusable", lambda parts: False)


@pytest.mark.parametrize("image", [False, True], ids=["t2v", "i2v"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wan_fused_equals_unfused(dtype: torch.dtype, image: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    extra = {"image_dim": 20, "added_kv_proj_dim": 24} if image else {}
    model = WanTransformer3DModel.from_config({**WAN_TINY, **extra}).to(dtype)
    args = wan_inputs(dtype)
    if image:
        args = (*args, torch.randn(2, 6, 20, generator=torch.Generator().manual_seed(4)).to(dtype))
    with torch.no_grad():
        fused = model(*args)
        attn1, attn2 = model.blocks[0].attn1, model.blocks[0].attn2
        assert attn1.fused_qkv.weight is not None and attn2.fused_kv.weight is not None
        assert not image or attn2.fused_added_kv.weight is not None
        without_fusion(monkeypatch)
        plain = model(*args)
    assert torch.equal(fused, plain)


def test_fused_model_keeps_strict_loading(tmp_path: Path) -> None:
    """After a fused forward the state dict is still Diffusers' names (nothing fused is saved or expected), it
    loads strictly into a fresh model with the same output, and a checkpoint with a fused tensor is refused."""
    torch.manual_seed(0)
    model = WanTransformer3DModel(WanConfig.from_dict(WAN_TINY))
    with torch.no_grad():
        expected = model(*wan_inputs(torch.float32))
    fresh_keys = set(WanTransformer3DModel(WanConfig.from_dict(WAN_TINY)).state_dict())
    state = {name: t.contiguous() for name, t in model.state_dict().items()}
    assert set(state) == fresh_keys
    folder = tmp_path / "transformer"
    folder.mkdir()
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", **WAN_TINY}))
    loaded = load_component(WanTransformer3DModel, folder)
    with torch.no_grad():
        assert torch.equal(loaded(*wan_inputs(torch.float32)), expected)
    qkv = torch.cat([state[f"blocks.0.attn1.to_{p}.weight"] for p in "qkv"])
    save_file({**state, "blocks.0.attn1.fused_qkv.weight": qkv}, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="fused_qkv"):
        load_component(WanTransformer3DModel, folder)


# --- RoPE: per-channel tables, bit-identical to the reference formula -----------------------------------------


def reference_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Diffusers' formula: x*cos + rotate(x)*sin in float32, tables expanded per channel, rotate = (-b, a)."""
    if interleaved:
        a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
        rotated = torch.stack((-b, a), dim=-1).flatten(-2)
        cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
    else:
        a, b = x.chunk(2, dim=-1)
        rotated = torch.cat((-b, a), dim=-1)
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "split-half"])
def test_rotation_is_bit_identical_to_the_reference(dtype: torch.dtype, interleaved: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    angles = torch.randn(11, 1, 8, generator=gen) * 20
    cos, sin = angles.cos(), angles.sin()
    fused_output = torch.randn(2, 11, 3 * 3 * 16, generator=gen).to(dtype) * 4  # (B, L, 3C): q/k/v side by side
    x = fused_output[..., 48:96].unflatten(-1, (3, 16))  # strided (B, L, H, D), as a split of a fused GEMM
    expected = reference_rotary(x, cos, sin, interleaved)
    assert torch.equal(apply_rotary(x, cos, sin, interleaved), expected)
    assert torch.equal(rotate_channels(x, *channel_tables(cos, sin, interleaved), interleaved), expected)
    assert torch.equal(x, fused_output[..., 48:96].unflatten(-1, (3, 16))), "the input was written to"


def test_flux_rotary_is_rebuilt_for_other_ids() -> None:
    torch.manual_seed(0)
    model = FluxTransformer2DModel(FluxConfig.from_dict(FLUX_TINY))
    with torch.no_grad():
        model(*flux_inputs(torch.float32))
        other = flux_inputs(torch.float32, rows=2)
        cached = model(*other)
        fresh = FluxTransformer2DModel(FluxConfig.from_dict(FLUX_TINY))
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(cached, fresh(*other))
        ids = other[4]
        rope = model.rotary(torch.zeros(5, 3), ids)
        assert model.rotary(torch.zeros(5, 3), ids.clone()) is rope, "the same ids must reuse the tables"
        moved = ids.clone()
        moved[0, 1] = 7.0
        assert not torch.equal(model.rotary(torch.zeros(5, 3), moved).cos, rope.cos)


def test_wan_rotary_cache_follows_grid_and_cast() -> None:
    model = WanTransformer3DModel(WanConfig.from_dict(WAN_TINY))
    first = model.rope((2, 2, 3))
    assert model.rope((2, 2, 3)) is first
    assert model.rope((1, 2, 3)).cos.shape[0] == 6
    model.double()
    assert model.rope((2, 2, 3)).cos.dtype == torch.float64
    assert first.cos_channels is not None and torch.equal(
        first.cos_channels, channel_tables(first.cos, first.sin)[0]
    )
