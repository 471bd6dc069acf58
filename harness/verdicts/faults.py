"""The fault machinery: named, deliberately broken native variants, the bugs a parity run must localize.

Each `Fault` mutates an already built native pipeline (instance attributes and instance-level method wrappers
only: no source is edited, nothing is patched on a class or a module, so a fault dies with its pipeline) and
names the record where a teacher-forced parity run must report the first divergence. The catalog itself lives
with each family (references/<family>/faults.py, registered with `register(Fault(...))` and imported on first
use of `FAULTS`, harness/families.py); this module holds the `Fault` type, the registry and the generic helpers
the families' faults are written with (`wrap_after`, `modules_named`, `drop_weight`, `swap_qk_norm_weights`,
`parallel_modules`).

Two kinds of detection:
- numeric (default): the parity run fails and its first *local* divergence is `expected_stage` /
  `expected_field` / `expected_step` (a negative step counts from the last one: -1 is the last step), while
  every other stage's local records pass (except the stages named in `also_fails`);
- `raises`: the native pipeline refuses the run with a `StageFieldError` naming the stage that checks the
  field (the stages' declared reads/writes) and the field: the loud bugs of field notes section 5.

`dtypes` says in which precisions the fault exists or can be seen at all; `scope_note` says why one is left out
(measured, never assumed). `diffparity faults CASE` (harness/verdicts/fault_matrix.py) runs them all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from harness.families import FamilyRegistry
from harness.run.request import GenerationRequest
from native_models.pipeline import ComposedPipeline

DTYPES = ("fp32", "bf16")
CFG_NEGATIVE_PROMPT = "blurry, low quality"
CFG_SCALE = 2.5
NONSQUARE_SIZE = (48, 80)
UNDECLARED = "?"  # a fault whose expected module is not declared: the drill's answer is shown, not checked


@dataclass(frozen=True)
class Fault:
    """One broken native variant and where parity must catch it.

    `expected_step` is the denoising step of the first divergence (None outside the loop; negative counts from
    the last step); `expected_field` None means any field of the stage. `needs_cfg` / `needs_nonsquare`: the
    fault only shows under true CFG / on a non-square image, so its request must have them.

    `expected_module` is the native module the drill (harness/drill/) must name for the first divergence: a
    dotted name inside the divergent component ("" for the component's own forward, outside every submodule),
    None where no module can be named (a stage without a model component, a pipeline that refuses the run, or
    a component that is right on the reference's inputs because the bug is in what reaches it or how its
    output is used), `UNDECLARED` where the family has not declared it yet.
    """

    name: str
    description: str
    expected_stage: str
    expected_step: int | None
    apply: Callable[[ComposedPipeline], None]
    expected_field: str | None = None
    needs_cfg: bool = False
    needs_nonsquare: bool = False
    families: tuple[str, ...] = ()  # model families whose pipelines the mutation knows how to break
    # the cases (of those families) whose pipelines have the part the fault breaks (empty: every case), e.g. a
    # second expert or an image encoder that other checkpoints of the family lack
    cases: tuple[str, ...] = ()
    raises: bool = False  # the native pipeline refuses the run (StageFieldError naming stage and field)
    dtypes: tuple[str, ...] = DTYPES  # precisions in which the fault exists / is visible
    scope_note: str = ""  # why a precision is not in `dtypes`
    also_fails: tuple[str, ...] = ()  # other stages whose local records legitimately fail too (said why above)
    topology: tuple[int, int] = (1, 1)  # (tp, sp) ranks the native side needs: a shard fault breaks a parallel run
    request_overrides: tuple[tuple[str, Any], ...] = ()  # request fields the fault needs to show (e.g. frames)
    expected_module: str | None = UNDECLARED

    def request_for(self, base: GenerationRequest) -> GenerationRequest:
        """`base` with what this fault needs to show: true CFG with a negative prompt, a non-square size."""
        changes: dict[str, Any] = {}
        if self.needs_cfg and not base.do_true_cfg:
            changes.update(negative_prompt=CFG_NEGATIVE_PROMPT, true_cfg_scale=CFG_SCALE)
        if self.needs_nonsquare and base.height == base.width:
            changes.update(height=NONSQUARE_SIZE[0], width=NONSQUARE_SIZE[1])
        changes.update(dict(self.request_overrides))
        return replace(base, **changes)

    def expected_for(self, request: GenerationRequest) -> tuple[str, str | None, int | None]:
        """(stage, field, step) of the expected first divergence for `request` (a negative step resolved)."""
        step = self.expected_step
        if step is not None and step < 0:
            step += request.steps
        return self.expected_stage, self.expected_field, step

    def applies_to(self, dtype: str) -> bool:
        return dtype in self.dtypes


# name -> fault, in registration order (the families' order in references/families.py, then each module's)
FAULTS: FamilyRegistry[Fault] = FamilyRegistry("faults")


def register(fault: Fault) -> Fault:
    if fault.name in FAULTS:
        raise ValueError(f"fault '{fault.name}' is already registered")
    if not fault.families:
        raise ValueError(f"fault '{fault.name}' names no model family whose pipeline it breaks (families=())")
    unknown = sorted(set(fault.dtypes) - set(DTYPES))
    if unknown or not fault.dtypes:
        raise ValueError(f"fault '{fault.name}': dtypes {list(fault.dtypes)} must be a non-empty subset of {DTYPES}")
    if set(fault.dtypes) != set(DTYPES) and not fault.scope_note:
        raise ValueError(f"fault '{fault.name}' leaves out a precision without a scope_note saying why")
    FAULTS[fault.name] = fault
    return fault


def get_fault(name: str) -> Fault:
    if name not in FAULTS:
        raise KeyError(f"unknown fault '{name}'; known faults: {', '.join(sorted(FAULTS))}")
    return FAULTS[name]


def faults_for(family: str, case: str | None = None) -> list[Fault]:
    """The registered faults that know how to break a pipeline of `family` (and of `case`, when named: faults
    limited to other cases of the family are left out), in registration order."""
    return [fault for fault in FAULTS.values()
            if family in fault.families and (case is None or not fault.cases or case in fault.cases)]


def wrap_after(obj: Any, name: str, after: Callable[[Any], Any]) -> None:
    """Shadow the bound method `obj.name` on the instance: call it, then return `after(result)`."""
    original = getattr(obj, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return after(original(*args, **kwargs))

    setattr(obj, name, wrapper)



def modules_named(pipeline: ComposedPipeline, component: str, suffix: str) -> list[torch.nn.Module]:
    found = [m for name, m in pipeline.get_module(component).named_modules() if name.endswith(suffix)]
    if not found:
        raise ValueError(f"no module of {component} ends with '{suffix}'")
    return found


def drop_weight(pipeline: ComposedPipeline, component: str, suffix: str, parameter: str = "weight") -> None:
    for module in modules_named(pipeline, component, suffix):
        setattr(module, parameter, None)  # the module's own no-affine path: as if the weight were never loaded


def swap_qk_norm_weights(pipeline: ComposedPipeline, attention_suffix: str) -> None:
    for attention in modules_named(pipeline, "transformer", attention_suffix):
        attention.norm_q.weight, attention.norm_k.weight = attention.norm_k.weight, attention.norm_q.weight



def parallel_modules(pipeline: ComposedPipeline, kind: type, fault: str) -> list[Any]:
    found = [m for m in pipeline.get_module("transformer").modules() if isinstance(m, kind)]
    if not found:
        raise ValueError(f"fault {fault} breaks {kind.__name__} shards, but this pipeline's transformer has none "
                         f"(run the native side on ranks: --tp / --sp)")
    return found


