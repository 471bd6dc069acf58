"""The Diffusers side of a request, run once per test process and shared by every test that breaks only the native
side of that request (a fault's `mutate_native`), as `diffparity faults` shares it (`run_parity(...,
reference=...)`, which refuses a reference of another request).

The reference is deterministic for a (case, request): sharing it changes no number, and each such test then costs
its native runs only. Tests that change the reference side itself (its code, its checkpoint, its progress or
timings) must run their own. At most MAX_SHARED sides are kept (tiny checkpoints: a few MB each).
"""

from __future__ import annotations

import json

from harness.run.cases import get_case
from harness.run.parity import run_reference_side
from harness.run.request import GenerationRequest
from harness.run.runners import SideRun
from native_models.build_memo import BoundedMemo

MAX_SHARED = 8
_SHARED: BoundedMemo[SideRun] = BoundedMemo(size=MAX_SHARED)


def shared_reference(case_name: str, request: GenerationRequest) -> SideRun:
    """The reference side of `case_name` for `request`, run on first use in this process, then reused."""
    key = json.dumps([case_name, request.to_dict()], sort_keys=True)
    side = _SHARED.get(key)
    if side is None:
        side = run_reference_side(get_case(case_name), request)
        _SHARED.put(key, side)
    return side
