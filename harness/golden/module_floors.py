"""Module floors: every module's rounding noise, measured by drilling the reference against itself.

`diffparity calibrate CASE --modules` runs, per calibration request (the stage calibration's requests,
harness/golden/calibrate.py), the drill's two passes (harness/drill/engine.py) over each model component call
(every text encoder's prompt call, and its negative-prompt call under true CFG; the DiT's conditional pass at the
first and the last step, and its unconditional pass at the first step under true CFG; the VAE decode) with the
reference itself in the native role, under each legitimate perturbation:
- kernel to kernel: the perturbations of the stage calibration that change kernels (SDPA math kernel, another
  thread count on the CPU; the memory-efficient kernel and TF32 on CUDA), applied around each module's forced
  call (local floors) and around the whole component (inherited floors);
- a higher-precision twin: a copy of the component in float64 (fp32 runs) or float32 (bf16 runs) fed the same
  inputs upcast: each module's own rounding error (the stage calibration's fp64 run, at module level; in bf16,
  what two correct bf16 implementations can differ by). In bf16 the twin gives local floors only: run whole,
  it does not round what the bf16 model rounds on the way (FLUX casts the timestep to the model dtype before
  scaling it by 1000, so the twin's time embedding differs from the bf16 one by 27%, far more than two bf16
  implementations differ, which round alike); bf16 inherited floors come from the kernel perturbations.
The floor of a module pattern (indices starred) is the worst rel_l2 over perturbations, requests, calls and
indices, and an inherited floor is at least the local one (an output carries at least its own rounding); the
threshold is FLOOR_MULTIPLE x floor with the dtype's absolute minimum (harness/compare/tolerances.py),
as for stages. Written to golden/tolerances/CASE.DTYPE.DEVICE.modules.json, which drills of the case then read
(harness/drill/floors.py).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.compare.tolerances import FLOOR_METRIC, FLOOR_MULTIPLE, calibrated_threshold, device_class
from harness.drill.alignment import ComponentAlignment, generic_name
from harness.drill.engine import DrillPasses, Variant
from harness.drill.floors import MODULE_FLOORS_SCHEMA_VERSION
from harness.drill.session import capture_reference
from harness.drill.store import OutputStore
from harness.drill.target import DrillTarget, resolve_target
from harness.environment import environment
from harness.golden.calibrate import calibration_requests, perturbations_for
from harness.run.cases import Case
from harness.run.native_runner import plan_native_run
from harness.run.request import GenerationRequest

IDENTITY = ComponentAlignment("(the reference itself)")
TWIN_DTYPES = {"fp32": torch.float64, "bf16": torch.float32}


def calibration_targets(config: Any, request: GenerationRequest) -> list[DrillTarget]:
    """The component calls calibrated for one request (module docstring)."""
    cfg, steps = request.do_true_cfg, request.steps
    targets = [resolve_target(config, cfg, steps, "encode", spec.trace_field) for spec in config.text_encoders]
    if cfg:
        targets += [resolve_target(config, cfg, steps, "encode", f"negative_{spec.trace_field}")
                    for spec in config.text_encoders]
    targets.append(resolve_target(config, cfg, steps, "denoise", "transformer_output", 0))
    if cfg:
        targets.append(resolve_target(config, cfg, steps, "denoise", "transformer_output_uncond", 0))
    if steps > 1:
        targets.append(resolve_target(config, cfg, steps, "denoise", "transformer_output", steps - 1))
    targets.append(resolve_target(config, cfg, steps, "decode", "image"))
    return targets


@dataclass
class Floor:
    floor: float = 0.0
    dtype: torch.dtype = torch.float32
    where: dict[str, Any] | None = None

    def update(self, value: float, dtype: torch.dtype, where: dict[str, Any]) -> None:
        if math.isnan(value):
            raise ValueError(f"perturbation {where['perturbation']} gave a non-finite module output at {where}")
        if value > self.floor or self.where is None:
            self.floor, self.dtype = max(self.floor, value), dtype
            if value > 0 or self.where is None:
                self.where = where

    def to_dict(self) -> dict[str, Any]:
        return {"floor": self.floor, "threshold": calibrated_threshold(self.floor, self.dtype),
                "worst": self.where if self.floor > 0 else None}


Floors = dict[str, dict[str, dict[str, Floor]]]  # component -> pattern -> kind -> floor


def _variants(reference: torch.nn.Module, device: str, dtype: str) -> list[Variant]:
    variants = [Variant(p.name, reference, IDENTITY, p.context) for p in perturbations_for(device, dtype)
                if p.reference_dtype is None]
    twin = copy.deepcopy(reference).to(TWIN_DTYPES[dtype])
    variants.append(Variant(f"{str(TWIN_DTYPES[dtype]).removeprefix('torch.')}_twin", twin, IDENTITY))
    return variants


def _output_dtype(passes: DrillPasses, name: str) -> torch.dtype:
    stored = passes.store.get((name, 0, passes.signatures.get((name, 0), (("",), False))[0][0]))
    return stored.dtype if stored is not None else torch.float32


def calibrate_target(floors: Floors, passes: DrillPasses, variants: list[Variant], where: dict[str, Any],
                     whole_twin: bool = True) -> None:
    """Both passes of one captured call with every variant in the native role, folded into `floors`;
    `whole_twin` False: the precision twin gives local floors only (bf16, module docstring)."""
    passes.forced_pass(variants)
    component = floors.setdefault(passes.component, {})
    dtypes: dict[str, torch.dtype] = {}
    for (variant, name, _), result in passes.local.items():
        if result.metrics is None:
            continue
        dtype = dtypes.setdefault(name, _output_dtype(passes, name))
        component.setdefault(generic_name(name, passes.reference_root), {}).setdefault("local", Floor()).update(
            result.metrics[FLOOR_METRIC], dtype, {**where, "perturbation": variant, "module": name})
    for variant in variants:
        if variant.label.endswith("_twin") and not whole_twin:
            continue
        run = passes.free_pass(variant.root, [passes.baseline()], IDENTITY, context=variant.context)
        for (_, name, _), result in run.inherited.items():
            if result.metrics is None:
                continue
            dtype = dtypes.setdefault(name, _output_dtype(passes, name))
            entry = component.setdefault(generic_name(name, passes.reference_root), {}).setdefault("inherited",
                                                                                                   Floor())
            entry.update(result.metrics[FLOOR_METRIC], dtype, {**where, "perturbation": variant.label,
                                                                 "module": name})
        for (_, name, _), result in run.inherited.items():  # the component itself: its forced error is its free one
            if name == "" and result.metrics is not None:
                component.setdefault("", {}).setdefault("local", Floor()).update(
                    result.metrics[FLOOR_METRIC], _output_dtype(passes, ""), {**where, "perturbation": variant.label,
                                                                                "module": ""})


def calibrate_modules(case: Case, dtype: str = "fp32", device: str = "cpu", seeds: int = 3,
                      sizes: list[tuple[int, int]] | None = None, model: str | None = None, cfg: bool = True,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every module's local and inherited floors for `case` and return the document (not yet written)."""
    from native_models.loader import resolve_checkpoint

    start = time.perf_counter()
    checkpoint = resolve_checkpoint(model) if model else case.build_checkpoint()
    requests = calibration_requests(case, dtype, device, seeds, sizes, cfg)
    floors: Floors = {}
    for index, request in enumerate(requests):
        plan = plan_native_run(checkpoint, request, model_name=model)
        targets = calibration_targets(plan.config, request)
        if progress is not None:
            progress(f"request {index + 1}/{len(requests)} (seed {request.seed}, {request.height}x{request.width}, "
                     f"{request.steps} steps{', cfg' if request.do_true_cfg else ''}): {len(targets)} calls")
        captured = capture_reference(case, checkpoint, request, targets)
        for target in targets:
            call = captured[target]
            store = OutputStore(target.stage)
            passes = DrillPasses(target.component, call.module, target.method, call.args, call.kwargs, IDENTITY,
                                 store)
            where = {"seed": request.seed, "size": [request.height, request.width], "steps": request.steps,
                     "call": target.describe()}
            calibrate_target(floors, passes, _variants(call.module, device, dtype), where, whole_twin=dtype != "bf16")
            store.close()
        del captured
    for patterns in floors.values():  # an output carries at least its own rounding
        for kinds in patterns.values():
            local, inherited = kinds.get("local"), kinds.get("inherited")
            if local is not None and inherited is not None and local.floor > inherited.floor:
                inherited.update(local.floor, local.dtype, {**(local.where or {}), "from": "local floor"})
    components = {
        component: {pattern: {kind: floor.to_dict() for kind, floor in kinds.items()}
                    for pattern, kinds in sorted(patterns.items())}
        for component, patterns in sorted(floors.items())
    }
    perturbations = [{"name": p.name, "description": p.description} for p in perturbations_for(device, dtype)
                     if p.reference_dtype is None]
    perturbations.append({"name": f"{str(TWIN_DTYPES[dtype]).removeprefix('torch.')}_twin",
                          "description": "a copy of the component in higher precision fed the same inputs upcast: "
                                         "the module's own rounding error"})
    return {
        "schema_version": MODULE_FLOORS_SCHEMA_VERSION,
        "kind": "module-floors",
        "case": case.name,
        "checkpoint": "builtin" if model is None else model,
        "dtype": dtype,
        "device_class": device_class(device),
        "metric": FLOOR_METRIC,
        "multiple": FLOOR_MULTIPLE,
        "perturbations": perturbations,
        "requests": [{"seed": r.seed, "height": r.height, "width": r.width, "steps": r.steps,
                      "true_cfg": r.do_true_cfg} for r in requests],
        "environment": environment(device, dtype, "torch default"),
        "runtime_s": round(time.perf_counter() - start, 1),
        "components": components,
    }


def format_module_floors(document: dict[str, Any], limit: int = 12) -> str:
    """Per component, the patterns with the largest local floors (and their inherited floors)."""
    lines = [f"{'component':<15} {'module pattern':<52} {'local':>9} {'inherited':>9}  set by"]
    for component, patterns in document["components"].items():
        ranked = sorted(patterns.items(), key=lambda kv: -(kv[1].get("local") or {}).get("floor", 0.0))
        for pattern, kinds in ranked[:limit]:
            local, inherited = kinds.get("local") or {}, kinds.get("inherited") or {}
            worst = local.get("worst") or inherited.get("worst") or {}
            lines.append(f"{component:<15} {pattern or '(forward)':<52} {local.get('floor', math.nan):>9.2e} "
                         f"{inherited.get('floor', math.nan):>9.2e}  {worst.get('perturbation', '-')}")
        if len(patterns) > limit:
            lines.append(f"{component:<15} ... {len(patterns) - limit} more patterns")
    return "\n".join(lines)


def write_module_floors(document: dict[str, Any], path: Path) -> None:
    from harness.golden.calibrate import write_calibration

    write_calibration(document, path)
