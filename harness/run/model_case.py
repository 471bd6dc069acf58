"""A user's checkpoint as a parity case: `diffparity run --model DIR_OR_HF_ID` without a case name.

The family comes from `model_index.json` (native_models/checkpoint_family.py, through the registry's detectors),
the reference runner from that family's registered cases (every case of a family runs the same Diffusers
pipeline), and the default request from the family's `SamplingParams` for this checkpoint: FLUX.1-dev samples 28
steps at 1024x1024 with 512 T5 tokens and guidance 3.5, schnell 4 steps with 256 tokens and guidance 0, Wan 2.1
81 frames at 480x832 with 512 tokens and CFG 5 against its negative prompt. Flags override any of them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.run.cases import Case, CaseError, cases_for_family
from harness.run.request import GenerationRequest
from native_models.checkpoint_family import checkpoint_defaults
from native_models.configs import SamplingParams


def model_label(model: str, checkpoint: Path) -> str:
    """A file-name-safe name of the checkpoint for its case name and default output folder: the folder's name,
    or `org--name` for a Hugging Face id."""
    text = str(model)
    raw = checkpoint.resolve().name if Path(text).expanduser().is_dir() else text.strip("/").replace("/", "--")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in raw).lstrip(".")
    return safe[-80:] or "model"


def request_from_params(params: SamplingParams, base: GenerationRequest) -> GenerationRequest:
    """The family's sampling defaults as the request both sides run; what SamplingParams does not hold (an
    image-to-video case's conditioning picture) comes from the family case's request `base`."""
    return replace(
        base,
        prompt=params.prompt, seed=params.seed, steps=params.num_inference_steps, height=params.height,
        width=params.width, frames=params.num_frames, guidance_scale=params.guidance_scale,
        negative_prompt=params.negative_prompt, true_cfg_scale=params.true_cfg_scale,
        max_sequence_length=params.max_sequence_length,
    )


def model_case(model: str, checkpoint: Path) -> Case:
    """The case `run --model` runs: named FAMILY@LABEL, building nothing (the checkpoint is the user's), with the
    family's reference runner and the checkpoint's default request. Not registered: it exists for one run."""
    entry, params = checkpoint_defaults(checkpoint)
    templates = cases_for_family(entry.family)
    if not templates:
        raise CaseError(f"family {entry.family!r} registers no parity case, so no reference runner for {model}")
    template = templates[0]
    return replace(
        template,
        name=f"{entry.family}@{model_label(model, checkpoint)}",
        description=f"{model}: {entry.family} checkpoint, request defaults from {entry.sampling_param_cls.__name__}",
        build_checkpoint=lambda: checkpoint,
        default_request=request_from_params(params, template.default_request),
        expects_picture=False,  # decided per run by --expect (harness/run/expectation.py)
        calibration_sizes=(),
        calibration_corners=(),
    )
