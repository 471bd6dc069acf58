"""Which broken native variant of the flux-digits model does each detector catch: parity, noise, classifier?

A random-weight checkpoint draws noise even when it is right, so only a trained model can show what a wrong
pipeline does to a real picture. For every FLUX fault in the catalog (references/flux/faults.py, read at run time) and
for the correct pipeline (the control), this runs flux-digits in fp32 for a few digits x seeds, as teacher-
forced parity runs with the fault applied to the native side (`fault.request_for` gives each fault what it
needs to show, e.g. a non-square size), and records per run:

- parity: the trace comparison fails (first divergence) or the native pipeline refuses the run;
- noise: `detect_noise` flags the native output (32 px: the rule checks and the small-frame learned heads);
- noise (photo VAE): `detect_noise` flags the same run decoded the realistic way, by a natural-image VAE: the
  native pipeline with the photo VAE (references/flux/photo_vae.py) as its decoder behind a linear bridge from the
  digits latent space (references/flux/digits_bridge.py), the fault applied on top (decode-stage faults then act on
  the photo VAE and its factors); 64 px;
- classifier: the digit classifier (references/flux/digits.py) does not read the native output as the prompted
  digit.

A detector *catches* a run only when it fires on the faulty output and not on the correct pipeline's output
for the same request (so a classifier that cannot read the correct output at an untrained size catches
nothing there). A fault is caught when every run is caught by at least one detector. A fault whose native
output is bit-identical to the correct pipeline's and whose parity run passes is *inert* on this model (e.g. a
guidance-embedding fault on a model without one): nothing can or should catch it; it is reported as such.

    .venv/bin/python scripts/digits_fault_table.py [--digits 0,3,7] [--seeds 2] [--faults a,b] [--out DIR]
    .venv/bin/python scripts/digits_fault_table.py --noise-only   # the two noise columns alone, no parity

Writes DIR/faults.json, DIR/faults.md and DIR/native_outputs.png (a row of native outputs per variant; DIR
defaults to out/digits-faults) and prints the table. Exit 1 when a fault that changes the output is caught by
nothing or a detector fires on the correct pipeline at the trained size, 2 on bad usage. `calibration_samples`
is a `--source` for scripts/calibrate_noise_detector.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from harness.compare.records import threshold_multiple  # noqa: E402
from harness.noise.detector import detect_noise  # noqa: E402
from harness.noise.overrule import overrule  # noqa: E402
from harness.run.cases import Case, CaseError, get_case  # noqa: E402
from harness.run.latent_noise import judge_trace_latents  # noqa: E402
from harness.run.native_runner import run_native  # noqa: E402
from harness.run.parity import run_parity  # noqa: E402
from harness.run.request import GenerationRequest  # noqa: E402
from harness.trace.streaming import open_trace  # noqa: E402
from harness.verdicts.faults import Fault, faults_for  # noqa: E402
from native_models.errors import StageFieldError  # noqa: E402
from references.flux.digits import DigitClassifier, digit_prompt  # noqa: E402
from references.flux.digits_bridge import photo_vae_mutate  # noqa: E402

CASE = "flux-digits"
DTYPE = "fp32"
DEFAULT_DIGITS = (0, 3, 7)
DEFAULT_SEEDS = 2  # seeds 0..N-1
DETECTORS = ("parity", "noise", "photo_noise", "classifier")
CONTROL = "correct pipeline"
EXIT_UNCAUGHT, EXIT_USAGE = 1, 2


class UsageError(ValueError):
    """Bad command-line input: one line, exit 2."""


@dataclass
class RunOutcome:
    """One (variant, digit, seed) parity run, as plain data."""

    variant: str
    digit: int
    seed: int
    request: dict[str, Any]
    parity_failed: bool = False
    first_divergence: str | None = None  # 'stage/field[/step] (mode): x threshold' or the refusal
    refused: str | None = None  # the native pipeline refused the run (StageFieldError) or failed
    noise_flagged: bool | None = None  # None: no native output
    noise_reason: str | None = None
    photo_noise_flagged: bool | None = None  # the run decoded by the photo VAE (None: no output)
    photo_noise_reason: str | None = None
    predicted: int | None = None
    identical_to_correct: bool | None = None  # native output bit-identical to the correct pipeline's
    caught_by: list[str] = field(default_factory=list)  # detectors that fire here and not on the control
    tolerances: str | None = None  # where the parity thresholds came from (calibration file or defaults)
    seconds: float = 0.0


@dataclass
class VariantRow:
    """One line of the table: a fault (or the control) over all its runs."""

    variant: str
    kind: str  # "control" or "fault"
    description: str
    request_note: str  # how its request differs from the case's (e.g. "48x80"), "" when it does not
    runs: int = 0
    parity_failed: int = 0
    first_divergence: str | None = None
    noise_flagged: int = 0
    noise_reason: str | None = None
    photo_noise_flagged: int = 0
    photo_noise_reason: str | None = None
    classifier_hits: int = 0  # runs read as the prompted digit
    predictions: list[int | None] = field(default_factory=list)
    caught_runs: int = 0  # runs caught by at least one detector
    caught_by: dict[str, int] = field(default_factory=dict)  # detector -> runs it catches
    status: str = ""  # caught / NOT CAUGHT / inert / skipped / clean / FALSE ALARM / fires when correct
    note: str = ""
    seconds: float = 0.0

    @property
    def problem(self) -> bool:
        """A fault that changes the output and escapes all three, or a detector firing on the correct run."""
        return self.status in ("NOT CAUGHT", "FALSE ALARM")


# ---------------------------------------------------------------------------------------------- running


def request_note(request: GenerationRequest, base: GenerationRequest) -> str:
    """How `request` differs from `base`, e.g. '48x80' or 'true_cfg_scale=2.5' ('' when equal)."""
    notes = []
    if (request.height, request.width) != (base.height, base.width):
        notes.append(f"{request.height}x{request.width}")
    for f in fields(GenerationRequest):
        if f.name in ("height", "width"):
            continue
        if getattr(request, f.name) != getattr(base, f.name):
            notes.append(f"{f.name}={getattr(request, f.name)!r}")
    return ", ".join(notes)


def base_request(case: Case, digit: int, seed: int) -> GenerationRequest:
    return case.request(prompt=digit_prompt(digit), seed=seed, dtype=DTYPE)


def run_variant(case: Case, fault: Fault | None, request: GenerationRequest, digit: int, seed: int,
                classifier: DigitClassifier) -> tuple[RunOutcome, torch.Tensor | None]:
    """One teacher-forced parity run with `fault` (None: the correct pipeline); returns the native frames."""
    name = CONTROL if fault is None else fault.name
    outcome = RunOutcome(name, digit, seed, request.to_dict())
    start = time.perf_counter()
    try:
        result = run_parity(case, request, mutate_native=None if fault is None else fault.apply)
    except StageFieldError as exc:  # the loud kind: the native pipeline refuses, naming stage and field
        outcome.seconds = time.perf_counter() - start
        outcome.parity_failed, outcome.refused = True, f"refused: {exc}"
        outcome.first_divergence = outcome.refused
        return outcome, None
    outcome.seconds = time.perf_counter() - start
    outcome.tolerances = str(result.report.get("tolerances", {}).get("source"))
    comparison = result.comparison  # the traces alone: the noise verdict is judged separately below
    outcome.parity_failed = not comparison.passed
    first = comparison.first_divergence
    if first is not None:
        where = f"{first.stage}/{first.field}" + ("" if first.step is None else f"/{first.step}")
        multiple = threshold_multiple(first)
        size = first.problem or ("no value" if multiple is None else f"{multiple:.3g}x threshold")
        outcome.first_divergence = f"{where} ({first.mode}): {size}"
    verdict = detect_noise(result.native_frames)
    outcome.noise_flagged, outcome.noise_reason = bool(verdict), verdict.reason
    outcome.predicted = int(classifier.predict(result.native_frames)[0])
    photo = run_native(case.build_checkpoint(), request, open_trace({"case": CASE}),
                       mutate=photo_vae_mutate(None if fault is None else fault.apply))
    photo_verdict = detect_noise(photo)
    outcome.photo_noise_flagged, outcome.photo_noise_reason = bool(photo_verdict), photo_verdict.reason
    return outcome, result.native_frames


def judge(outcome: RunOutcome, control: RunOutcome | None, digit: int) -> None:
    """Fill `caught_by`: the detectors that fire on this run and not on the correct run of the same request."""
    fired = {
        "parity": outcome.parity_failed,
        "noise": bool(outcome.noise_flagged),
        "photo_noise": bool(outcome.photo_noise_flagged),
        "classifier": outcome.predicted is not None and outcome.predicted != digit,
    }
    if control is not None and control is not outcome:
        fired["noise"] &= not control.noise_flagged
        fired["photo_noise"] &= not control.photo_noise_flagged
        fired["classifier"] &= control.predicted == digit
        fired["parity"] &= not control.parity_failed
    outcome.caught_by = [name for name in DETECTORS if fired[name]]


def summarise(name: str, kind: str, description: str, note: str, outcomes: list[RunOutcome]) -> VariantRow:
    row = VariantRow(name, kind, description, note, runs=len(outcomes))
    row.parity_failed = sum(o.parity_failed for o in outcomes)
    row.first_divergence = next((o.first_divergence for o in outcomes if o.first_divergence), None)
    row.noise_flagged = sum(bool(o.noise_flagged) for o in outcomes)
    row.noise_reason = next((o.noise_reason for o in outcomes if o.noise_flagged), None)
    row.photo_noise_flagged = sum(bool(o.photo_noise_flagged) for o in outcomes)
    row.photo_noise_reason = next((o.photo_noise_reason for o in outcomes if o.photo_noise_flagged), None)
    row.classifier_hits = sum(o.predicted == o.digit for o in outcomes)
    row.predictions = [o.predicted for o in outcomes]
    row.caught_runs = sum(bool(o.caught_by) for o in outcomes)
    row.caught_by = dict(Counter(d for o in outcomes for d in o.caught_by))
    row.seconds = round(sum(o.seconds for o in outcomes), 1)
    refused = [o for o in outcomes if o.refused]
    if kind == "control":
        row.status = "clean" if row.caught_runs == 0 else ("FALSE ALARM" if not note else "fires when correct")
        if row.caught_runs and note:
            row.note = f"the model was trained at 32x32 only; at {note} the correct pipeline trips " + \
                       ", ".join(sorted(row.caught_by)) + ", so those detectors judge nothing there"
    elif refused and len(refused) == len(outcomes):
        row.status, row.note = "caught", "refused: the native pipeline stops with a StageFieldError, no output"
    elif all(o.identical_to_correct and not o.parity_failed for o in outcomes):
        row.status = "inert"
        row.note = "native output bit-identical to the correct pipeline's and parity passes: the fault changes " \
                   "nothing on this model"
    else:
        row.status = "caught" if row.caught_runs == row.runs else "NOT CAUGHT"
    return row


def fault_table(digits: tuple[int, ...], seeds: tuple[int, ...], faults: list[Fault] | None = None,
                progress: Callable[[str], None] | None = None,
                frames_out: dict[str, list[torch.Tensor | None]] | None = None,
                ) -> tuple[list[VariantRow], list[RunOutcome]]:
    """Controls first (one per distinct request the faults need), then every fault; rows and per-run outcomes.

    `frames_out`, when given, receives each row's native frames (None for a refused run), for a picture grid.
    """
    case = get_case(CASE)
    classifier = DigitClassifier()
    faults = faults_for(case.family) if faults is None else faults
    default = case.request(dtype=DTYPE)
    rows: list[VariantRow] = []
    every: list[RunOutcome] = []
    controls: dict[GenerationRequest, tuple[RunOutcome, torch.Tensor | None]] = {}

    def control_for(request: GenerationRequest, digit: int, seed: int) -> tuple[RunOutcome, torch.Tensor | None]:
        if request not in controls:
            controls[request] = run_variant(case, None, request, digit, seed, classifier)
            judge(controls[request][0], None, digit)
        return controls[request]

    # one control row per distinct request variant (the case's own first)
    notes = {""} | {request_note(f.request_for(default), default) for f in faults if f.applies_to(DTYPE)}
    for note in sorted(notes):
        group, group_frames = [], []
        for digit in digits:
            for seed in seeds:
                base = base_request(case, digit, seed)
                fault = next((f for f in faults if request_note(f.request_for(base), base) == note), None)
                request = base if fault is None or not note else fault.request_for(base)
                group.append(control_for(request, digit, seed)[0])
                group_frames.append(control_for(request, digit, seed)[1])
        label = CONTROL if not note else f"{CONTROL} ({note})"
        if frames_out is not None:
            frames_out[label] = group_frames
        rows.append(summarise(label, "control", "no fault", note, group))
        every.extend(group)
        if progress:
            progress(describe(rows[-1]))

    for fault in faults:
        if not fault.applies_to(DTYPE):
            rows.append(VariantRow(fault.name, "fault", fault.description, "", status="skipped",
                                   note=fault.scope_note or f"not defined for {DTYPE}"))
            continue
        if fault.topology != (1, 1):
            rows.append(VariantRow(fault.name, "fault", fault.description, "", status="skipped",
                                   note=f"needs the native side on tp x sp = {fault.topology} ranks"))
            continue
        group, group_frames = [], []
        for digit in digits:
            for seed in seeds:
                base = base_request(case, digit, seed)
                request = fault.request_for(base)
                control, control_frames = control_for(request, digit, seed)
                outcome, frames = run_variant(case, fault, request, digit, seed, classifier)
                if frames is not None and control_frames is not None:
                    outcome.identical_to_correct = frames.shape == control_frames.shape and bool(
                        torch.equal(frames, control_frames))
                judge(outcome, control, digit)
                group.append(outcome)
                group_frames.append(frames)
        if frames_out is not None:
            frames_out[fault.name] = group_frames
        rows.append(summarise(fault.name, "fault", fault.description, request_note(fault.request_for(default),
                                                                                   default), group))
        every.extend(group)
        if progress:
            progress(describe(rows[-1]))
    return rows, every


# ---------------------------------------------------------------------------------------------- output


def describe(row: VariantRow) -> str:
    """One progress line."""
    if row.status == "skipped":
        return f"{row.variant}: skipped ({row.note.split(':')[0]})"
    return (f"{row.variant}{f' [{row.request_note}]' if row.request_note else ''}: {row.status}; parity "
            f"{row.parity_failed}/{row.runs}, noise {row.noise_flagged}/{row.runs}, noise (photo VAE) "
            f"{row.photo_noise_flagged}/{row.runs}, classifier "
            f"{row.classifier_hits}/{row.runs} ({row.seconds:.0f} s)")


def _cell_parity(row: VariantRow) -> str:
    if row.status == "skipped":
        return "-"
    text = f"{row.parity_failed}/{row.runs}"
    return f"{text}: `{row.first_divergence}`" if row.first_divergence else text


def _cell_noise(row: VariantRow) -> str:
    if row.status == "skipped" or row.note.startswith("refused"):
        return "-"
    text = f"{row.noise_flagged}/{row.runs}"
    return f"{text} ({row.noise_reason.split(';')[0]})" if row.noise_reason else text


def _cell_photo_noise(row: VariantRow) -> str:
    if row.status == "skipped" or row.note.startswith("refused"):
        return "-"
    text = f"{row.photo_noise_flagged}/{row.runs}"
    if row.photo_noise_reason:
        text += f" ({row.photo_noise_reason.split(':')[0]})"
    return text


def _cell_classifier(row: VariantRow) -> str:
    if row.status == "skipped" or row.note.startswith("refused"):
        return "-"
    read = Counter(p for p in row.predictions if p is not None)
    return f"{row.classifier_hits}/{row.runs} (read as " + ", ".join(
        f"{p}" + (f" x{n}" if n > 1 else "") for p, n in sorted(read.items())) + ")"


def markdown(rows: list[VariantRow], digits: tuple[int, ...], seeds: tuple[int, ...], seconds: float,
             tolerances: list[str]) -> str:
    lines = [
        f"flux-digits, {DTYPE}, digits {', '.join(map(str, digits))} x seeds {', '.join(map(str, seeds))} "
        f"({len(digits) * len(seeds)} runs per row); teacher-forced parity runs, native output judged; parity "
        f"tolerances: {', '.join(tolerances) or '-'}.",
        "",
        "| variant | request | parity fails: first divergence | noise flagged | noise flagged, photo VAE decode | "
        "classifier sees the digit | caught by | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        caught = ", ".join(f"{d} {row.caught_by[d]}/{row.runs}" for d in DETECTORS if d in row.caught_by) or "-"
        verdict = row.status + (f": {row.note}" if row.note else "")
        lines.append(f"| `{row.variant}` | {row.request_note or 'case'} | {_cell_parity(row)} | {_cell_noise(row)} "
                     f"| {_cell_photo_noise(row)} | {_cell_classifier(row)} | {caught} | {verdict} |")
    faults = [r for r in rows if r.kind == "fault" and r.status not in ("skipped",)]
    counts = Counter(r.status for r in faults)
    lines.append("")
    lines.append(f"{len(faults)} faults run: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                 + f"; {seconds:.0f} s. A detector catches a run when it fires on the faulty native output and "
                 "not on the correct pipeline's output for the same request.")
    return "\n".join(lines) + "\n"


def save_grid(frames: dict[str, list[torch.Tensor | None]], path: Path, scale: int = 2) -> None:
    """A PNG: one row per variant (table order), one column per run; cells padded grey to the largest size,
    a refused run left grey. Written to a temp file, then renamed."""
    from PIL import Image

    present = [f for group in frames.values() for f in group if f is not None]
    if not present:
        return
    height, width = max(f.shape[-2] for f in present), max(f.shape[-1] for f in present)
    rows = []
    for group in frames.values():
        cells = []
        for image in group:
            cell = torch.full((3, height + 2, width + 2), 0.5)
            if image is not None:
                cell[:, 1:1 + image.shape[-2], 1:1 + image.shape[-1]] = image[0].clamp(0, 1)
            cells.append(cell)
        rows.append(torch.cat(cells, dim=-1))
    grid = torch.cat(rows, dim=-2).repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    pixels = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels).save(tmp, format="PNG")
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- calibration source


def calibration_samples(digits: tuple[int, ...] = DEFAULT_DIGITS,
                        seeds: tuple[int, ...] = tuple(range(DEFAULT_SEEDS))) -> Iterator[dict[str, Any]]:
    """A `--source` for scripts/calibrate_noise_detector.py: the digits model's native outputs.

    The correct pipeline at the trained size (category `digits-model-correct`, expect "picture": a real digit
    must never be flagged) and under every FLUX fault of the catalog that produces an output in fp32
    (`digits-model:<fault>`, expect "either": a broken pipeline may still draw a smooth picture). Native side
    only (no reference, no forcing): the frames are exactly those of the parity runs in the table.
    """
    case = get_case(CASE)
    checkpoint = case.build_checkpoint()
    variants: list[Fault | None] = [None, *(f for f in faults_for(case.family)
                                            if f.applies_to(DTYPE) and f.topology == (1, 1) and not f.raises)]
    for fault in variants:
        for digit in digits:
            for seed in seeds:
                base = base_request(case, digit, seed)
                request = base if fault is None else fault.request_for(base)
                try:
                    frames = run_native(checkpoint, request, open_trace({"case": CASE}),
                                        mutate=None if fault is None else fault.apply)
                except StageFieldError as exc:  # a refusal not declared as `raises`: no output to judge
                    print(f"digits_fault_table: {fault.name if fault else CONTROL} refused: {exc}", file=sys.stderr)
                    break
                note = request_note(request, base)
                yield {
                    "category": "digits-model-correct" if fault is None else f"digits-model:{fault.name}",
                    "expect": "picture" if fault is None else "either",
                    "name": f"{fault.name if fault else 'correct'} digit {digit} seed {seed}"
                            + (f" ({note})" if note else ""),
                    "frames": frames[0].permute(1, 2, 0).numpy(),  # (H, W, C) in [0, 1]
                }


# ------------------------------------------------------------------------------------ noise-only table


def noise_table(digits: tuple[int, ...], seeds: tuple[int, ...], faults: list[Fault],
                progress: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, list]]:
    """The two noise columns alone (no reference, no parity, no classifier; a fraction of the time): per variant,
    how many native outputs `detect_noise` flags as the digits VAE decodes them (32 px) and as the photo VAE
    decodes the same latents (64 px). Returns the rows and the photo-VAE frames per variant (for a grid)."""
    case = get_case(CASE)
    checkpoint = case.build_checkpoint()
    signature = case.latent_signature(checkpoint)  # the digits VAE's (harness/run/latent_noise.py judges the same)
    variants: list[Fault | None] = [None, *(f for f in faults if f.applies_to(DTYPE) and f.topology == (1, 1))]
    rows, grid = [], {}
    for fault in variants:
        name = CONTROL if fault is None else fault.name
        row: dict[str, Any] = {"variant": name, "runs": 0, "refused": 0, "digits_vae_flagged": 0,
                               "photo_vae_flagged": 0, "digits_vae_reason": None, "photo_vae_reason": None,
                               "latent_flagged": 0, "latent_reason": None, "digits_vae_or_latent_flagged": 0,
                               "overruled": 0, "request": ""}
        frames_out = []
        start = time.perf_counter()
        for digit in digits:
            for seed in seeds:
                base = base_request(case, digit, seed)
                request = base if fault is None else fault.request_for(base)
                row["request"] = request_note(request, base)
                row["runs"] += 1
                try:
                    trace = open_trace({"case": CASE})
                    small = run_native(checkpoint, request, trace, mutate=None if fault is None else fault.apply)
                    photo = run_native(checkpoint, request, open_trace({"case": CASE}),
                                       mutate=photo_vae_mutate(None if fault is None else fault.apply))
                except StageFieldError:
                    row["refused"] += 1
                    frames_out.append(None)
                    continue
                image_flagged, digits_verdict = False, None
                for key, frames in (("digits_vae", small), ("photo_vae", photo)):
                    verdict = detect_noise(frames)
                    if key == "digits_vae":
                        digits_verdict = verdict.to_dict()
                    if verdict:
                        row[f"{key}_flagged"] += 1
                        row[f"{key}_reason"] = row[f"{key}_reason"] or verdict.reason
                        image_flagged |= key == "digits_vae"
                latent = judge_trace_latents(trace, signature)  # what the digits VAE was handed
                if latent:
                    row["latent_flagged"] += 1
                    row["latent_reason"] = row["latent_reason"] or latent.reason
                # as harness/noise/latent_check.py `combine`: a noise_latents-only image flag the latents overrule
                overruled = latent is not None and not latent and overrule(digits_verdict, latent.to_dict())
                row["overruled"] += bool(overruled)
                row["digits_vae_or_latent_flagged"] += bool((image_flagged and not overruled) or latent)
                frames_out.append(photo)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        grid[name] = frames_out
        if progress:
            progress(f"{name}: digits VAE {row['digits_vae_flagged']}/{row['runs']}, latent check "
                     f"{row['latent_flagged']}/{row['runs']}, overruled {row['overruled']}, photo VAE "
                     f"{row['photo_vae_flagged']}/{row['runs']}, refused {row['refused']} ({row['seconds']:.0f} s)")
    return rows, grid


def noise_markdown(rows: list[dict[str, Any]], digits: tuple[int, ...], seeds: tuple[int, ...]) -> str:
    lines = [f"flux-digits native outputs, {DTYPE}, digits {', '.join(map(str, digits))} x seeds "
             f"{', '.join(map(str, seeds))}: flagged by detect_noise as decoded by the digits VAE (32 px: rules + "
             "small-frame learned check) "
             "and by the photo VAE through the bridge (64 px: rules + learned check); the latent check: the "
             "native decode/latents against the digits VAE's signature (harness/noise/latent_check.py); digits VAE or "
             "latent: as the product combines them, a noise_latents-only image flag the latents overrule not counted "
             "(harness/noise/overrule.py).", "",
             "| variant | request | digits VAE | latent check | digits VAE or latent | photo VAE | latent reason "
             "(first flagged run) | photo VAE reason (first flagged run) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["refused"] == row["runs"]:
            lines.append(f"| `{row['variant']}` | {row['request'] or 'case'} | refused | refused | refused | refused "
                         "| - | - |")
            continue
        reason = (row["photo_vae_reason"] or "-").split(";")[0]
        runs = row["runs"]
        lines.append(f"| `{row['variant']}` | {row['request'] or 'case'} | {row['digits_vae_flagged']}/{runs} "
                     f"| {row['latent_flagged']}/{runs} | {row['digits_vae_or_latent_flagged']}/{runs}"
                     f"{' (' + str(row['overruled']) + ' image flags overruled)' if row['overruled'] else ''} "
                     f"| {row['photo_vae_flagged']}/{runs} | {row['latent_reason'] or '-'} | {reason} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- CLI


def parse_int_list(text: str, what: str, low: int, high: int) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(not low <= v <= high for v in values):
        raise UsageError(f"--{what} must be integers in {low}..{high}, got {text!r}")
    return values


def select_faults(names: str | None) -> list[Fault]:
    catalog = faults_for(get_case(CASE).family)
    if names is None:
        return catalog
    known = {f.name: f for f in catalog}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise UsageError(f"--faults: unknown FLUX fault(s) {unknown or [names]}; known: {', '.join(known)}")
    return [known[n] for n in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", default=",".join(map(str, DEFAULT_DIGITS)), help="prompted digits (0,3,7)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds 0..N-1 per digit (2)")
    parser.add_argument("--faults", help="comma-separated fault names (default: every FLUX fault)")
    parser.add_argument("--out", type=Path, default=Path("out/digits-faults"), help="report folder")
    parser.add_argument("--noise-only", action="store_true",
                        help="only the two noise columns (native runs, no reference): noise.{md,json}, a fraction "
                             "of the time")
    args = parser.parse_args(argv)
    try:
        digits = parse_int_list(args.digits, "digits", 0, 9)
        if args.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
        faults = select_faults(args.faults)
        get_case(CASE).build_checkpoint()
    except (UsageError, CaseError) as exc:
        print(f"digits_fault_table.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    seeds = tuple(range(args.seeds))
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    if args.noise_only:
        noise_rows, photo_frames = noise_table(digits, seeds, faults, progress=lambda line: print(line, flush=True))
        report = noise_markdown(noise_rows, digits, seeds)
        print(report)
        write_atomic(args.out / "noise.md", report)
        write_atomic(args.out / "noise.json", json.dumps({"rows": noise_rows, "seconds": round(
            time.perf_counter() - start, 1)}, indent=2) + "\n")
        save_grid(photo_frames, args.out / "photo_vae_outputs.png")
        return 0
    frames: dict[str, list[torch.Tensor | None]] = {}
    rows, outcomes = fault_table(digits, seeds, faults, progress=lambda line: print(line, flush=True),
                                 frames_out=frames)
    seconds = time.perf_counter() - start
    tolerances = sorted({o.tolerances for o in outcomes if o.tolerances})
    table = markdown(rows, digits, seeds, seconds, tolerances)
    print()
    print(table)
    data = {"case": CASE, "dtype": DTYPE, "digits": list(digits), "seeds": list(seeds),
            "seconds": round(seconds, 1), "rows": [asdict(r) for r in rows],
            "runs": [{k: _plain(v) for k, v in asdict(o).items()} for o in outcomes]}
    write_atomic(args.out / "faults.json", json.dumps(data, indent=2) + "\n")
    write_atomic(args.out / "faults.md", table)
    save_grid(frames, args.out / "native_outputs.png")
    print(f"report: {args.out / 'faults.md'}, {args.out / 'faults.json'}; native outputs (a row per variant, "
          f"in table order): {args.out / 'native_outputs.png'}")
    problems = [r.variant for r in rows if r.problem]
    if problems:
        print(f"not caught or false alarm: {', '.join(problems)}", file=sys.stderr)
    return EXIT_UNCAUGHT if problems else 0


if __name__ == "__main__":
    sys.exit(main())
