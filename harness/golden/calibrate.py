"""Calibration: the floor of every record, measured by running the reference against itself.

Each calibration request (seeds x sizes, plus one true-CFG request per seed) runs the reference once as a
parity run would (the baseline), then under each legitimate perturbation that applies to the device and
dtype: once free-running (its records against the baseline's give the *free* floors) and, when the case can
teacher-force its reference, once forced from the baseline's inputs (the *forced* floors of the stages a
parity run forces: the local error one step or one decode makes under the perturbation). The floor of a
(stage, field) is the worst rel_l2 seen over perturbations, requests and steps; the stored threshold is
`FLOOR_MULTIPLE` x floor with an absolute minimum (harness/compare/tolerances.py explains both numbers). Results are
plain JSON under golden/tolerances/, keyed by case, checkpoint, dtype and device class.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.compare.metrics import tensor_metrics
from harness.compare.tolerances import (
    CALIBRATION_SCHEMA_VERSION,
    FLOOR_METRIC,
    FLOOR_MULTIPLE,
    MINIMUM_ROUNDINGS,
    calibrated_threshold,
    device_class,
    minimum_threshold,
)
from harness.environment import environment
from harness.files import write_json_atomic
from harness.run.cases import Case
from harness.run.forcing import FORCED_STAGES
from harness.run.request import GenerationRequest
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace

CFG_NEGATIVE_PROMPT = "blurry, low quality"
CFG_SCALE = 2.5


@dataclass(frozen=True)
class Perturbation:
    """A change to how the reference runs that a correct implementation may legitimately differ by."""

    name: str
    description: str
    applies: Callable[[str, str], bool]  # (device, dtype) -> whether it is meaningful there
    context: Callable[[], contextlib.AbstractContextManager]
    reference_dtype: str | None = None  # run the reference in this dtype instead of the request's


@contextlib.contextmanager
def _threads_changed() -> Iterator[None]:
    """1 intra-op thread if more are in use, else 2: another split of every reduction on the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(2 if before == 1 else 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _tf32_flipped() -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = not matmul
    torch.backends.cudnn.allow_tf32 = not cudnn
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation(
        "attention_math",
        "torch SDPA restricted to the MATH kernel (the native side's CPU kernel) instead of torch's own choice",
        lambda device, dtype: True,
        lambda: sdpa_kernel(SDPBackend.MATH),
    ),
    Perturbation(
        "attention_efficient",
        "torch SDPA restricted to the memory-efficient kernel",
        lambda device, dtype: _is_cuda(device),
        lambda: sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION),
    ),
    Perturbation(
        "threads",
        "another intra-op thread count (2 instead of 1, else 1): reductions split differently",
        lambda device, dtype: not _is_cuda(device),
        _threads_changed,
    ),
    Perturbation(
        "tf32",
        "TF32 matmuls and convolutions toggled",
        lambda device, dtype: _is_cuda(device) and dtype == "fp32",
        _tf32_flipped,
    ),
    Perturbation(
        "fp64",
        "the reference in float64 from the same float32 noise: the fp32 run's own rounding error",
        lambda device, dtype: dtype == "fp32" and torch.device(device).type in ("cpu", "cuda"),
        contextlib.nullcontext,
        reference_dtype="fp64",
    ),
)


@contextlib.contextmanager
def _reference_compiled() -> Iterator[None]:
    """Every reference pipeline loaded inside runs its DiT's repeated blocks under torch.compile (inductor), the
    way `run --compile reference` does; dynamo's caches are reset after, so nothing compiled leaks out."""
    from native_models.compile import CompileSettings, reset_compiled_graphs
    from references.common.reference_pipeline import compile_pipeline_transformer, observe_reference_pipelines

    settings = CompileSettings()
    try:
        with observe_reference_pipelines(lambda pipe, _: compile_pipeline_transformer(pipe, settings)):
            yield
    finally:
        reset_compiled_graphs()


COMPILED = Perturbation(
    "compiled",
    "the reference's repeated DiT blocks under torch.compile (inductor, default mode; Diffusers' "
    "compile_repeated_blocks): fused kernels round differently from eager ones",
    lambda device, dtype: True,
    _reference_compiled,
)


def perturbations_for(device: str, dtype: str, compiled: bool = False) -> list[Perturbation]:
    """The perturbations that apply on `device` in `dtype`; `compiled` adds compiled-vs-eager (opt-in: its floors
    go to their own file, so eager runs keep the tighter eager floors)."""
    return [p for p in PERTURBATIONS if p.applies(device, dtype)] + ([COMPILED] if compiled else [])


