"""Tensor- and sequence-parallel Wan DiT (gloo, forked processes on 127.0.0.1) against the 1-rank native DiT.

One launch per topology (TP=2, SP=2, TP=2 x SP=2) runs every check of that topology: two latent shapes (8 tokens,
which divide by every SP size, and 3 frames -> 45 tokens, which need padding), the canonical capture of the first
block's sequence-sharded output, and deliberately broken shards. Each rank saves its results; this process
compares them with a single-rank run of the same checkpoint.

Tolerance: rel_l2 <= 1e-5 (the issue's bar). The parallel run differs from the 1-rank run only in summation
order (row-parallel partial products all-reduced, RMSNorm statistics all-reduced, attention over a masked or
differently laid-out key set), which costs ~1e-7 in fp32; a broken shard costs orders of magnitude more.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from numerics import cosine, rel_l2
from parallel_faults import faults_for, mutate
from safetensors.torch import save_file

from harness.run.multirank import free_port
from native_models.errors import NativeError
from native_models.loader import load_component
from native_models.models.wan_transformer import WanConfig, WanTransformer3DModel
from native_models.parallel import (
    ParallelError,
    ParallelMesh,
    comm,
    destroy_parallel,
    gather_sequence,
    init_parallel,
    load_parallel_component,
    parallel_context,
    parallelize,
)
from native_models.parallel.context import ParallelContext, SequenceLayout
from native_models.parallel.mesh import check_sizes
from native_models.parallel.plan import apply_plan, matching_modules
from native_models.parallel.sequence_parallel import UlyssesAttention
from native_models.parallel.tensor_parallel import Colwise, ShardedRMSNorm

PARITY_REL_L2 = 1e-5
BROKEN_MIN_REL_L2 = 10 * PARITY_REL_L2  # a broken shard must miss the parity bar by at least 10x
BF16_COSINE = 0.999  # the harness' bf16 bar

TINY = {
    "num_layers": 2,
    "num_attention_heads": 4,  # 4 heads: split 2 ways by TP, then 2 ways by Ulysses within a TP shard
    "attention_head_dim": 16,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 128,
    "patch_size": [1, 2, 2],
    "rope_max_seq_len": 1024,
}
SHAPES = {  # latent (T, H, W) -> token grid (T, H/2, W/2)
    "even": (2, 4, 4),  # 8 tokens: divides by 2 and 4
    "odd": (3, 6, 10),  # 3 frames, 45 tokens: padded to 46 for SP=2
}
TEXT_LEN = 7
BATCH = 2
TOPOLOGIES = {"tp2": (2, 1), "sp2": (1, 2), "tp2sp2": (2, 2)}  # name -> (tp, sp)
# fork: the ranks inherit this process' imports (torch, the models) instead of re-importing them, which costs
# ~3 s of CPU per rank; nothing multi-threaded or distributed has started in this process when it forks.
START_METHOD = "fork"


def make_inputs(shape: tuple[int, int, int], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return {
        "hidden_states": torch.randn(BATCH, TINY["in_channels"], *shape, generator=gen).to(dtype),
        "timestep": torch.tensor([999.0, 431.5]),
        "encoder_hidden_states": torch.randn(BATCH, TEXT_LEN, TINY["text_dim"], generator=gen).to(dtype),
    }


Capture = Callable[[torch.Tensor], torch.Tensor]


def run_shapes(model: WanTransformer3DModel, capture: Capture) -> dict[str, torch.Tensor]:
    """Output and canonical first-block output for every shape."""
    captured: list[torch.Tensor] = []
    handle = model.blocks[0].register_forward_hook(lambda _m, _i, out: captured.append(capture(out)))
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, shape in SHAPES.items():
            results[f"{name}/output"] = model(**make_inputs(shape))
            results[f"{name}/block0"] = captured.pop()
    handle.remove()
    return results


# --- deliberately broken shards: instance mutations of a parallelized model, as references/wan/faults.py does ---


def heads_back_in_wrong_order(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Ulysses' return all-to-all with the head chunks of the ranks put back in reverse order."""
    out = comm.heads_to_sequence(x, group)  # (B, H, L/w, D)
    return out.unflatten(1, (comm.group_size(group), -1)).flip(1).flatten(1, 2)


FAULTS: dict[str, tuple[str, Callable[[torch.nn.Module], None]]] = {  # name -> (shape, mutation)
    "sp_heads_wrong_order": ("even", mutate(UlyssesAttention, to_sequence=heads_back_in_wrong_order)),
    "sp_padding_unmasked": ("odd", mutate(UlyssesAttention, mask_padded_keys=False)),
    # the q/k norm spans all heads; without its all-reduce each rank normalises by its own heads' sum of squares
    "tp_qk_norm_not_reduced": ("even", mutate(ShardedRMSNorm, group=None)),
}


