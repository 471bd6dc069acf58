"""The native Wan 2.1 I2V DiT (image path: image embedder, added key/value projections, 36 input channels) against
Diffusers' WanTransformer3DModel on a tiny random checkpoint, and its parallel plans on 1, 2 and 4 gloo ranks.

The Diffusers model is built with a fixed seed, every constant parameter randomised (norm weights and biases,
`randomise_constant_parameters`), saved with `save_pretrained`; both sides load that folder. Inputs as
WanImageToVideoPipeline calls the DiT: batch 2, latents + mask + conditioning latents (16 + 4 + 16 channels), 512
text tokens (Diffusers' attention assumes exactly 512 to split the image tokens off), 257 image tokens (a
224 px ViT-H/14's count).

Bars: fp32 rel_l2 <= 1e-5 (measured 2.9e-7 on the default CPU kernel; 0 on torch's SDPA kernel choice). bf16:
bitwise on the same attention kernel; on the default (math) kernel the error against Diffusers must not exceed
Diffusers' own difference between the two kernels (two correct bf16 implementations; measured 4.0e-3 rel_l2),
and equals it bit for bit here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from numerics import rel_l2
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.run.multirank import free_port
from native_models.attention import attention_backend
from native_models.loader import load_component
from native_models.models.wan_transformer import (
    WanConfig,
    WanImageTransformer3DModel,
    WanTransformer3DModel,
)
from native_models.parallel import destroy_parallel, gather_sequence, init_parallel, load_parallel_component
from native_models.parallel import parallel_context as get_parallel_context
from native_models.parallel.plan import matching_modules
from native_models.parallel.sequence_parallel import UlyssesAttention
from references.common.tiny_build import randomise_constant_parameters

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")

FP32_REL_L2 = 1e-5
PARALLEL_REL_L2 = 1e-5

TINY = {
    "num_layers": 2,
    "num_attention_heads": 4,  # 4 heads: split 2 ways by TP, then 2 ways by Ulysses within a TP shard
    "attention_head_dim": 16,
    "in_channels": 36,  # 16 latent + 4 mask + 16 conditioning channels
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "patch_size": (1, 2, 2),
    "image_dim": 24,
    "added_kv_proj_dim": 64,  # = heads x head_dim, as Wan 2.1 I2V (5120 = 40 x 128)
}
LATENT = (3, 6, 10)  # (T, H, W): token grid (3, 3, 5), 45 tokens: padded for SP=2
TEXT_LEN = 512
IMAGE_LEN = 257
BATCH = 2


def make_inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(BATCH, TINY["in_channels"], *LATENT, generator=gen).to(dtype),
        "timestep": torch.tensor([999, 431]),  # int64, as WanPipeline passes the scheduler's timesteps
        "encoder_hidden_states": torch.randn(BATCH, TEXT_LEN, TINY["text_dim"], generator=gen).to(dtype),
        "encoder_hidden_states_image": torch.randn(BATCH, IMAGE_LEN, TINY["image_dim"], generator=gen).to(dtype),
    }


class Models:
    """Both sides loaded once per dtype from the same safetensors file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded: dict[torch.dtype, tuple[torch.nn.Module, WanTransformer3DModel]] = {}

    def get(self, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, WanTransformer3DModel]:
        if dtype not in self._loaded:
            reference = diffusers.WanTransformer3DModel.from_pretrained(self.folder, dtype=dtype,
                                                                        use_safetensors=True).eval()
            self._loaded[dtype] = (reference, load_component(WanTransformer3DModel, self.folder, dtype))
        return self._loaded[dtype]

    def reference(self, dtype: torch.dtype, math_kernel: bool = False) -> torch.Tensor:
        reference, _ = self.get(dtype)
        with torch.no_grad():
            if math_kernel:
                with sdpa_kernel(SDPBackend.MATH):
                    return reference(**make_inputs(dtype), return_dict=False)[0]
            return reference(**make_inputs(dtype), return_dict=False)[0]

    def native(self, dtype: torch.dtype, backend: str = "auto", **input_changes: torch.Tensor) -> torch.Tensor:
        _, native = self.get(dtype)
        with torch.no_grad(), attention_backend(backend):
            return native(**{**make_inputs(dtype), **input_changes})


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    torch.manual_seed(0)
    reference = diffusers.WanTransformer3DModel(**TINY)
    changed = randomise_constant_parameters(reference, seed=0, index=1)
    assert any("image_embedder.norm1" in name for name in changed) and any("norm_added_k" in name for name in changed)
    folder = tmp_path_factory.mktemp("wan-i2v") / "transformer"
    reference.save_pretrained(folder)
    return Models(folder)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_state_dict_names_dtypes_and_values_match(models: Models, dtype: torch.dtype) -> None:
    """Same keys, and in bf16 the same float32 islands, now including the image embedder's two LayerNorms."""
    reference, native = models.get(dtype)
    assert type(native) is WanImageTransformer3DModel
    expected, actual = reference.state_dict(), native.state_dict()
    assert sorted(actual) == sorted(expected)
    mismatched = [k for k, v in expected.items() if actual[k].dtype != v.dtype or not torch.equal(actual[k], v)]
    assert not mismatched, f"{len(mismatched)} tensors differ in dtype or value, e.g. {mismatched[:3]}"
    if dtype == torch.bfloat16:
        embedder = native.condition_embedder.image_embedder
        assert embedder.norm1.weight.dtype == embedder.norm2.bias.dtype == torch.float32
        assert embedder.ff.net[0].proj.weight.dtype == torch.bfloat16
        assert native.blocks[0].attn2.norm_added_k.weight.dtype == torch.bfloat16  # not a kept module


