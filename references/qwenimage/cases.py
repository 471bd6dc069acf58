"""The Qwen-Image parity case: qwenimage-tiny (random weights), registered on import.

Reference code (Diffusers) and the builder are imported when the case runs, not here (see references/flux/cases.py).
"""

from __future__ import annotations

from pathlib import Path

from harness.run.cases import Case, ProgressCallback, register_case
from harness.run.request import GenerationRequest
from harness.trace.memory import Trace


def _tiny_qwenimage_checkpoint() -> Path:
    from references.qwenimage.tiny import tiny_qwenimage_checkpoint

    return tiny_qwenimage_checkpoint(seed=0)


def _run_qwenimage_reference(
    checkpoint: Path, request: GenerationRequest, trace: Trace, progress: ProgressCallback | None = None
) -> None:
    from references.qwenimage.runner import run_qwenimage_reference

    run_qwenimage_reference(checkpoint, request, trace, progress)


def _run_qwenimage_reference_forced(checkpoint: Path, request: GenerationRequest, trace: Trace,
                                    baseline: Trace) -> None:
    from references.qwenimage.runner import run_qwenimage_reference

    run_qwenimage_reference(checkpoint, request, trace, force_from=baseline)


register_case(Case(
    name="qwenimage-tiny",
    family="qwenimage",
    description="Qwen-Image architecture, tiny random weights (Qwen2.5-VL text 2 layers with GQA 4/2 heads, DiT 2 "
                "blocks x 4 heads x 16, causal 3D VAE), dynamic-shift Euler, norm-preserving true CFG",
    build_checkpoint=_tiny_qwenimage_checkpoint,
    run_reference=_run_qwenimage_reference,
    run_reference_forced=_run_qwenimage_reference_forced,
    # 48x80 -> a 6x10 latent, 3x5 packed tokens (odd rows: the centred rotary positions are asymmetric); true CFG
    # as QwenImagePipeline guides by default (true_cfg_scale 4 with a negative prompt)
    default_request=GenerationRequest(
        prompt="a red fox in the snow at night", seed=0, steps=4, height=48, width=80, guidance_scale=1.0,
        negative_prompt="blurry, low quality", true_cfg_scale=4.0, max_sequence_length=64,
    ),
    # per seed one more true-CFG request at 32x32 and 2 steps, the fewest the terminal shift allows (1 step gives
    # NaN sigmas in Diffusers): few large steps put the most error into one step's latents
    calibration_corners=((2, 32, 32),),
    # per seed one request with a second, shorter prompt: it is left-padded in the encoder and zero-padded (and
    # masked) in the DiT, the paths a single prompt never takes (the mask faults run there)
    calibration_variants=((("extra_prompts", ("a small blue bird",)),),),
    min_steps=2,
))
