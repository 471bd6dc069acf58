"""A fault matrix in worker processes: each distinct request's reference runs once, then its faults, in parallel.

The matrix's runs are independent: one Diffusers reference per distinct request, then one native run per fault
against it. On a machine with several cores they share it out: `jobs` worker processes, each on
cpu_count // jobs intra-op threads (tiny models are latency-bound: two processes on one thread each finish a
matrix sooner than one process on two threads, and do not fight over the cores). A reference is handed back to
this process (an in-memory trace: kilobytes for the tiny cases) and sent on with each of its faults, so every
fault runs the moment its reference exists, on whichever worker is free.

Workers start from a forkserver (as harness/run/multirank.py's ranks do): a clean process that has imported the
harness once, so nothing that this process ran (multi-threaded torch, an OpenMP pool) is forked into them.
Workers are not daemons, so a fault that runs the native side on several ranks can start them.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from harness.run.multirank import PRELOAD as RANK_PRELOAD

START_METHOD = "forkserver"
# harness/run/multirank.py's PRELOAD and the fault matrix: one forkserver serves both (the first caller's list
# wins); multirank's list ends with native_models.warm_start, which freezes the server's heap
PRELOAD = ["harness.verdicts.fault_matrix", *RANK_PRELOAD]


def threads_per_worker(jobs: int) -> int:
    """This machine's cores shared out among `jobs` workers, at least one each."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _init_worker(threads: int) -> None:
    import torch

    from harness.verdicts.faults import FAULTS

    torch.set_num_threads(threads)
    # load every family's faults in registry order, as the parent did, before a job unpickles a fault's function:
    # unpickling first imports that family's module alone, which can meet a half-initialised module it imports
    len(FAULTS)


def run_groups_in_pool(case: Any, pairs: list[tuple[str, Any]], requests: dict[str, Any],
                       groups: dict[str, list[int]], jobs: int, finished: Callable[[int, Any], None],
                       reference_job: Callable[[Any, Any], Any], fault_job: Callable[[Any, Any, str, Any], Any],
                       ) -> None:
    """Run every group's reference (`reference_job(case, request)`), then each of its pairs (indices into `pairs`)
    against it (`fault_job(case, fault, dtype, reference)`), on `jobs` workers; `finished(index, outcome)` in this
    process as each fault ends. The jobs are module-level functions (pickled by name; this module imports no
    verdict code, so fault_matrix.py can import it). A worker's exception is raised here."""
    multiprocessing.set_forkserver_preload(PRELOAD)  # a no-op once the server runs
    context = multiprocessing.get_context(START_METHOD)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(threads_per_worker(jobs),)) as pool:
        pending: dict[Future, tuple[str, str | int]] = {
            pool.submit(reference_job, case, requests[key]): ("reference", key) for key in groups
        }
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    kind, what = pending.pop(future)
                    if kind == "reference":
                        reference = future.result()
                        for index in groups[str(what)]:
                            dtype, fault = pairs[index]
                            pending[pool.submit(fault_job, case, fault, dtype, reference)] = ("fault", index)
                    else:
                        finished(int(what), future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