def test_fp32_matches_diffusers(models: Models) -> None:
    expected, actual = models.reference(torch.float32), models.native(torch.float32)
    assert actual.shape == expected.shape == (BATCH, TINY["out_channels"], *LATENT)
    err = rel_l2(actual, expected)
    print(f"wan I2V DiT fp32: rel L2 {err:.3e}, max abs {(actual - expected).abs().max().item():.3e}")
    assert err <= FP32_REL_L2, f"fp32 rel L2 {err:.3e} > {FP32_REL_L2}"


def test_bf16_within_the_two_kernel_floor(models: Models) -> None:
    """Against Diffusers' default run, native bf16 (default CPU kernel: math) is as far as Diffusers itself on the
    math kernel: the measured difference of two correct bf16 implementations, not a chosen number."""
    expected = models.reference(torch.bfloat16)
    floor = rel_l2(models.reference(torch.bfloat16, math_kernel=True), expected)
    actual = models.native(torch.bfloat16)
    err = rel_l2(actual, expected)
    print(f"wan I2V DiT bf16: rel L2 {err:.3e}, two-kernel floor {floor:.3e}")
    assert actual.dtype == torch.bfloat16 and floor > 0
    assert err <= floor, f"bf16 rel L2 {err:.3e} > the two-kernel floor {floor:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bitwise_equal_on_the_same_attention_kernel(models: Models, dtype: torch.dtype) -> None:
    """Every op mirrored: bit for bit on torch's own SDPA choice (what Diffusers calls) and on the math kernel."""
    expected, actual = models.reference(dtype), models.native(dtype, backend="sdpa")
    assert torch.equal(actual, expected), f"max abs diff {(actual - expected).abs().max().item():.3e}"
    assert torch.equal(models.native(dtype, backend="math"), models.reference(dtype, math_kernel=True))


def test_the_image_path_changes_the_output(models: Models) -> None:
    """Other image tokens move the output (through the image embedder and every block's added projections; a
    rescaled image would not: the embedder starts with a LayerNorm)."""
    base = models.native(torch.float32)
    other = torch.randn(BATCH, IMAGE_LEN, TINY["image_dim"], generator=torch.Generator().manual_seed(7))
    err = rel_l2(models.native(torch.float32, encoder_hidden_states_image=other), base)
    assert err > 1e-2, f"other image tokens moved the output by only {err:.2e}"


