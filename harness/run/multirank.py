"""Multi-rank native runs: the native pipeline on tp x sp ranks, launched from the harness, compared twice.

The harness starts N = tp * sp processes on this machine (torch.multiprocessing, a free port on 127.0.0.1, gloo
on the CPU, NCCL on CUDA with one GPU per rank), as torchrun would: every rank loads the pipeline with its shard
of the parallel components (`ComposedPipeline._parallel_modules`, split by the model's `_tp_plan` / `_sp_plan`)
and runs the same request with the same seed, free and then teacher-forced. Rank 0 records the traces. Every
record of a pipeline is canonical on every rank: the DiT gathers its sequence shards (padding stripped) after
`proj_out` and all-reduces its row-parallel outputs, so its output, and everything computed from it, is whole
on each rank; the sharded activations live inside the DiT only (`gather_sequence` turns one into its canonical
tensor). Each rank also keeps the latents it hands the VAE, so the run can say whether every rank produced the
same result; the VAE is whole on every rank, so rank 0 alone decodes them (the others' frames would be copies).

A parity run with a topology compares the rank-0 trace with Diffusers (the report's main comparison) and with a
single-rank native run of the same request (`report["ranks"]["vs_single_rank"]`, default tolerances: the issue's
fp32 bar rel_l2 <= 1e-5): outputs that change with the number of ranks at a fixed seed fail the run.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.compare.records import Comparison, compare_traces
from harness.compare.tolerances import ToleranceSpec
from harness.lifetime import temporary_folder
from harness.report.build import describe_first_divergence, stage_summary
from harness.run.forcing import FORCED_STAGES
from harness.run.native_runner import NativePlan, plan_native_run, run_native
from harness.run.request import GenerationRequest
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace
from harness.trace.streaming import TraceReader, open_trace
from native_models.components import MODEL_CLASSES
from native_models.loader import read_json, read_model_index
from native_models.meta_build import BUILT_NUMEL, build_on_meta
from native_models.parallel import ParallelError, destroy_parallel, init_parallel
from native_models.pipeline import ComposedPipeline

# forkserver: one clean server process imports torch, the native runtime, every native model module
# (native_models/warm_start.py, which then freezes the server's heap) and transformers' tokenizer machinery, once
# (2-4 s of import per rank otherwise); every rank is forked from it. Cheaper than spawn and safe where fork is
# not (the harness process has run multi-threaded torch code and the reference side by then).
START_METHOD = "forkserver"
# native_models.warm_start last: it freezes the forkserver's heap once everything is imported
PRELOAD = ["harness.run.multirank", "transformers.models.auto.tokenization_auto", "native_models.warm_start"]


class MultiRankError(RuntimeError):
    """A rank failed while the others waited: the first failure, in one line."""


@dataclass(frozen=True)
class Topology:
    """How many ranks split the parallel components: tensor parallel x sequence parallel (Ulysses)."""

    tp: int = 1
    sp: int = 1

    def __post_init__(self) -> None:
        for name in ("tp", "sp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParallelError(f"--{name} must be a positive integer, got {value!r}")

    @property
    def world(self) -> int:
        return self.tp * self.sp

    @property
    def is_parallel(self) -> bool:
        return self.world > 1

    @property
    def name(self) -> str:
        parts = [f"tp{self.tp}" if self.tp > 1 else "", f"sp{self.sp}" if self.sp > 1 else ""]
        return "x".join(p for p in parts if p) or "1 rank"

    def to_dict(self, device: str) -> dict[str, Any]:
        return {"tp": self.tp, "sp": self.sp, "world": self.world, "name": self.name,
                "backend": "nccl" if torch.device(device).type == "cuda" else "gloo", "launcher": START_METHOD}


def check_topology(topology: Topology, checkpoint: Path, plan: NativePlan, device: str) -> None:
    """Raise ParallelError (one line, exit 2) before anything runs when `topology` cannot run this checkpoint:
    too few GPUs for one per rank, a parallel component without the plan it needs, heads that do not split."""
    if not topology.is_parallel:
        return
    if torch.device(device).type == "cuda" and torch.cuda.device_count() < topology.world:
        raise ParallelError(f"{topology.name} needs {topology.world} CUDA devices (one per rank), "
                            f"torch sees {torch.cuda.device_count()}")
    components = read_model_index(checkpoint)
    for name in plan.pipeline_cls._parallel_modules:
        if name not in components or components[name][1] not in MODEL_CLASSES:
            continue
        module_name, class_name = MODEL_CLASSES[components[name][1]].split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        for size, plan_attr, flag in ((topology.tp, "_tp_plan", "--tp"), (topology.sp, "_sp_plan", "--sp")):
            if size > 1 and not getattr(cls, plan_attr, None):
                raise ParallelError(f"{cls.__name__} ({name}) declares no {plan_attr}: {flag} {size} is not "
                                    "supported for this model")
        check = getattr(cls, "check_parallel", None)
        if check is not None:
            model = build_on_meta(cls, read_json(checkpoint / name / "config.json"))  # no weights read
            try:
                model.check_parallel(topology.tp, topology.sp)
            except ValueError as exc:
                raise ParallelError(str(exc)) from None


class _Discard(Trace):
    """What ranks other than 0 record into: nothing (rank 0 holds the same canonical tensors)."""

    def record(self, stage: str, field: str, tensor: torch.Tensor, step: int | None = None) -> None:
        return None


VAE_INPUT = RecordKey("decode", "latents")


class _VaeInputOnly(Trace):
    """What ranks other than 0 record their free run into: the latents handed to the VAE, which every rank must
    agree on (only rank 0 decodes them: native_models/pipeline.py add_decoding_stage)."""

    def record(self, stage: str, field: str, tensor: torch.Tensor, step: int | None = None) -> None:
        if (stage, field, step) == (VAE_INPUT.stage, VAE_INPUT.field, VAE_INPUT.step):
            super().record(stage, field, tensor, step)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def launcher_store(world: int) -> Iterator[int]:
    """A rendezvous store served by the launcher while its ranks run (as torchrun's agent serves one; the ranks
    connect with TORCHELASTIC_USE_AGENT_STORE=True, see `rank_environment`): every rank meets a store that is
    already listening. When rank 0 served it, a rank that started first waited out TCPStore's reconnect delay
    (~0.5 s of every 4-rank launch here). Yields the port; the OS picks it, so no other process can take it."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, world_size=world, is_master=True, wait_for_workers=False)
    try:
        yield store.port
    finally:
        del store


