"""A reference run frees its pipeline when it returns, without a full garbage collection.

Diffusers' `cache_context` leaves a reference cycle on each model (a HookRegistry stored on the module that
points back at it); references/common/reference_pipeline.py drops it, so deleting the pipeline frees the
weights at once and the full collection (0.1-0.5 s in a large process, once per reference run) is skipped. If a
Diffusers upgrade adds another cycle, the run still frees the pipeline (it collects), and this test names it.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

import harness.families  # noqa: F401 - registers the cases
from harness.run.cases import get_case
from harness.trace.memory import Trace
from references.common.reference_pipeline import observe_reference_pipelines


@pytest.mark.parametrize("case_name", ["flux-tiny", "wan-tiny", "qwenimage-tiny", "zimage-tiny"])
def test_the_pipeline_is_freed_without_a_collection(case_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = get_case(case_name)
    checkpoint = case.build_checkpoint()
    seen: list[weakref.ref] = []

    def watch(pipe: Any, _: dict[str, Any]) -> None:
        seen.extend(weakref.ref(c) for c in pipe.components.values() if hasattr(c, "parameters"))

    collections = []
    monkeypatch.setattr(gc, "collect", lambda *args, **kwargs: collections.append(args) or 0)
    gc.disable()  # nothing but reference counting frees it
    try:
        with observe_reference_pipelines(watch):
            case.run_reference(checkpoint, case.request(steps=2), Trace(), None)
        alive = [type(ref()).__name__ for ref in seen if ref() is not None]
    finally:
        gc.enable()
    assert seen and not alive, f"still held after the run: {alive}"
    assert not collections  # it did not need the full collection either