def calibration_requests(case: Case, dtype: str, device: str, seeds: int,
                         sizes: list[tuple[int, int]] | None = None, cfg: bool = True) -> list[GenerationRequest]:
    """seeds 0..N-1 at each size, plus, per seed, one request at the last size with true CFG switched the other
    way from the case's default (on for FLUX, so the negative embeddings and the unconditional DiT output get
    floors too; off for Wan, whose default guides, so unguided runs get floors too) and, for the case's default
    sizes, one true-CFG request per `Case.calibration_corners` entry (steps, height, width) and one request per
    `Case.calibration_variants` entry (the default request with those fields replaced)."""
    if seeds < 1:
        raise ValueError(f"calibration needs at least 1 seed, got {seeds}")
    base = case.request(dtype=dtype, device=device)
    corners = list(case.calibration_corners) if not sizes and cfg else []
    variants = list(case.calibration_variants) if not sizes else []
    sizes = sizes or list(case.calibration_sizes) or [(base.height, base.width)]
    requests = []
    def sized(height: int, width: int) -> GenerationRequest:  # the case's own image follows the size (Case.request)
        return case.request(dtype=dtype, device=device, height=height, width=width)

    for seed in range(seeds):
        for height, width in sizes:
            requests.append(replace(sized(height, width), seed=seed))
        if cfg:
            height, width = sizes[-1]
            guided = {"negative_prompt": None, "true_cfg_scale": 1.0} if base.do_true_cfg else {
                "negative_prompt": CFG_NEGATIVE_PROMPT, "true_cfg_scale": CFG_SCALE}
            requests.append(replace(sized(height, width), seed=seed, **guided))
        for steps, height, width in corners:
            requests.append(replace(sized(height, width), seed=seed, steps=steps,
                                    negative_prompt=CFG_NEGATIVE_PROMPT, true_cfg_scale=CFG_SCALE))
        for overrides in variants:
            requests.append(replace(base, seed=seed, **dict(overrides)))
    return requests


@dataclass
class FloorEntry:
    """The worst difference seen for one (stage, field), and where it was seen."""

    stage: str
    field: str
    record_dtype: torch.dtype
    floor: float = 0.0
    min_cos: float = 1.0
    where: dict[str, Any] | None = None  # None while every perturbation left the record bit-identical
    by_step: dict[int, float] | None = None

    def update(self, metrics: dict[str, float], key: RecordKey, where: dict[str, Any]) -> None:
        value = metrics[FLOOR_METRIC]
        if value != value:  # NaN: a perturbation broke the reference itself; refuse to calibrate on it
            raise ValueError(f"perturbation {where['perturbation']} gave a non-finite {key.name()}")
        if value > self.floor:
            self.floor = value
            self.where = {**where, "step": key.step}
        self.min_cos = min(self.min_cos, metrics["cos"])
        if key.step is not None:
            self.by_step = self.by_step or {}
            self.by_step[key.step] = max(self.by_step.get(key.step, 0.0), value)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "stage": self.stage,
            "field": self.field,
            "record_dtype": str(self.record_dtype).removeprefix("torch."),
            "floor": self.floor,
            "floor_min_cos": self.min_cos,
            "threshold": calibrated_threshold(self.floor, self.record_dtype),
            "worst": self.where,
        }
        if self.by_step is not None:
            data["floor_by_step"] = [self.by_step[s] for s in sorted(self.by_step)]
        return data


def _run_reference(case: Case, checkpoint: Path, request: GenerationRequest, baseline: Trace | None = None) -> Trace:
    trace = Trace({"case": case.name, "request": request.to_dict()})
    if baseline is None:
        case.run_reference(checkpoint, request, trace, None)
    else:
        assert case.run_reference_forced is not None  # checked by the caller
        case.run_reference_forced(checkpoint, request, trace, baseline)
    return trace


def _accumulate(floors: dict[tuple[str, str], FloorEntry], baseline: Trace, perturbed: Trace,
                where: dict[str, Any], stages: tuple[str, ...] | None = None) -> None:
    """Fold the differences of `perturbed` from `baseline` (records of `stages`, default all) into `floors`."""
    for key, ref_tensor in baseline.items():
        if stages is not None and key.stage not in stages:
            continue
        other = perturbed.get(key)
        if other is None or tuple(other.shape) != tuple(ref_tensor.shape):
            raise ValueError(f"perturbation {where['perturbation']} changed record {key.name()}'s presence or "
                             f"shape: not a legitimate perturbation")
        entry = floors.setdefault((key.stage, key.field), FloorEntry(key.stage, key.field, ref_tensor.dtype))
        entry.update(tensor_metrics(other, ref_tensor), key, where)


