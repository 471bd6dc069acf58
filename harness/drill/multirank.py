"""The drill of a multi-rank run: which module of the parallel component makes the ranks' output differ.

`drill_ranks` (for a parity run with a topology, harness/drill/parity_hook.py):
1. captures the reference's inputs to the divergent component call (harness/drill/session.py);
2. drills a single-rank native component (unbroken: as the parity run's single-rank baseline,
   harness/run/multirank.py) against the reference, and keeps its module outputs;
3. runs the native component on tp x sp ranks (each rank built, sharded and broken as in the parity run) on the
   same inputs, free, with a hook on every module that turns the rank's shard into the canonical tensor
   (`canonical`: sequence shards gathered with the padding stripped, head and feature shards gathered in rank
   order), so rank 0 holds every module's full output;
4. compares those gathered outputs with the single-rank run's (the same native names) and with the reference's.
The verdict is the first module in the ranks' execution order whose gathered output differs from the single-rank
run's: a broken shard, all-to-all or all-reduce is named at the module that does it (the Ulysses attention
`blocks.k.attn1.core`, the sharded norm `blocks.k.attn1.norm_q`), not "rank output differs". Local (module-level
forced) errors are those of the single-rank component: forcing a sharded module would need every input re-sharded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.drill.alignment import ComponentAlignment, alignment_for
from harness.drill.capture import Captured
from harness.drill.engine import CallResult, DrillPasses, FreeRun, Variant, compare_flats
from harness.drill.floors import DEFAULT_THRESHOLDS, Judgement, load_module_floors
from harness.drill.outputs import Flat
from harness.drill.result import Side, build_result
from harness.drill.session import Mutate, capture_reference, native_components, peak_rss_mib
from harness.drill.store import OutputStore
from harness.drill.target import DrillError, resolve_target
from harness.run.cases import Case
from harness.run.multirank import Topology, launch_ranks, launcher_store, rank_environment
from harness.run.native_runner import plan_native_run
from harness.run.request import GenerationRequest

RUN_FILE = "rank0_run.json"
OUTPUTS_FILE = "rank0_outputs.safetensors"


def canonical(x: torch.Tensor, expected: tuple[int, ...], ctx: Any) -> torch.Tensor | None:
    """A rank's tensor as the single-rank run's `expected` shape, gathering over the mesh (collective: every rank
    decides alike, from shapes alone), or None when its layout is not one the parallel plans make."""
    if tuple(x.shape) == expected:
        return x
    if ctx is None or x.ndim != len(expected):
        return None
    from native_models.parallel import comm

    mesh, sequence = ctx.mesh, ctx.sequence
    layout = sequence.layout if sequence is not None else None
    for dim in range(x.ndim):
        have, want = x.shape[dim], expected[dim]
        if have == want:
            continue
        if layout is not None and have == layout.shard and want == layout.length:
            x = sequence.gather(x.contiguous(), dim)
        elif layout is not None and have == layout.padded and want == layout.length:
            x = layout.strip(x, dim)
        elif mesh.tp > 1 and mesh.sp > 1 and have * mesh.tp * mesh.sp == want:  # heads split by TP, then Ulysses
            x = comm.all_gather_cat(comm.all_gather_cat(x, mesh.sp_group, dim), mesh.tp_group, dim)
        elif mesh.tp > 1 and have * mesh.tp == want:
            x = comm.all_gather_cat(x, mesh.tp_group, dim)
        elif mesh.sp > 1 and have * mesh.sp == want:
            x = comm.all_gather_cat(x, mesh.sp_group, dim)
        else:
            return None
    return x if tuple(x.shape) == expected else None


@dataclass(frozen=True)
class _DrillRankJob:
    """What a rank needs (picklable)."""

    checkpoint: Path
    request: GenerationRequest
    topology: Topology
    component: str
    method: str
    stage: str
    work_dir: Path
    port: int
    threads: int
    model: str | None
    mutate: Mutate | None


def _drill_rank_main(rank: int, job: _DrillRankJob) -> None:
    """One rank: build the parallel pipeline (broken as in the parity run), run the component free on the captured
    inputs with every module's output gathered; rank 0 keeps them."""
    from native_models.parallel import destroy_parallel, init_parallel, parallel_context

    os.environ.update(rank_environment(rank, job.topology.world, job.port))
    torch.set_num_threads(job.threads)
    mesh = init_parallel(tp=job.topology.tp, sp=job.topology.sp, device=job.request.device)
    try:
        # the launcher checked every component of this folder before starting the ranks
        plan = plan_native_run(job.checkpoint, job.request, model_name=job.model, check_weights=False)
        pipeline = plan.pipeline_cls(job.checkpoint, plan.config, dtype=plan.batch.dtype, device=plan.batch.device,
                                     mesh=mesh)
        if job.mutate is not None:
            job.mutate(pipeline)
        component = pipeline.get_module(job.component)
        args, kwargs = torch.load(job.work_dir / "inputs.pt", weights_only=True)
        expected = {tuple(json.loads(k)): tuple(v) for k, v in
                    json.loads((job.work_dir / "shapes.json").read_text()).items()}
        ctx = parallel_context(component)

        def gather(name: str, call: int, label: str, tensor: torch.Tensor) -> torch.Tensor | None:
            shape = expected.get((name, call, label))
            return tensor if shape is None else canonical(tensor, shape, ctx)

        store = OutputStore(job.stage, job.work_dir) if rank == 0 else None
        passes = DrillPasses(job.component, None, job.method, args, kwargs, ComponentAlignment("ranks"),
                             OutputStore(job.stage, job.work_dir))
        run = passes.free_pass(component, [], ComponentAlignment("ranks"), gather=gather, record_into=store)
        if store is not None:
            store.save(job.work_dir / OUTPUTS_FILE)
            (job.work_dir / RUN_FILE).write_text(json.dumps({
                "order": run.order, "calls": run.calls, "kinds": run.kinds, "outputs": run.outputs,
                "signatures": [[name, call, list(labels), named] for (name, call), (labels, named)
                               in run.signatures.items()],
                "problems": [[name, call, text] for (name, call), text in run.problems.items()],
            }))
    finally:
        destroy_parallel()