def test_plans_cover_the_image_path(models: Models) -> None:
    """The TP plan shards the added key/value projections like the text ones; the SP plan puts only self-attention
    through the Ulysses all-to-all (no cross-attention context, image or text, is exchanged)."""
    _, native = models.get()
    assert set(WanImageTransformer3DModel._tp_plan) - set(WanTransformer3DModel._tp_plan) == {
        "blocks.*.attn2.add_k_proj", "blocks.*.attn2.add_v_proj", "blocks.*.attn2.norm_added_k"}
    for plan in (WanImageTransformer3DModel._tp_plan, WanImageTransformer3DModel._sp_plan):
        for pattern in plan:
            assert matching_modules(native, pattern), pattern
    ulysses = [p for p, style in WanImageTransformer3DModel._sp_plan.items() if type(style).__name__ == "Ulysses"]
    assert [m for p in ulysses for m in matching_modules(native, p)] == ["blocks.0.attn1.core", "blocks.1.attn1.core"]
    t2v = WanTransformer3DModel.from_config({**TINY, "in_channels": 16, "image_dim": None, "added_kv_proj_dim": None})
    assert type(t2v) is WanTransformer3DModel and not matching_modules(t2v, "blocks.*.attn2.add_k_proj")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoder_hidden_states_image": None}, r"has an image path \(image_dim=24\): encoder_hidden_states_image"),
        ({"encoder_hidden_states_image": torch.zeros(BATCH, IMAGE_LEN, 23)},
         r"encoder_hidden_states_image must be \(2, L_img, 24\), got \(2, 257, 23\)"),
        ({"encoder_hidden_states_image": torch.zeros(1, IMAGE_LEN, 24)}, r"must be \(2, L_img, 24\)"),
        ({"hidden_states": torch.zeros(BATCH, 16, *LATENT)}, r"must be \(B, 36, T, H, W\)"),
    ],
)
def test_bad_inputs_raise(models: Models, change: dict, message: str) -> None:
    _, native = models.get()
    with pytest.raises(ValueError, match=message):
        native(**{**make_inputs(torch.float32), **change})