def worker(rank: int, world: int, port: int, tp: int, sp: int, folder: str, out_dir: str) -> None:
    """One rank, launched as torchrun would: environment variables, then init_parallel and the sharded load."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    mesh = init_parallel(tp=tp, sp=sp, timeout_s=120)
    try:
        model = load_parallel_component(WanTransformer3DModel, Path(folder), mesh)
        ctx = parallel_context(model)
        results = run_shapes(model, lambda out: gather_sequence(out, ctx))
        block = model.blocks[0]
        groups = {"attn1.fused_qkv": block.attn1.fused_qkv, "attn2.fused_kv": block.attn2.fused_kv}
        fused = {name: None if group.weight is None else list(group.weight.shape) for name, group in groups.items()}
        (Path(out_dir) / f"fused{rank}.json").write_text(json.dumps(fused))
        bf16 = load_parallel_component(WanTransformer3DModel, Path(folder), mesh, dtype=torch.bfloat16)
        with torch.no_grad():
            results["odd/output_bf16"] = bf16(**make_inputs(SHAPES["odd"], torch.bfloat16))
        for fault in faults_for(FAULTS, tp, sp):
            shape, apply = FAULTS[fault]
            broken = load_parallel_component(WanTransformer3DModel, Path(folder), mesh)
            apply(broken)
            with torch.no_grad():
                results[f"{fault}/output"] = broken(**make_inputs(SHAPES[shape]))
        shapes = {name: list(p.shape) for name, p in model.named_parameters()}
        (Path(out_dir) / f"params{rank}.json").write_text(json.dumps(shapes))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        destroy_parallel()


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Wan DiT in Diffusers layout (native-built: this file compares native with native)."""
    torch.manual_seed(0)
    model = WanTransformer3DModel(WanConfig.from_dict(TINY))
    with torch.no_grad():  # norm weights start at one / zero; perturb them so a dropped or mis-sharded weight shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("wan-parallel") / "transformer"
    folder.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", **TINY}))
    return folder


@pytest.fixture(scope="module")
def single_rank(checkpoint: Path) -> dict[str, torch.Tensor]:
    model = load_component(WanTransformer3DModel, checkpoint)
    results = run_shapes(model, lambda out: out)
    bf16 = load_component(WanTransformer3DModel, checkpoint, dtype=torch.bfloat16)
    with torch.no_grad():
        results["odd/output_bf16"] = bf16(**make_inputs(SHAPES["odd"], torch.bfloat16))
    return results


@pytest.fixture(scope="module", params=list(TOPOLOGIES), ids=list(TOPOLOGIES))
def topology(request: pytest.FixtureRequest, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tp, sp = TOPOLOGIES[request.param]
    out_dir = tmp_path_factory.mktemp(request.param)
    world = tp * sp
    args = (world, free_port(), tp, sp, str(checkpoint), str(out_dir))
    mp.start_processes(worker, args=args, nprocs=world, join=True, start_method=START_METHOD)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(world)]
    params = [json.loads((out_dir / f"params{r}.json").read_text()) for r in range(world)]
    fused = [json.loads((out_dir / f"fused{r}.json").read_text()) for r in range(world)]
    return {"name": request.param, "tp": tp, "sp": sp, "ranks": ranks, "params": params, "fused": fused}


# --- multi-process parity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [f"{s}/{f}" for s in SHAPES for f in ("output", "block0")])
def test_parallel_matches_single_rank(topology: dict, single_rank: dict[str, torch.Tensor], record: str) -> None:
    expected = single_rank[record]
    for rank, results in enumerate(topology["ranks"]):
        actual = results[record]
        assert actual.shape == expected.shape, f"{topology['name']} rank {rank} {record}: {actual.shape}"
        err = rel_l2(actual, expected)
        print(f"{topology['name']} rank {rank} {record} {tuple(actual.shape)}: rel_l2 {err:.3e}")
        assert err <= PARITY_REL_L2, f"{topology['name']} rank {rank} {record}: rel_l2 {err:.3e} > {PARITY_REL_L2}"


def test_bf16_parallel_stays_close(topology: dict, single_rank: dict[str, torch.Tensor]) -> None:
    """bf16 under TP rounds partial products before the all-reduce; it must stay within the harness' bf16 bar."""
    expected = single_rank["odd/output_bf16"]
    actual = topology["ranks"][0]["odd/output_bf16"]
    cos = cosine(actual, expected)
    print(f"{topology['name']} bf16 odd/output: cosine {cos:.7f}, rel_l2 {rel_l2(actual, expected):.3e}")
    assert actual.dtype == torch.bfloat16 and cos >= BF16_COSINE, f"bf16 cosine {cos:.6f} < {BF16_COSINE}"


def test_every_rank_returns_the_same_output(topology: dict) -> None:
    first = topology["ranks"][0]
    for rank, results in enumerate(topology["ranks"][1:], start=1):
        for name in SHAPES:
            assert torch.equal(results[f"{name}/output"], first[f"{name}/output"]), f"rank {rank} differs on {name}"


