"""Which component call a drill re-runs: from a record (stage, field, step) to a component and its call index.

The component is the native pipeline's module of the same name as the reference pipeline's (`text_encoder_2`,
`transformer`, `vae`: both load the same `model_index.json`); the call index counts the reference pipeline's
calls of that component in one run (one per prompt for a text encoder, the negative prompt second; one per
DiT pass, the conditional pass first under true CFG; one VAE decode), which is how the probe
(harness/drill/capture.py) finds the call whose inputs the drill uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from native_models.configs import PipelineConfig

DRILLED_STAGES = ("encode", "denoise", "decode")


class DrillError(Exception):
    """A drill that cannot run: a stage without a model component, a call the reference never made."""


@dataclass(frozen=True)
class DrillTarget:
    stage: str
    field: str | None
    step: int | None
    component: str  # pipeline module name, the same on both sides
    method: str  # "forward" (a module call) or the method the pipeline calls, e.g. "decode"
    call: int  # index of the reference pipeline's call of `component` in one run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = f"{self.stage}/{self.field or '*'}" + ("" if self.step is None else f" step {self.step}")
        return f"{self.component}.{self.method} call {self.call} ({where})"


def resolve_target(config: PipelineConfig, true_cfg: bool, steps: int, stage: str, field: str | None = None,
                   step: int | None = None) -> DrillTarget:
    """The component call behind record `stage/field[/step]` of a run with `steps` steps (`true_cfg`: two DiT
    passes per step)."""
    if stage not in DRILLED_STAGES:
        raise DrillError(f"stage {stage} runs no model component (only {', '.join(DRILLED_STAGES)} do): "
                         f"there is nothing to drill")
    if stage == "encode":
        negative = bool(field and field.startswith("negative_"))
        plain = field.removeprefix("negative_") if field else None
        specs = [s for s in config.text_encoders if plain in (None, s.trace_field)]
        if not specs:
            known = ", ".join(s.trace_field for s in config.text_encoders)
            raise DrillError(f"no text encoder writes encode/{field} (this pipeline's: {known})")
        if negative and not true_cfg:
            raise DrillError(f"encode/{field} exists only under true CFG (a negative prompt and --true-cfg > 1)")
        return DrillTarget(stage, field or specs[0].trace_field, None, specs[0].encoder, "forward", int(negative))
    if stage == "decode":
        return DrillTarget(stage, field, None, "vae", "decode", 0)
    step = 0 if step is None else step
    if not 0 <= step < steps:
        raise DrillError(f"denoise step {step} is outside this run's steps 0..{steps - 1}")
    uncond = field == "transformer_output_uncond"
    if uncond and not true_cfg:
        raise DrillError("transformer_output_uncond exists only under true CFG")
    per_step = 2 if true_cfg else 1
    return DrillTarget(stage, field, step, "transformer", "forward", step * per_step + int(uncond))


def every_component(config: PipelineConfig, true_cfg: bool, steps: int, step: int = 0) -> list[DrillTarget]:
    """One target per model component: each text encoder's prompt call, the DiT's conditional pass at `step`,
    the VAE decode (a drill of the whole pipeline's modules)."""
    targets = [resolve_target(config, true_cfg, steps, "encode", spec.trace_field) for spec in config.text_encoders]
    targets.append(resolve_target(config, true_cfg, steps, "denoise", "transformer_output", step))
    targets.append(resolve_target(config, true_cfg, steps, "decode", "image"))
    return targets
