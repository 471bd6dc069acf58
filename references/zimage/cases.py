"""The Z-Image parity case: zimage-tiny (random weights), registered on import.

Reference code (Diffusers) and the builder are imported when the case runs, not here (see references/flux/cases.py).
"""

from __future__ import annotations

from pathlib import Path

from harness.run.cases import Case, ProgressCallback, register_case
from harness.run.request import GenerationRequest
from harness.trace.memory import Trace

# 24 words of the tiny vocabulary: 33 tokens with the chat template, one more than the DiT's 32-token caption block
LONG_PROMPT = ("a small blue bird sitting on a tree under the golden sky at sunset with a river and a mountain lake "
               "in the forest")


def _tiny_zimage_checkpoint() -> Path:
    from references.zimage.tiny import tiny_zimage_checkpoint

    return tiny_zimage_checkpoint(seed=0)


def _run_zimage_reference(
    checkpoint: Path, request: GenerationRequest, trace: Trace, progress: ProgressCallback | None = None
) -> None:
    from references.zimage.runner import run_zimage_reference

    run_zimage_reference(checkpoint, request, trace, progress)


def _run_zimage_reference_forced(checkpoint: Path, request: GenerationRequest, trace: Trace,
                                 baseline: Trace) -> None:
    from references.zimage.runner import run_zimage_reference

    run_zimage_reference(checkpoint, request, trace, force_from=baseline)


register_case(Case(
    name="zimage-tiny",
    family="zimage",
    description="Z-Image architecture, tiny random weights (Qwen3 text 3 layers with q/k norm and GQA 4/2 heads, "
                "single-stream DiT 1+1 refiners + 2 layers x 4 heads x 16, FLUX-style VAE), static-shift Euler, CFG",
    build_checkpoint=_tiny_zimage_checkpoint,
    run_reference=_run_zimage_reference,
    run_reference_forced=_run_zimage_reference_forced,
    # 48x80 -> a 6x10 latent, 3x5 = 15 image tokens padded to 32 with the learned pad token; prompts padded (on the
    # left) to max_sequence_length 48; CFG 5 against a negative prompt, as ZImagePipeline guides by default
    default_request=GenerationRequest(
        prompt="a red fox in the snow at night", seed=0, steps=4, height=48, width=80, guidance_scale=1.0,
        negative_prompt="blurry, low quality", true_cfg_scale=5.0, max_sequence_length=48,
    ),
    calibration_corners=((1, 32, 32),),
    # per seed one request with a second, longer prompt (33 tokens: its caption pads to 64 in the DiT, the first
    # prompt's to 32), so the DiT's batch padding and key mask get floors too
    calibration_variants=((("extra_prompts", (LONG_PROMPT,)),),),
))
