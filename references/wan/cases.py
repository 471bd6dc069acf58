"""The Wan 2.1 T2V parity case: wan-tiny (random weights, video), registered on import.

Reference code (Diffusers) and the builder are imported when the case runs, not here (see references/flux/cases.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.run.cases import Case, ProgressCallback, register_case
from harness.run.request import GenerationRequest
from harness.trace.memory import Trace


def _tiny_wan_checkpoint() -> Path:
    from references.wan.tiny import TinyWanConfig, tiny_wan_checkpoint

    # 4 DiT heads (not the builder's default 2): heads split by TP = 2, then by Ulysses SP = 2 within a TP shard
    return tiny_wan_checkpoint(seed=0, config=TinyWanConfig(dit_heads=4))


def _run_wan_reference(
    checkpoint: Path, request: GenerationRequest, trace: Trace, progress: ProgressCallback | None = None
) -> None:
    from references.wan.runner import run_wan_reference

    run_wan_reference(checkpoint, request, trace, progress)


def _run_wan_reference_probe(checkpoint: Path, request: GenerationRequest, trace: Trace, probe: Any) -> None:
    from references.wan.runner import run_wan_reference

    run_wan_reference(checkpoint, request, trace, probe=probe)


def _run_wan_reference_forced(checkpoint: Path, request: GenerationRequest, trace: Trace, baseline: Trace) -> None:
    from references.wan.runner import run_wan_reference

    run_wan_reference(checkpoint, request, trace, force_from=baseline)


register_case(Case(
    name="wan-tiny",
    family="wan",
    description="Wan 2.1 T2V architecture, tiny random weights (UMT5 2 layers, DiT 2 layers x 4 heads x 16, "
                "causal 3D VAE), UniPC, true CFG",
    build_checkpoint=_tiny_wan_checkpoint,
    run_reference=_run_wan_reference,
    run_reference_forced=_run_wan_reference_forced,
    run_reference_probe=_run_wan_reference_probe,
    video=True,
    # 5 frames -> 2 latent frames of 6x10 (30 DiT tokens); true CFG as WanPipeline samples by default
    default_request=GenerationRequest(
        prompt="a cat walks through the misty forest", seed=0, steps=4, height=48, width=80, frames=5,
        negative_prompt="blurry, low quality", true_cfg_scale=5.0, max_sequence_length=64,
    ),
    # per seed one more true-CFG request at one step and 32x32 (as flux-tiny's): Wan's false-alarm campaign met
    # 1-step runs at 2.05x the 4-step floors
    calibration_corners=((1, 32, 32),),
))