def _save_inputs(captured: Captured, work_dir: Path) -> None:
    torch.save((captured.args, captured.kwargs), work_dir / "inputs.pt")


def _rank_run(work_dir: Path) -> tuple[FreeRun, OutputStore]:
    data = json.loads((work_dir / RUN_FILE).read_text())
    run = FreeRun(calls=data["calls"], kinds=data["kinds"], outputs=data["outputs"], order=data["order"])
    run.signatures = {(name, call): (tuple(labels), named) for name, call, labels, named in data["signatures"]}
    run.problems = {(name, call): text for name, call, text in data["problems"]}
    return run, OutputStore.open(work_dir / OUTPUTS_FILE)


def _compare_stored(run: FreeRun, store: OutputStore, other: OutputStore,
                    signatures: dict[tuple[str, int], tuple[tuple[str, ...], bool]], name: str, other_name: str | None,
                    call: int) -> CallResult | None:
    """The ranks' stored outputs of (name, call) against `other`'s of (other_name, call)."""
    if (name, call) in run.problems:
        return CallResult(problem=run.problems[(name, call)])
    if other_name is None or (other_name, call) not in signatures or (name, call) not in run.signatures:
        return None
    labels, named = run.signatures[(name, call)]
    mine = tuple(store.get((name, call, label)) for label in labels)
    other_labels, other_named = signatures[(other_name, call)]
    theirs = tuple(other.get((other_name, call, label)) for label in other_labels)
    if any(s is None for s in mine):
        return CallResult(problem="a gathered output is missing")
    native = Flat(labels, tuple(s.tensor for s in mine), named)  # type: ignore[union-attr]
    return compare_flats(native, Flat(other_labels, theirs, other_named), stored=True)  # type: ignore[arg-type]