def test_weights_are_sharded(topology: dict) -> None:
    tp, inner, ffn = topology["tp"], TINY["num_attention_heads"] * TINY["attention_head_dim"], TINY["ffn_dim"]
    for shapes in topology["params"]:
        assert shapes["blocks.0.attn1.to_q.weight"] == [inner // tp, inner]
        assert shapes["blocks.1.attn2.to_out.0.weight"] == [inner, inner // tp]
        assert shapes["blocks.0.attn1.norm_k.weight"] == [inner // tp]
        assert shapes["blocks.0.ffn.net.0.proj.weight"] == [ffn // tp, inner]
        assert shapes["blocks.0.ffn.net.2.weight"] == [inner, ffn // tp]
        assert shapes["blocks.0.ffn.net.2.bias"] == [inner]
        assert shapes["proj_out.weight"] == [TINY["out_channels"] * 4, inner]


def test_projections_are_fused_per_rank(topology: dict) -> None:
    """Each rank fuses its own shards (q/k/v of self-attention, k/v of cross-attention) into one GEMM, so the parity
    checks above ran the fused path under TP."""
    tp, inner = topology["tp"], TINY["num_attention_heads"] * TINY["attention_head_dim"]
    for fused in topology["fused"]:
        assert fused == {"attn1.fused_qkv": [3 * inner // tp, inner], "attn2.fused_kv": [2 * inner // tp, inner]}


def test_broken_shard_is_caught(topology: dict, single_rank: dict[str, torch.Tensor]) -> None:
    for fault in faults_for(FAULTS, topology["tp"], topology["sp"]):
        shape = FAULTS[fault][0]
        err = rel_l2(topology["ranks"][0][f"{fault}/output"], single_rank[f"{shape}/output"])
        print(f"{topology['name']} broken shard {fault}: rel_l2 {err:.3e}")
        assert err > BROKEN_MIN_REL_L2, f"{fault} changed the output by only {err:.3e}: the comparison is blind to it"


# --- single-process checks of the plan machinery -------------------------------------------------------------


def fake_mesh(tp: int, sp: int, rank: int = 0) -> ParallelMesh:
    """A mesh without process groups: enough to apply plans (sharding needs no traffic), not to run them."""
    return ParallelMesh(tp=tp, sp=sp, rank=rank)


def tiny_model(**changes: object) -> WanTransformer3DModel:
    return WanTransformer3DModel(WanConfig.from_dict({**TINY, **changes}))


def test_plan_pattern_matching_nothing_raises() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\['blocks\.\*\.attn3\.to_q'\] match no module"):
        apply_plan(model, {"blocks.*.attn3.to_q": Colwise()}, ParallelContext(fake_mesh(2, 1)), "_tp_plan")


def test_plan_patterns_all_match() -> None:
    model = tiny_model()
    for plan in (WanTransformer3DModel._tp_plan, WanTransformer3DModel._sp_plan):
        for pattern in plan:
            assert matching_modules(model, pattern), pattern
    assert matching_modules(model, "blocks.*.attn*.to_q") == [
        "blocks.0.attn1.to_q", "blocks.0.attn2.to_q", "blocks.1.attn1.to_q", "blocks.1.attn2.to_q"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("heads", "tp", "sp", "message"),
    [(4, 3, 1, "does not divide by tensor-parallel size 3"), (6, 2, 2, "3 heads per rank do not divide by sequence")],
)
def test_heads_not_divisible_raise(heads: int, tp: int, sp: int, message: str) -> None:
    model = tiny_model(num_attention_heads=heads)
    with pytest.raises(ParallelError, match=message):
        parallelize(model, fake_mesh(tp, sp))


def test_world_size_mismatch_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ParallelError, match=r"tp=2 x sp=2 = 4 ranks, but the launcher started WORLD_SIZE=2"):
        check_sizes(2, 2, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ParallelError, match="MASTER_ADDR"):
        init_parallel(tp=2)
    assert issubclass(ParallelError, NativeError)  # one-line CLI error, exit code 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sharded_rms_norm_equals_torch_on_one_rank(dtype: torch.dtype) -> None:
    """Unsharded, the all-reduced RMSNorm is torch's RMSNorm bit for bit (so TP=2 differs by summation order only)."""
    gen = torch.Generator().manual_seed(5)
    norm = torch.nn.RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.add_(torch.randn(64, generator=gen))
    norm = norm.to(dtype)
    x = torch.randn(2, 45, 64, generator=gen).to(dtype)
    assert torch.equal(ShardedRMSNorm(norm.weight, 64, 1e-6, None)(x), norm(x))


def test_sequence_layout_pads_splits_and_strips() -> None:
    x = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)
    shards = [SequenceLayout(5, 2, r).split(x, dim=1) for r in range(2)]
    assert [s.shape[1] for s in shards] == [3, 3]
    assert torch.equal(shards[1][:, 2], torch.zeros(2, 3))  # the pad sits at the end of the last shard
    full = SequenceLayout(5, 2, 0).strip(torch.cat(shards, dim=1), dim=1)
    assert torch.equal(full, x)
    assert SequenceLayout(6, 2, 0).key_mask(torch.device("cpu")) is None
    assert SequenceLayout(5, 2, 0).key_mask(torch.device("cpu")).flatten().tolist() == [True] * 5 + [False]