def test_image_tokens_to_a_text_only_model_raise() -> None:
    t2v = WanTransformer3DModel.from_config({**TINY, "in_channels": 16, "image_dim": None, "added_kv_proj_dim": None})
    inputs = make_inputs(torch.float32)
    inputs["hidden_states"] = inputs["hidden_states"][:, :16]
    with pytest.raises(ValueError, match="without an image path"):
        t2v(**inputs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"added_kv_proj_dim": None}, r"image_dim=24 and added_kv_proj_dim=None must be set together"),
        ({"image_dim": None}, r"image_dim=None and added_kv_proj_dim=64 must be set together"),
        ({"added_kv_proj_dim": 32}, r"added_kv_proj_dim=32 must equal num_attention_heads x attention_head_dim = 64"),
        ({"pos_embed_seq_len": 514}, r"pos_embed_seq_len=514 is not supported \(first-last-frame"),
        ({"image_dim": 0}, r"image_dim=0 must be positive"),
    ],
)
def test_unsupported_config_raises(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WanTransformer3DModel.from_config({**TINY, "_class_name": "WanTransformer3DModel", **change})


def test_classes_refuse_the_other_config() -> None:
    with pytest.raises(ValueError, match="WanTransformer3DModel cannot be built from a config with image_dim=24"):
        WanTransformer3DModel(WanConfig.from_dict(TINY))
    with pytest.raises(ValueError, match="WanImageTransformer3DModel cannot be built from a config with image_dim=No"):
        WanImageTransformer3DModel(WanConfig.from_dict({**TINY, "image_dim": None, "added_kv_proj_dim": None}))


# --- multi-rank: the image path under TP, SP (Ulysses) and TP x SP on gloo, against one rank ----------------------

TOPOLOGIES = {"tp2": (2, 1), "sp2": (1, 2), "tp2sp2": (2, 2)}


def worker(rank: int, world: int, port: int, tp: int, sp: int, folder: str, out_dir: str) -> None:
    """One rank, launched as torchrun would: the sharded load, the full output and the first block's output."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    mesh = init_parallel(tp=tp, sp=sp, timeout_s=120)
    try:
        model = load_parallel_component(WanTransformer3DModel, Path(folder), mesh)
        ctx = get_parallel_context(model)
        captured: list[torch.Tensor] = []
        model.blocks[0].register_forward_hook(lambda _m, _i, out: captured.append(gather_sequence(out, ctx)))
        with torch.no_grad():
            output = model(**make_inputs(torch.float32))
        shapes = {name: list(p.shape) for name, p in model.named_parameters()}
        wrapped = [name for name, m in model.named_modules() if isinstance(m, UlyssesAttention)]
        (Path(out_dir) / f"meta{rank}.json").write_text(json.dumps({"shapes": shapes, "ulysses": wrapped}))
        torch.save({"output": output, "block0": captured[0]}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        destroy_parallel()


@pytest.fixture(scope="module")
def single_rank(models: Models) -> dict[str, torch.Tensor]:
    _, native = models.get()
    captured: list[torch.Tensor] = []
    handle = native.blocks[0].register_forward_hook(lambda _m, _i, out: captured.append(out))
    output = models.native(torch.float32)
    handle.remove()
    return {"output": output, "block0": captured[0]}


@pytest.fixture(scope="module", params=list(TOPOLOGIES), ids=list(TOPOLOGIES))
def topology(request: pytest.FixtureRequest, models: Models, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tp, sp = TOPOLOGIES[request.param]
    out_dir = tmp_path_factory.mktemp(f"i2v-{request.param}")
    args = (tp * sp, free_port(), tp, sp, str(models.folder), str(out_dir))
    mp.start_processes(worker, args=args, nprocs=tp * sp, join=True, start_method="fork")
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(tp * sp)]
    meta = [json.loads((out_dir / f"meta{r}.json").read_text()) for r in range(tp * sp)]
    return {"name": request.param, "tp": tp, "sp": sp, "ranks": ranks, "meta": meta}


@pytest.mark.parametrize("record", ["output", "block0"])
def test_parallel_matches_single_rank(topology: dict, single_rank: dict[str, torch.Tensor], record: str) -> None:
    expected = single_rank[record]
    for rank, results in enumerate(topology["ranks"]):
        err = rel_l2(results[record], expected)
        print(f"I2V {topology['name']} rank {rank} {record}: rel_l2 {err:.3e}")
        assert results[record].shape == expected.shape and err <= PARALLEL_REL_L2, f"rank {rank}: {err:.3e}"


def test_parallel_shards_the_image_projections_and_exchanges_no_context(topology: dict) -> None:
    tp, inner = topology["tp"], TINY["num_attention_heads"] * TINY["attention_head_dim"]
    for meta in topology["meta"]:
        shapes = meta["shapes"]
        assert shapes["blocks.0.attn2.add_k_proj.weight"] == [inner // tp, TINY["added_kv_proj_dim"]]
        assert shapes["blocks.1.attn2.add_v_proj.bias"] == [inner // tp]
        assert shapes["blocks.0.attn2.norm_added_k.weight"] == [inner // tp]
        assert shapes["condition_embedder.image_embedder.ff.net.0.proj.weight"] == [TINY["image_dim"]] * 2  # whole
        expected = ["blocks.0.attn1.core", "blocks.1.attn1.core"] if topology["sp"] > 1 else []
        assert meta["ulysses"] == expected
