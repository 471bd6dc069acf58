"""The drill-down of a failing parity run: `drill_on_failure`, a `run_parity` extension (harness/run/parity.py).

When a run fails at a record of `encode`, `denoise` or `decode`, the drill re-runs that record's component on
both sides from the reference's inputs (harness/drill/session.py) and adds report["drill"] and
`first_divergence.module` (the dotted name of the first module that diverges locally; null when the drill did
not run or found no module: then the component is right on the reference's inputs, and the divergence lies in
what reaches it or how its output is used). `diffparity run` installs it unless `--no-drill`, which installs
`drill_off` instead (the report then says the drill was switched off); the fault matrix installs it too.
"""

from __future__ import annotations

import os
import time
from typing import Any

from harness.run.parity import ParityResult, ParityRun


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason, "module": None}


def drill_on_failure(result: ParityResult, run: ParityRun) -> None:
    """Add the drill of the first divergence to `result.report` (nothing for a passing run)."""
    report = result.report
    if result.passed:
        return
    first = report.get("first_divergence")
    start = time.perf_counter()
    if first is None:
        section = _skipped("the run fails without a failing record (noise detector or ranks only): nothing to drill")
    else:
        try:
            if run.topology is not None:
                from harness.drill.multirank import drill_ranks

                section = drill_ranks(run.case, run.request, run.checkpoint, first, run.topology, model=run.model,
                                      mutate=run.mutate, spool_dir=run.out_dir)
            else:
                from harness.drill.session import drill_first_divergence

                section = drill_first_divergence(run.case, run.request, run.checkpoint, first, model=run.model,
                                                 mutate=run.mutate, spool_dir=run.out_dir)
        except Exception as exc:  # noqa: BLE001 - the parity verdict stands; the drill says why it has none
            if os.environ.get("DIFFPARITY_DEBUG"):
                raise
            line = (str(exc).splitlines() or [type(exc).__name__])[0]
            section = {"status": "error", "reason": f"{type(exc).__name__}: {line}", "module": None}
        first["module"] = section.get("module")
        first["component"] = section.get("component")
    section["trigger"] = "first_divergence"
    report["drill"] = section
    report.setdefault("timings_s", {})["drill"] = round(time.perf_counter() - start, 3)


def drill_off(result: ParityResult, run: ParityRun) -> None:
    """`--no-drill`: a failing run's report says the drill was switched off (`first_divergence.module` null), so
    a reader never mistakes a missing drill for one that found nothing."""
    if result.passed:
        return
    first = result.report.get("first_divergence")
    if first is not None:
        first["module"] = None
    result.report["drill"] = {"status": "off", "reason": "switched off (--no-drill)", "module": None,
                              "trigger": "first_divergence"}