def calibrate(
    case: Case,
    dtype: str = "fp32",
    device: str = "cpu",
    seeds: int = 3,
    sizes: list[tuple[int, int]] | None = None,
    model: str | None = None,
    cfg: bool = True,
    checkpoint: Path | None = None,
    progress: Callable[[str], None] | None = None,
    skip: tuple[str, ...] = (),
    compiled: bool = False,
) -> dict[str, Any]:
    """Measure every record's floors for `case` and return the calibration document (not yet written).
    `skip`: perturbations left out by name (fp64 when the checkpoint does not fit in memory twice over)."""
    from native_models.loader import resolve_checkpoint

    start = time.perf_counter()
    checkpoint = checkpoint or (resolve_checkpoint(model) if model else case.build_checkpoint())
    perturbations = [p for p in perturbations_for(device, dtype, compiled) if p.name not in skip]
    requests = calibration_requests(case, dtype, device, seeds, sizes, cfg)
    forcing = case.run_reference_forced is not None
    free: dict[tuple[str, str], FloorEntry] = {}
    forced: dict[tuple[str, str], FloorEntry] = {}
    for index, request in enumerate(requests):
        label = (f"request {index + 1}/{len(requests)} (seed {request.seed}, {request.height}x{request.width}, "
                 f"{request.steps} steps{', cfg' if request.do_true_cfg else ''})")
        if progress is not None:
            progress(f"{label}: baseline")
        baseline = _run_reference(case, checkpoint, request)
        for perturbation in perturbations:
            if progress is not None:
                progress(f"{label}: {perturbation.name}")
            perturbed_request = replace(request, dtype=perturbation.reference_dtype or request.dtype)
            where = {"perturbation": perturbation.name, "seed": request.seed,
                     "size": [request.height, request.width], "true_cfg": request.do_true_cfg}
            with perturbation.context():
                _accumulate(free, baseline, _run_reference(case, checkpoint, perturbed_request), where)
                if forcing:
                    forced_run = _run_reference(case, checkpoint, perturbed_request, baseline)
                    _accumulate(forced, baseline, forced_run, where, FORCED_STAGES)
    entries = []
    for key in sorted(free, key=lambda k: RecordKey(k[0], k[1], None).order()):
        entry = free[key].to_dict()
        if key in forced:
            entry["forced"] = {k: v for k, v in forced[key].to_dict().items()
                               if k not in ("stage", "field", "record_dtype")}
        entries.append(entry)
    return {
        "schema_version": CALIBRATION_SCHEMA_VERSION,
        "case": case.name,
        "checkpoint": "builtin" if model is None else model,
        "dtype": dtype,
        "device_class": device_class(device),
        "metric": FLOOR_METRIC,
        "multiple": FLOOR_MULTIPLE,
        "minimum_roundings": MINIMUM_ROUNDINGS,
        "minimum": {name: minimum_threshold(t) for name, t in (("float32", torch.float32),
                                                                 ("bfloat16", torch.bfloat16))},
        "forced_floors": forcing,
        "compiled": compiled,
        "perturbations": [{"name": p.name, "description": p.description} for p in perturbations],
        "requests": [{"seed": r.seed, "height": r.height, "width": r.width, "steps": r.steps,
                      "true_cfg": r.do_true_cfg, **({"prompts": len(r.prompts)} if r.extra_prompts else {})}
                     for r in requests],
        "environment": environment(device, dtype, "torch default"),
        "runtime_s": round(time.perf_counter() - start, 1),
        "records": entries,
    }


def write_calibration(document: dict[str, Any], path: Path) -> None:
    """Write through a temporary file renamed into place (never a half-written calibration), with the 0644
    permissions of the other files under golden/ (mkstemp alone makes 0600)."""
    write_json_atomic(path, document)


def format_floors(document: dict[str, Any]) -> str:
    """A terminal table: per record, its free and forced floors and the thresholds stored from them."""
    lines = [f"{'record':<38} {'floor':>9} {'threshold':>9} {'forced':>9} {'threshold':>9}  free floor set by"]
    for entry in document["records"]:
        worst = entry.get("worst")
        if worst is None:
            set_by = "- (bit-identical under every perturbation)"
        else:
            step = "" if worst.get("step") is None else f" step {worst['step']}"
            set_by = f"{worst['perturbation']} (seed {worst['seed']}, {worst['size']}{step})"
        forced = entry.get("forced") or {}
        forced_floor = f"{forced['floor']:>9.2e}" if forced else f"{'-':>9}"
        forced_threshold = f"{forced['threshold']:>9.2e}" if forced else f"{'-':>9}"
        lines.append(
            f"{entry['stage'] + '/' + entry['field']:<38} {entry['floor']:>9.2e} {entry['threshold']:>9.2e} "
            f"{forced_floor} {forced_threshold}  {set_by}"
        )
    return "\n".join(lines)
