"""Multi-rank runs are refused before anything runs when the topology cannot work (harness/run/multirank.py), and
`diffparity run` passes --frames / --tp / --sp through. The multi-rank parity itself is cases/test_wan.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.run.cases import get_case
from harness.run.multirank import Topology, check_topology
from harness.run.native_runner import plan_native_run
from native_models.parallel import ParallelError


@pytest.fixture(scope="module")
def tiny_wan() -> Path:
    return get_case("wan-tiny").build_checkpoint()


def test_topology_sizes_and_names() -> None:
    assert (Topology().world, Topology().is_parallel, Topology().name) == (1, False, "1 rank")
    assert (Topology(2, 2).world, Topology(2, 2).name, Topology(1, 2).name) == (4, "tp2xsp2", "sp2")
    with pytest.raises(ParallelError, match="--sp must be a positive integer, got 0"):
        Topology(1, 0)


def test_a_model_without_a_plan_is_refused(tiny_flux: Path) -> None:
    plan = plan_native_run(tiny_flux, get_case("flux-tiny").request())
    with pytest.raises(ParallelError, match=r"FluxTransformer2DModel \(transformer\) declares no _tp_plan"):
        check_topology(Topology(tp=2), tiny_flux, plan, "cpu")


@pytest.mark.parametrize(("tp", "sp", "message"), [
    (8, 1, "num_attention_heads=4 does not divide by tensor-parallel size 8"),
    (2, 4, "4 / tp=2 = 2 heads per rank do not divide by sequence-parallel size 4"),
])
def test_heads_that_do_not_split_are_refused(tiny_wan: Path, tp: int, sp: int, message: str) -> None:
    plan = plan_native_run(tiny_wan, get_case("wan-tiny").request())
    with pytest.raises(ParallelError, match=message):
        check_topology(Topology(tp, sp), tiny_wan, plan, "cpu")
    check_topology(Topology(2, 2), tiny_wan, plan, "cpu")  # 4 heads: 2 per TP rank, 1 per Ulysses rank


def test_cuda_needs_one_gpu_per_rank(tiny_wan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    plan = plan_native_run(tiny_wan, get_case("wan-tiny").request())
    with pytest.raises(ParallelError, match="tp2xsp2 needs 4 CUDA devices \\(one per rank\\), torch sees 1"):
        check_topology(Topology(2, 2), tiny_wan, plan, "cuda")


def test_frames_reach_the_native_request(tiny_wan: Path) -> None:
    request = get_case("wan-tiny").request(frames=9)
    assert request.frames == 9 and plan_native_run(tiny_wan, request).batch.num_frames == 9


@pytest.mark.parametrize(("argv", "message"), [
    (["--tp", "8"], "does not divide by tensor-parallel size 8"),
    (["--frames", "6"], "Wan needs frames = 4k + 1 (1, 5, 9, ...), got 6"),
    (["--height", "40"], "height 40 is not divisible by 16"),
])
def test_cli_refuses_before_the_reference_runs(tiny_wan: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                argv: list[str], message: str) -> None:
    out = tmp_path / "out"
    assert main(["run", "wan-tiny", "--no-progress", "--out", str(out), *argv]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's one-line header
    assert error.startswith("diffparity run: error: ") and message in error and "internal error" not in error
    assert sorted(p.name for p in out.iterdir()) == ["error.json"]
    assert message in json.loads((out / "error.json").read_text())["error"]


def test_forked_ranks_start_from_a_frozen_warm_heap() -> None:
    """The forkserver preloads the native runtime and freezes its heap (native_models/warm_start.py, last in
    PRELOAD): a forked process starts with the imports' objects out of the collector's reach (a first full
    collection walked ~1 M of them in each rank) and ftfy (Wan's prompt cleaning) already imported. Checked in a
    fresh interpreter: this worker's own forkserver may have been started by another test with other modules."""
    import json
    import subprocess
    import sys

    from harness.run.multirank import PRELOAD, START_METHOD
    from harness.verdicts.fault_pool import PRELOAD as POOL_PRELOAD

    assert PRELOAD[-1] == POOL_PRELOAD[-1] == "native_models.warm_start"
    code = ("import gc, json, multiprocessing, sys\nfrom concurrent.futures import ProcessPoolExecutor\n"
            "multiprocessing.set_forkserver_preload(json.loads(sys.argv[1]))\n"
            "context = multiprocessing.get_context(sys.argv[2])\n"
            "with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:\n"
            "    frozen = pool.submit(gc.get_freeze_count).result(timeout=120)\n"
            "    wanted = \"{'ftfy', 'native_models.pipelines.wan'}\"\n"
            "    imported = pool.submit(eval, f\"sorted(__import__('sys').modules.keys() & {wanted})\").result(120)\n"
            "print(json.dumps([frozen, imported]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(PRELOAD), START_METHOD], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    frozen, imported = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else (0, proc.stderr)
    assert frozen > 100_000, (frozen, proc.stderr[-2000:])
    assert imported == ["ftfy", "native_models.pipelines.wan"]


def _no_decode_but_on_rank_0(pipeline: object) -> None:
    """On ranks other than 0, a VAE decode raises (module level: the ranks import it)."""
    import torch.distributed as dist

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"rank {dist.get_rank()} decoded")

    if dist.get_rank() != 0:
        pipeline.get_module("vae").decode = refuse  # type: ignore[attr-defined]


def _and_rank_1_shifts_its_vae_input(pipeline: object) -> None:
    """As above, and rank 1 hands the VAE its latents plus 1e-3: a fault on one rank only."""
    import torch.distributed as dist

    _no_decode_but_on_rank_0(pipeline)
    if dist.get_rank() == 1:
        config = pipeline.config  # type: ignore[attr-defined]
        unpack = config.post_denoising_loop
        config.post_denoising_loop = lambda latents, batch: unpack(latents, batch) + 1e-3


@pytest.mark.parametrize("shift", [False, True], ids=["same", "rank1-shifted"])
def test_only_rank_0_decodes_and_the_ranks_vae_inputs_are_compared(tiny_wan: Path, tmp_path: Path,
                                                                   shift: bool) -> None:
    """The VAE is whole on every rank, so rank 0 alone decodes (free and forced); `ranks_identical` compares
    the latents each rank hands the VAE, and fails when one rank's differ."""
    from harness.run.multirank import run_native_ranks

    request = get_case("wan-tiny").request(steps=1, height=16, width=16, frames=1)
    mutate = _and_rank_1_shifts_its_vae_input if shift else _no_decode_but_on_rank_0
    run = run_native_ranks(tiny_wan, request, Topology(1, 2), {"case": "wan-tiny"}, mutate=mutate,
                           spool_dir=tmp_path)
    assert run.frames.shape[-2:] == (16, 16) and run.ranks_identical is not shift


def test_a_rank_other_than_0_records_the_vae_input_and_decodes_nothing() -> None:
    import torch

    from harness.trace.keys import RecordKey
    from harness.trace.memory import Trace
    from native_models.pipelines.wan import WanPipelineConfig
    from native_models.req import Req
    from native_models.stages.decoding import ReplicaDecodingStage

    class NoVae(torch.nn.Module):
        latents_mean, latents_std = [0.0] * 4, [1.0] * 4

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def decode(self, latents: torch.Tensor) -> None:
            raise AssertionError("a replica rank decoded")

    trace = Trace()
    batch = Req(prompt=["a"], height=16, width=16, num_inference_steps=1, latents=torch.ones(1, 4, 1, 2, 2),
                raw_latent_shape=(1, 4, 1, 2, 2), recorder=trace)
    batch = ReplicaDecodingStage(NoVae(), WanPipelineConfig())(batch)
    assert batch.output is None and trace.keys() == [RecordKey("decode", "latents")]


SENTINEL = ("a size check only the launcher made",)


def _the_launchers_size_checks_arrived(pipeline: object) -> None:
    from native_models.meta_build import BUILT_NUMEL

    assert BUILT_NUMEL.get(SENTINEL) == 7, "the rank did not get the launcher's size checks"


def test_ranks_start_with_the_launchers_size_checks(tiny_wan: Path, tmp_path: Path) -> None:
    """The launcher checked every component's config on the meta device before starting the ranks; the ranks
    take those results (meta_build.BUILT_NUMEL) instead of building the same configs again."""
    from harness.run.multirank import run_native_ranks
    from native_models.meta_build import BUILT_NUMEL

    BUILT_NUMEL.put(SENTINEL, 7)
    request = get_case("wan-tiny").request(steps=1, height=16, width=16, frames=1)
    run = run_native_ranks(tiny_wan, request, Topology(1, 2), {"case": "wan-tiny"},
                           mutate=_the_launchers_size_checks_arrived, spool_dir=tmp_path)
    assert run.ranks_identical
