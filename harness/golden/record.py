"""Recording a golden (the case's reference at its default request, into the draft) and promoting the draft.

A golden is recorded by `diffparity golden record`, reviewed (`golden verify --draft`), and made the golden by
`diffparity golden promote`.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.compare.metrics import tensor_metrics
from harness.compare.tolerances import calibration_path, device_class, read_calibration
from harness.golden.checkpoint_identity import checkpoint_identity
from harness.golden.errors import GoldenError, GoldenMissing
from harness.golden.file_format import read_golden, write_golden
from harness.golden.model import FULL_GOLDEN_LIMIT, Golden, golden_from_trace
from harness.golden.store import ROOT, golden_path
from harness.trace.memory import Trace

if TYPE_CHECKING:
    from harness.run.cases import Case

RECORD_THREADS = 1  # intra-op threads of a CPU recording


def embedded_tolerances(case: str, dtype: str, device: str) -> dict[str, Any] | None:
    """The stored calibration of the case (floors and thresholds per record), or None when there is none."""
    path = calibration_path(case, dtype, device)
    if not path.is_file():
        return None
    document = read_calibration(path)
    source = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return {"source": source, "dtype": document["dtype"], "metric": document["metric"],
            "records": document["records"]}


def record_golden(case: Case, dtype: str = "fp32", device: str = "cpu", root: Path | None = None,
                  command: str | None = None, full_limit: int = FULL_GOLDEN_LIMIT) -> Golden:
    """Run the case's reference at its default request and write the golden's draft (never the golden).

    On the CPU the reference runs on one intra-op thread (RECORD_THREADS), so recording again on any machine with
    the same library versions gives the same bits, and `promote --force` shows only what really changed."""
    from harness.environment import environment, intra_op_threads

    request = case.request(dtype=dtype, device=device)
    checkpoint = case.build_checkpoint()
    trace = Trace({"case": case.name, "request": request.to_dict(), "side": "reference"})
    threads = intra_op_threads(RECORD_THREADS) if device == "cpu" else contextlib.nullcontext()
    with threads:
        case.run_reference(checkpoint, request, trace, None)
        fingerprint = environment(device, dtype, "torch default")
    info = {
        "case": case.name,
        "family": case.family,
        "dtype": dtype,
        "device_class": device_class(device),
        "request": request.to_dict(),
        "checkpoint": checkpoint_identity(checkpoint),
        "environment": fingerprint,
        "command": command or f"diffparity golden record {case.name} --dtype {dtype} --device {device}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tolerances": embedded_tolerances(case.name, dtype, device),
    }
    golden = golden_from_trace(trace, info, full_limit=full_limit)
    write_golden(golden, golden_path(case.name, dtype, device_class(device), root, "draft"))
    return golden


@dataclass
class Promotion:
    path: Path
    replaced: bool
    worst_change: tuple[str, float] | None  # (record, rel_l2) of the draft against the golden it replaced


def promote_golden(case: str, dtype: str, device_cls: str, root: Path | None = None,
                   force: bool = False) -> Promotion:
    """Make the draft the golden (an atomic rename). An existing golden is replaced only with `force`."""
    draft_path = golden_path(case, dtype, device_cls, root, "draft")
    target = golden_path(case, dtype, device_cls, root)
    if not draft_path.exists():
        raise GoldenMissing(f"no draft to promote at {draft_path}: record one first (diffparity golden record "
                            f"{case} --dtype {dtype})")
    try:
        draft = read_golden(draft_path)
    except FileNotFoundError:
        raise GoldenMissing(f"the draft {draft_path} was promoted by another process meanwhile") from None
    draft.check_for(case, dtype, device_cls)
    worst = None
    replaced = target.exists()
    if replaced:
        if not force:
            raise GoldenError(f"{target} already exists; pass --force to replace it with {draft_path.name}")
        try:
            worst = largest_change(read_golden(target), draft)
        except GoldenError:
            worst = None  # replacing a corrupt or outdated golden: nothing to compare with
    try:
        os.replace(draft_path, target)
    except FileNotFoundError:  # another `golden promote` moved the draft between our reading it and now
        raise GoldenMissing(f"the draft {draft_path} was promoted by another process meanwhile; {target} holds "
                            "that promotion") from None
    return Promotion(target, replaced, worst)


def largest_change(old: Golden, new: Golden) -> tuple[str, float] | None:
    """The record whose values moved most (rel_l2, on whole tensors or on the samples) between two goldens."""
    worst: tuple[str, float] | None = None
    for key, record in new.records.items():
        before = old.records.get(key)
        if before is None or before.shape != record.shape:
            return (key.name(), math.inf)
        a = record.tensor if record.tensor is not None else record.sample
        b = before.tensor if before.tensor is not None else before.sample
        if a is None or b is None or a.shape != b.shape:
            continue
        change = tensor_metrics(a, b)["rel_l2"]
        if worst is None or not change <= worst[1]:
            worst = (key.name(), change)
    return worst
