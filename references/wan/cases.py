"""The Wan parity cases (random weights, video), registered on import:
- wan-tiny: Wan 2.1 text-to-video (registry family "wan");
- wan-a14b-tiny: Wan 2.2 A14B text-to-video, two experts switched at boundary_ratio 0.875 (family "wan");
- wan-i2v-tiny: Wan 2.1 image-to-video, CLIP image tokens and conditioning latents (family "wan_i2v");
- wan-a14b-i2v-tiny: Wan 2.2 A14B image-to-video, two experts, conditioning latents without CLIP ("wan_i2v").
Image-to-video is a registry family of its own: its native config class differs (native_models/pipelines/
wan_i2v.py), and the gate checks that each case's checkpoint resolves to its family's registry entry.

Reference code (Diffusers) and the builder are imported when the case runs, not here (see references/flux/cases.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.run.cases import Case, ProgressCallback, register_case
from harness.run.request import GenerationRequest
from harness.run.request_image import synthetic_image
from harness.trace.memory import Trace

# 4 DiT heads (not the builder's default 2): heads split by TP = 2, then by Ulysses SP = 2 within a TP shard
DIT_HEADS = 4
# Wan 2.2 A14B's boundary ratios (T2V 0.875, I2V 0.9): at 4 steps (timesteps 999, 900, 750, 500) the high-noise
# expert runs steps 0-1 and the low-noise one steps 2-3; I2V's boundary is timestep 900 itself (t >= boundary)
T2V_BOUNDARY, I2V_BOUNDARY = 0.875, 0.9
# the conditioning picture of the image-to-video cases: 96x60 (aspect 1.6) for 80x48 requests (1.67), so both
# sides resize it (Lanczos for the VAE, bicubic + crop for CLIP)
I2V_IMAGE = synthetic_image(seed=0, width=96, height=60)


def _checkpoint(**options: Any) -> Path:
    from references.wan.tiny import TinyWanConfig, tiny_wan_checkpoint

    return tiny_wan_checkpoint(seed=0, config=TinyWanConfig(dit_heads=DIT_HEADS, **options))


def _tiny_wan_checkpoint() -> Path:
    return _checkpoint()


def _tiny_wan_a14b_checkpoint() -> Path:
    return _checkpoint(boundary_ratio=T2V_BOUNDARY)


def _tiny_wan_i2v_checkpoint() -> Path:
    return _checkpoint(image_to_video=True)


def _tiny_wan_a14b_i2v_checkpoint() -> Path:
    return _checkpoint(image_to_video=True, image_encoder=False, boundary_ratio=I2V_BOUNDARY)


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


def _run_wan_i2v_reference(
    checkpoint: Path, request: GenerationRequest, trace: Trace, progress: ProgressCallback | None = None
) -> None:
    from references.wan.runner import run_wan_i2v_reference

    run_wan_i2v_reference(checkpoint, request, trace, progress)


def _run_wan_i2v_reference_forced(checkpoint: Path, request: GenerationRequest, trace: Trace, baseline: Trace
                                  ) -> None:
    from references.wan.runner import run_wan_i2v_reference

    run_wan_i2v_reference(checkpoint, request, trace, force_from=baseline)


register_case(Case(
    name="wan-a14b-tiny",
    family="wan",
    description="Wan 2.2 A14B T2V layout: two tiny random DiTs (2 layers x 4 heads x 16) switched at boundary "
                "ratio 0.875, each with its CFG scale (5.0, 3.0); UMT5, causal 3D VAE, UniPC",
    build_checkpoint=_tiny_wan_a14b_checkpoint,
    run_reference=_run_wan_reference,
    run_reference_forced=_run_wan_reference_forced,
    video=True,
    default_request=GenerationRequest(
        prompt="a cat walks through the misty forest", seed=0, steps=4, height=48, width=80, frames=5,
        negative_prompt="blurry, low quality", true_cfg_scale=5.0, true_cfg_scale_2=3.0, max_sequence_length=64,
    ),
    calibration_corners=((1, 32, 32),),
))

register_case(Case(
    name="wan-i2v-tiny",
    family="wan_i2v",
    description="Wan 2.1 I2V architecture, tiny random weights: CLIP vision tower (3 layers, its penultimate "
                "state), DiT with the image path (36 input channels), causal 3D VAE encoder and decoder, UniPC, "
                "true CFG; a 96x60 synthetic conditioning picture",
    build_checkpoint=_tiny_wan_i2v_checkpoint,
    run_reference=_run_wan_i2v_reference,
    run_reference_forced=_run_wan_i2v_reference_forced,
    video=True,
    # 512 text tokens: Diffusers takes all but the last 512 context tokens as the image's (docs/families/wan-i2v.md)
    default_request=GenerationRequest(
        prompt="a cat walks through the misty forest", seed=0, steps=4, height=48, width=80, frames=5,
        negative_prompt="blurry, low quality", true_cfg_scale=5.0, max_sequence_length=512, image=I2V_IMAGE,
    ),
    calibration_corners=((1, 32, 32),),
))

register_case(Case(
    name="wan-a14b-i2v-tiny",
    family="wan_i2v",
    description="Wan 2.2 A14B I2V layout: two tiny random DiTs (36 input channels, no image path) switched at "
                "boundary ratio 0.9 (CFG 5.0, 3.0), conditioning latents from the causal 3D VAE encoder, UniPC",
    build_checkpoint=_tiny_wan_a14b_i2v_checkpoint,
    run_reference=_run_wan_i2v_reference,
    run_reference_forced=_run_wan_i2v_reference_forced,
    video=True,
    default_request=GenerationRequest(
        prompt="a cat walks through the misty forest", seed=0, steps=4, height=48, width=80, frames=5,
        negative_prompt="blurry, low quality", true_cfg_scale=5.0, true_cfg_scale_2=3.0, max_sequence_length=64,
        image=I2V_IMAGE,
    ),
    calibration_corners=((1, 32, 32),),
))