def rank_environment(rank: int, world: int, port: int) -> dict[str, str]:
    """What torchrun sets for a rank whose launcher serves the rendezvous store (`launcher_store`)."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank), "TORCHELASTIC_USE_AGENT_STORE": "True"}


@dataclass(frozen=True)
class _RankJob:
    """Everything a rank needs (picklable: it crosses into the rank's process)."""

    checkpoint: Path
    request: GenerationRequest
    topology: Topology
    work_dir: Path
    port: int
    threads: int
    model: str | None
    meta: dict[str, Any]
    forcing: bool
    mutate: Callable[[ComposedPipeline], None] | None
    # the launcher's config size checks (meta_build.BUILT_NUMEL): a rank loading the same configs skips its own
    # meta-device builds of them
    built_numel: list[tuple[Any, int]] = field(default_factory=list)


def _rank_main(rank: int, job: _RankJob) -> None:
    """One rank: join the mesh as torchrun would, run the pipeline free (and forced), rank 0 saves the traces."""
    os.environ.update(rank_environment(rank, job.topology.world, job.port))
    torch.set_num_threads(job.threads)
    BUILT_NUMEL.update(job.built_numel)
    # Ctrl-C reaches the whole process group: the harness process owns the stop (harness/lifetime.py stops the
    # ranks), a rank does not die on its own with a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    mesh = init_parallel(tp=job.topology.tp, sp=job.topology.sp, device=job.request.device)
    try:
        # the launcher checked every component of this folder before starting the ranks
        plan = plan_native_run(job.checkpoint, job.request, model_name=job.model, check_weights=False)
        meta = {**job.meta, "ranks": job.topology.to_dict(job.request.device)}
        keep = rank == 0
        trace = open_trace(meta, spool_dir=job.work_dir) if keep else _VaeInputOnly(meta)
        forced = None
        reference = None
        if job.forcing:
            forced = open_trace(meta, spool_dir=job.work_dir) if keep else _Discard(meta)
            reference = TraceReader(job.work_dir / "reference.safetensors")
        frames = run_native(job.checkpoint, job.request, trace, plan=plan, mutate=job.mutate, reference=reference,
                            forced_trace=forced, mesh=mesh)
        torch.save(trace[VAE_INPUT], job.work_dir / f"vae_input{rank}.pt")
        if keep:
            torch.save(frames, job.work_dir / "frames.pt")
            trace.save(job.work_dir / "native.safetensors")
            if forced is not None:
                if forced.meta.get("forcing_skipped"):
                    (job.work_dir / "forcing_skipped.txt").write_text(str(forced.meta["forcing_skipped"]))
                else:
                    forced.save(job.work_dir / "native_forced.safetensors")
    finally:
        destroy_parallel()


@dataclass
class RankRun:
    """The native side of a multi-rank parity run, and its comparison with the single-rank native run."""

    topology: Topology
    device: str
    trace: Trace  # rank 0's free run
    forced_trace: Trace | None  # rank 0's teacher-forced run; None without forcing
    frames: torch.Tensor  # rank 0's decoded frames in [0, 1]
    ranks_identical: bool  # every rank handed the VAE bit-identical latents (rank 0 decodes them)
    single_trace: Trace | None = None  # the single-rank native run of the same request
    single_forced_trace: Trace | None = None
    vs_single: Comparison | None = None
    forcing_skipped: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.ranks_identical and (self.vs_single is None or self.vs_single.passed)

    def compare_with_single_rank(self, dtype: str) -> Comparison:
        """Rank 0's traces against the single-rank run's, under the default tolerances of `dtype`."""
        if self.single_trace is None:
            raise ValueError("no single-rank native run to compare with")
        spec = ToleranceSpec(dtype)
        comparison = compare_traces(self.single_trace, self.trace, dtype, spec)
        if self.forced_trace is not None and self.single_forced_trace is not None:
            comparison.forced_records = compare_traces(self.single_forced_trace, self.forced_trace, dtype, spec,
                                                       mode="forced", stages=FORCED_STAGES).records
        self.vs_single = comparison
        return comparison

    def section(self) -> dict[str, Any]:
        """report["ranks"]: the topology, whether every rank agreed, and the comparison with one rank."""
        data: dict[str, Any] = {"topology": self.topology.to_dict(self.device),
                                "ranks_identical": self.ranks_identical,
                                "timings_s": {k: round(v, 3) for k, v in self.timings.items()}}
        if self.vs_single is not None:
            comparison = self.vs_single
            first = comparison.first_divergence
            records = [r for r in comparison.all_records() if "rel_l2" in r.metrics]
            worst = max(records, key=lambda r: r.metrics["rel_l2"], default=None)
            data["vs_single_rank"] = {
                "verdict": "pass" if comparison.passed else "fail",
                "first_divergence": None if first is None else {"stage": first.stage, "field": first.field,
                                                                 "step": first.step},
                "first_divergence_mode": None if first is None else first.mode,
                "first_divergence_detail": describe_first_divergence(comparison),
                "worst": None if worst is None else {"stage": worst.stage, "field": worst.field, "step": worst.step,
                                                     "mode": worst.mode, "rel_l2": worst.metrics["rel_l2"]},
                "tolerances": ToleranceSpec(self.trace.meta.get("dtype", "fp32")).describe(),
                "stages": stage_summary(comparison),
                "records": [r.to_dict() for r in comparison.all_records()],
            }
        return data

    def save_traces(self, out_dir: Path) -> list[str]:
        """native_1rank(.forced).safetensors beside the run's other traces; returns the file names written."""
        written = []
        for name, trace in (("native_1rank.safetensors", self.single_trace),
                            ("native_1rank_forced.safetensors", self.single_forced_trace)):
            if trace is not None:
                trace.save(out_dir / name)
                written.append(name)
        return written


def launch_ranks(job: Any, main: Callable[[int, Any], None] = _rank_main) -> None:
    """Run `main(rank, job)` (default `_rank_main`) on every rank of `job.topology` and wait; a failing rank stops
    the others (MultiRankError, one line). `main` must be a module-level function (forkserver imports it)."""
    import multiprocessing

    import torch.multiprocessing as mp

    if START_METHOD == "forkserver":
        multiprocessing.set_forkserver_preload(PRELOAD)  # a no-op once the server runs
    try:
        mp.start_processes(main, args=(job,), nprocs=job.topology.world, join=True, start_method=START_METHOD)
    except mp.ProcessRaisedException as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        raise MultiRankError(f"rank {exc.error_index} of {job.topology.name} failed: {lines[-1].strip()}") from None
    except mp.ProcessExitedException as exc:
        raise MultiRankError(f"rank {exc.error_index} of {job.topology.name} exited with code {exc.exit_code}"
                             ) from None


def run_native_ranks(
    checkpoint: Path,
    request: GenerationRequest,
    topology: Topology,
    meta: dict[str, Any],
    model: str | None = None,
    mutate: Callable[[ComposedPipeline], None] | None = None,
    reference: Trace | None = None,
    spool_dir: Path | None = None,
) -> RankRun:
    """Run the native pipeline on `topology`'s ranks; with `reference`, each rank also runs teacher-forced.

    `mutate` (a fault: harness/verdicts/faults.py) is applied on every rank and must be picklable (a module-level
    function). The traces come back as rank 0 recorded them; the rank files live in a private folder (in
    `spool_dir` when given) that is deleted before returning.
    """
    threads = max(1, torch.get_num_threads() // topology.world)
    # removed on every way out; a stop signal stops the ranks first (harness/lifetime.py), so none writes into it
    with temporary_folder("ranks", spool_dir) as work_dir:
        if reference is not None:
            reference.save(work_dir / "reference.safetensors")
        start = time.perf_counter()
        with launcher_store(topology.world) as port:
            job = _RankJob(Path(checkpoint), request, topology, work_dir, port, threads, model, dict(meta),
                           reference is not None, mutate, BUILT_NUMEL.entries())
            launch_ranks(job)
        elapsed = time.perf_counter() - start
        trace = TraceReader(work_dir / "native.safetensors")  # opened now: readable after the folder is gone
        forced_file = work_dir / "native_forced.safetensors"
        forced = TraceReader(forced_file) if forced_file.is_file() else None
        skipped_file = work_dir / "forcing_skipped.txt"
        skipped = skipped_file.read_text() if skipped_file.is_file() else None
        frames = torch.load(work_dir / "frames.pt", weights_only=True)
        vae_inputs = [torch.load(work_dir / f"vae_input{rank}.pt", weights_only=True) for rank in range(topology.world)]
    identical = all(torch.equal(v, vae_inputs[0]) for v in vae_inputs[1:])
    return RankRun(topology, request.device, trace, forced, frames, identical, forcing_skipped=skipped,
                   timings={"ranks": elapsed})


def run_single_rank_baseline(
    run: RankRun,
    checkpoint: Path,
    request: GenerationRequest,
    plan: NativePlan,
    meta: dict[str, Any],
    reference: Trace | None = None,
    spool_dir: Path | None = None,
) -> None:
    """The same request on one rank, in this process (free, and forced from `reference`), into `run`."""
    start = time.perf_counter()
    single = open_trace({**meta, "ranks": Topology().to_dict(request.device)}, spool_dir=spool_dir)
    forced = open_trace(dict(meta), spool_dir=spool_dir) if reference is not None else None
    run_native(checkpoint, request, single, plan=plan, reference=reference, forced_trace=forced)
    run.single_trace = single
    run.single_forced_trace = None if forced is None or forced.meta.get("forcing_skipped") else forced
    run.timings["single_rank"] = time.perf_counter() - start