def drill_ranks(case: Case, request: GenerationRequest, checkpoint: Path, first: dict[str, Any], topology: Topology,
                model: str | None = None, mutate: Mutate | None = None,
                spool_dir: Path | None = None) -> dict[str, Any]:
    """report.json's `drill` section for a failing multi-rank run (module docstring)."""
    start = time.perf_counter()
    plan = plan_native_run(checkpoint, request, model_name=model)
    try:
        target = resolve_target(plan.config, request.do_true_cfg, request.steps, first["stage"], first.get("field"),
                                first.get("step"))
    except DrillError as exc:
        return {"status": "skipped", "reason": str(exc), "module": None}
    captured = capture_reference(case, checkpoint, request, [target])[target]
    single = native_components(checkpoint, request, {target.component}, model)[target.component]
    alignment = alignment_for(single)
    passes = DrillPasses(target.component, captured.module, target.method, captured.args, captured.kwargs,
                         alignment, OutputStore(target.stage, spool_dir))
    passes.forced_pass([Variant("native", single, alignment)])
    single_store = OutputStore(target.stage, spool_dir)
    single_run = passes.free_pass(single, [passes.baseline()], alignment, record_into=single_store)
    del single
    timings = {"single_rank": time.perf_counter() - start}
    start = time.perf_counter()
    if spool_dir is not None:
        Path(spool_dir).mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=".drill-ranks-", dir=spool_dir))
    try:
        _save_inputs(captured, work_dir)
        (work_dir / "shapes.json").write_text(json.dumps({json.dumps(list(k)): list(v)
                                                          for k, v in single_run.shapes.items()}))
        with launcher_store(topology.world) as port:
            job = _DrillRankJob(Path(checkpoint), request, topology, target.component, target.method, target.stage,
                                work_dir, port, max(1, torch.get_num_threads() // topology.world), model, mutate)
            launch_ranks(job, _drill_rank_main)
        rank_run, rank_store = _rank_run(work_dir)
        timings["ranks"] = time.perf_counter() - start
        reference_modules = dict(captured.module.named_modules())
        for name in rank_run.order:  # the ranks' outputs against the reference's, by the alignment's names
            for call in range(rank_run.calls.get(name, 0)):
                result = _compare_stored(rank_run, rank_store, passes.store, passes.signatures, name,
                                         alignment.reference_name(name, reference_modules), call)
                if result is not None:
                    rank_run.inherited[("reference", name, call)] = result
        floors = load_module_floors(case.name, request.dtype, request.device, model)
        result = build_result(passes, rank_run, floors, target.to_dict())
        single_names = set(single_run.calls)
        threshold = DEFAULT_THRESHOLDS.get(request.dtype, DEFAULT_THRESHOLDS["fp32"])["inherited"]
        for entry in result.entries:
            calls = [_compare_stored(rank_run, rank_store, single_store, single_run.signatures, entry.module,
                                     entry.module if entry.module in single_names else None, c)
                     for c in range(rank_run.calls.get(entry.module, 0))]
            calls = [c for c in calls if c is not None]
            worst = next((c for c in calls if c.fails), None) or max(
                (c for c in calls if c.metrics), key=lambda c: c.metrics["rel_l2"], default=None)  # type: ignore[index]
            if worst is None and calls:
                worst = calls[0]
            entry.ranks = Side(worst, Judgement(None, threshold, "default"))
            if entry.module not in single_names:
                entry.note = (entry.note + "; " if entry.note else "") + "no single-rank module of this name"
        rank_store.close()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        single_store.close()
        passes.store.close()
    result.timings.update(timings)
    result.memory = {"peak_rss_mib": round(peak_rss_mib(), 1)}
    result.extra["topology"] = topology.to_dict(request.device)
    data = result.to_dict()
    data["vs_single_rank_tolerance"] = {"metric": "rel_l2", "threshold": threshold, "source": "default"}
    return data
