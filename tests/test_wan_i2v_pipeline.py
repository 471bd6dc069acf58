"""The native Wan image-to-video and two-expert pipelines (issue 15, phase 1) against Diffusers, stage by stage.

Tiny random Diffusers pipelines (tests/tiny_wan_i2v.py) are saved and loaded by both sides: Wan 2.1 I2V (CLIP image
path), Wan 2.2 A14B T2V and I2V (two experts switched at `boundary_ratio`). Batch 2 (a list of two prompts: the
way the I2V reference must be called, see docs/families/wan-i2v.md), true CFG, a second CFG scale for the second
expert.

Diffusers' WanImageToVideoPipeline cleans prompts with ftfy unconditionally (a NameError without ftfy, which the
lock does not install), so its prompt embeddings are computed here with WanPipeline's encoder code (same tokenizer,
same text encoder, ftfy used only when installed) and passed in; the native side gets the same embeddings where
a check is meant to be bit for bit (the UMT5 encoder itself is not: tests/test_umt5_encoder.py). Everything after
text encoding (image encoding, noise, conditioning latents and mask, the expert switch, the UniPC loop with CFG) is
compared bit for bit on torch's SDPA kernel choice, in fp32 and bf16; the free native run (its own text
encoding, default CPU kernel) within fp32 rel_l2 1e-5 (measured 1.1e-6).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from numerics import rel_l2
from tiny_wan_i2v import build_i2v, build_two_experts

from native_models.attention import attention_backend
from native_models.errors import CheckpointError, RequestError, StageFieldError
from native_models.pipelines.wan import WanPipeline as NativeWanPipeline
from native_models.pipelines.wan import WanPipelineConfig
from native_models.pipelines.wan_i2v import WanI2VPipelineConfig
from native_models.pipelines.wan_i2v import WanImageToVideoPipeline as NativeI2VPipeline
from native_models.req import Req
from native_models.stages.condition_latents import ConditionLatentStage
from native_models.stages.denoising import DenoisingStage
from native_models.stages.image_encoding import ImageEncodingStage

PROMPTS = ["a cat walks on the grass", "a red car drives through the city at night"]
NEGATIVE = ["blurry", "low quality"]
HEIGHT, WIDTH, FRAMES = 32, 48, 5
STEPS = 3
TWO_EXPERT_STEPS = 6  # timesteps 999, 937, 857, 750, 600, 376: the switch falls inside the run
CFG, CFG_2 = 5.0, 2.5
FP32_REL_L2 = 1e-5


TwoExpertWanPipeline = NativeWanPipeline  # the same classes load one- and two-expert checkpoints
TwoExpertI2VPipeline = NativeI2VPipeline


def conditioning_image() -> PIL.Image.Image:
    """An RGB image of another size and aspect than the request (both sides resize it, with different filters)."""
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), "RGB")


@dataclass
class Recorder:
    records: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, stage: str, name: str, tensor: torch.Tensor, step: int | None = None) -> None:
        self.records[f"{stage}/{name}" + ("" if step is None else f"/{step}")] = tensor.detach().clone()


@dataclass
class ReferenceRun:
    latents: torch.Tensor  # final latents (B, 16, T, h, w) float32
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    calls: list[tuple[int, dict[str, Any]]]  # (expert, DiT kwargs) per call, cond then uncond each step


def run_reference(folder: Path, dtype: torch.dtype, steps: int, image: bool, boundary: bool) -> ReferenceRun:
    cls = WanImageToVideoPipeline if image else WanPipeline
    pipe = cls.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    calls: list[tuple[int, dict[str, Any]]] = []
    for expert, name in enumerate(("transformer", "transformer_2")):
        model = getattr(pipe, name, None)
        if model is not None:
            model.register_forward_pre_hook(
                lambda _m, _a, kwargs, expert=expert: calls.append((expert, dict(kwargs))), with_kwargs=True)
    device = torch.device("cpu")
    length = 512 if image and pipe.transformer.config.image_dim is not None else 64
    embeds = WanPipeline._get_t5_prompt_embeds(pipe, PROMPTS, max_sequence_length=length, device=device)
    negative = WanPipeline._get_t5_prompt_embeds(pipe, NEGATIVE, max_sequence_length=length, device=device)
    kwargs: dict[str, Any] = {"image": conditioning_image()} if image else {}
    if boundary:
        kwargs["guidance_scale_2"] = CFG_2
    with torch.no_grad():
        latents = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=HEIGHT, width=WIDTH,
                       num_frames=FRAMES, num_inference_steps=steps, guidance_scale=CFG,
                       generator=torch.Generator("cpu").manual_seed(0), output_type="latent", **kwargs).frames
    return ReferenceRun(latents, embeds, negative, calls)


def native_batch(dtype: torch.dtype, steps: int, image: bool, boundary: bool, length: int) -> Req:
    return Req(prompt=list(PROMPTS), negative_prompt=list(NEGATIVE), height=HEIGHT, width=WIDTH,
               num_inference_steps=steps, seed=0, true_cfg_scale=CFG, true_cfg_scale_2=CFG_2 if boundary else None,
               max_sequence_length=length, num_frames=FRAMES, dtype=dtype,
               image=conditioning_image() if image else None)


def run_native(pipeline: Any, batch: Req, reference: ReferenceRun | None, backend: str) -> tuple[Req, Recorder]:
    """All stages but decoding; with `reference`, text encoding is replaced by the reference's embeddings."""
    recorder = Recorder()
    batch.recorder = recorder
    pipeline.config.check_request(batch)
    stages = pipeline.stages[:-1]
    if reference is not None:
        assert stages[0][0] == "text_encoding"
        batch.prompt_embeds = [reference.prompt_embeds.to(batch.dtype)]
        batch.negative_prompt_embeds = [reference.negative_prompt_embeds.to(batch.dtype)]
        stages = stages[1:]
    with attention_backend(backend):
        for _, stage in stages:
            batch = stage(batch)
    return batch, recorder


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def i2v_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_i2v(tmp_path_factory.mktemp("wan21-i2v"))


@pytest.fixture(scope="module")
def t2v_experts_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_two_experts(tmp_path_factory.mktemp("wan22-t2v"), boundary_ratio=0.875)


@pytest.fixture(scope="module")
def i2v_experts_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_two_experts(tmp_path_factory.mktemp("wan22-i2v"), boundary_ratio=0.9, i2v=True)


# ----------------------------------------------------------------------------------------------- Wan 2.1 I2V


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_i2v_bit_identical_after_text_encoding(i2v_folder: Path, dtype: torch.dtype) -> None:
    reference = run_reference(i2v_folder, dtype, STEPS, image=True, boundary=False)
    pipeline = NativeI2VPipeline(i2v_folder, WanI2VPipelineConfig(), dtype=dtype)
    assert [name for name, _ in pipeline.stages] == [
        "text_encoding", "image_encoding", "latent_preparation", "condition_latent_preparation",
        "timestep_preparation", "denoising", "decoding"]
    batch, recorder = run_native(pipeline, native_batch(dtype, STEPS, True, False, 512), reference, "sdpa")
    first = reference.calls[0][1]
    # encode/image_embeds: the CLIP penultimate state of the image, repeated per prompt, in the DiT's dtype
    assert torch.equal(recorder.records["encode/image_embeds"], first["encoder_hidden_states_image"])
    assert recorder.records["encode/image_embeds"].shape == (2, 17, 24)
    # the DiT input: latents, 4 mask channels, 16 conditioning channels
    model_input = first["hidden_states"]
    assert torch.equal(recorder.records["latents/mask"].to(dtype), model_input[:, 16:20])
    assert torch.equal(recorder.records["latents/condition"].to(dtype), model_input[:, 20:])
    assert recorder.records["latents/mask"].flatten(2).amax(dim=2).eq(1).all()  # frame 0: all four channels 1
    assert recorder.records["latents/mask"][:, :, 1:].eq(0).all()
    assert all(call[1]["encoder_hidden_states_image"] is not None for call in reference.calls)
    assert torch.equal(batch.latents, reference.latents), f"rel L2 {rel_l2(batch.latents, reference.latents):.3e}"
    assert batch.experts == dict.fromkeys(range(STEPS), 0) and "denoise/expert/0" not in recorder.records


def test_i2v_free_run_fp32_close(i2v_folder: Path) -> None:
    """The whole native run (its own UMT5 encoding, default CPU attention kernel) against Diffusers."""
    reference = run_reference(i2v_folder, torch.float32, STEPS, image=True, boundary=False)
    pipeline = NativeI2VPipeline(i2v_folder, WanI2VPipelineConfig())
    batch, recorder = run_native(pipeline, native_batch(torch.float32, STEPS, True, False, 512), None, "auto")
    err = rel_l2(batch.latents, reference.latents)
    print(f"Wan 2.1 I2V free native run, fp32 final latents: rel L2 {err:.3e}")
    assert err <= FP32_REL_L2
    assert rel_l2(recorder.records["encode/prompt_embeds"], reference.prompt_embeds) <= FP32_REL_L2


@pytest.mark.parametrize("frames", [1, 5, 9, 13])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_condition_and_mask_equal_prepare_latents(i2v_folder: Path, frames: int, dtype: torch.dtype) -> None:
    """The conditioning stage against WanImageToVideoPipeline.prepare_latents called directly (its preprocessing,
    VAE encode in the VAE's dtype, normalisation, and mask channels in its order), for several frame counts."""
    pipe = WanImageToVideoPipeline.from_pretrained(i2v_folder, dtype=dtype, use_safetensors=True)
    image = conditioning_image()
    pixels = pipe.video_processor.preprocess(image, height=HEIGHT, width=WIDTH).to(torch.float32)
    generator = torch.Generator("cpu").manual_seed(0)
    with torch.no_grad(), attention_backend("sdpa"):
        noise, condition = pipe.prepare_latents(pixels, 2, 16, HEIGHT, WIDTH, frames, torch.float32,
                                                torch.device("cpu"), generator)
        pipeline = NativeI2VPipeline(i2v_folder, WanI2VPipelineConfig(), dtype=dtype)
        batch = native_batch(dtype, STEPS, True, False, 512)
        batch.num_frames = frames
        batch.recorder = recorder = Recorder()
        for name in ("latent_preparation", "condition_latent_preparation"):
            batch = dict(pipeline.stages)[name](batch)
    assert torch.equal(batch.latents, noise)
    assert torch.equal(batch.condition, condition) and condition.shape[1] == 20
    assert torch.equal(recorder.records["latents/mask"], condition[:, :4])
    assert condition.dtype == torch.float32


# ----------------------------------------------------------------------------------------- Wan 2.2 two experts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("image", [False, True], ids=["t2v", "i2v"])
def test_two_experts_bit_identical(t2v_experts_folder: Path, i2v_experts_folder: Path, image: bool,
                                   dtype: torch.dtype) -> None:
    folder = i2v_experts_folder if image else t2v_experts_folder
    reference = run_reference(folder, dtype, TWO_EXPERT_STEPS, image=image, boundary=True)
    pipeline = (TwoExpertI2VPipeline(folder, WanI2VPipelineConfig(), dtype=dtype) if image
                else TwoExpertWanPipeline(folder, WanPipelineConfig(), dtype=dtype))
    assert pipeline.has_module("transformer_2") and not pipeline.has_module("image_encoder")
    batch, recorder = run_native(pipeline, native_batch(dtype, TWO_EXPERT_STEPS, image, True, 64), reference, "sdpa")
    expected_experts = [expert for expert, _ in reference.calls[::2]]  # cond and uncond per step
    assert 0 in expected_experts and 1 in expected_experts
    assert [batch.experts[step] for step in range(TWO_EXPERT_STEPS)] == expected_experts
    assert [int(recorder.records[f"denoise/expert/{s}"]) for s in range(TWO_EXPERT_STEPS)] == expected_experts
    assert torch.equal(batch.latents, reference.latents), f"rel L2 {rel_l2(batch.latents, reference.latents):.3e}"


def test_second_scale_and_boundary_matter(t2v_experts_folder: Path) -> None:
    """The second expert's CFG scale changes the result (it is used), and so does running the switch one step
    early (a wrong boundary is visible, at the steps it moves)."""
    pipeline = TwoExpertWanPipeline(t2v_experts_folder, WanPipelineConfig())
    base, _ = run_native(pipeline, native_batch(torch.float32, TWO_EXPERT_STEPS, False, True, 64), None, "auto")
    same_scale = native_batch(torch.float32, TWO_EXPERT_STEPS, False, True, 64)
    same_scale.true_cfg_scale_2 = None
    other, _ = run_native(pipeline, same_scale, None, "auto")
    assert rel_l2(other.latents, base.latents) > 1e-3
    config = pipeline.config
    assert isinstance(config, WanPipelineConfig) and config.boundary_timestep == 875.0
    config.boundary_ratio = 0.95  # the high-noise expert hands over one step early (937 < 950)
    early, _ = run_native(pipeline, native_batch(torch.float32, TWO_EXPERT_STEPS, False, True, 64), None, "auto")
    assert [early.experts[s] for s in range(3)] == [0, 1, 1] and [base.experts[s] for s in range(3)] == [0, 0, 1]
    assert rel_l2(early.latents, base.latents) > 1e-3


def test_expert_choice_at_the_boundary() -> None:
    """t >= boundary_ratio * num_train_timesteps: the high-noise expert at the boundary itself."""
    config = WanPipelineConfig(boundary_ratio=0.875, num_train_timesteps=1000)
    batch = native_batch(torch.float32, 1, False, True, 64)
    choices = {int(t): config.select_expert(torch.tensor(t), batch) for t in (999, 876, 875, 874, 0)}
    assert choices == {999: 0, 876: 0, 875: 0, 874: 1, 0: 1}
    assert (config.expert_cfg_scale(0, batch), config.expert_cfg_scale(1, batch)) == (CFG, CFG_2)
    batch.true_cfg_scale_2 = None
    assert config.expert_cfg_scale(1, batch) == CFG  # guidance_scale_2 defaults to guidance_scale
    assert WanPipelineConfig().select_expert(torch.tensor(0), batch) == 0  # one expert: always the first


# ------------------------------------------------------------------------------------- refusals and contracts


def test_two_expert_checkpoint_needs_its_second_expert(t2v_experts_folder: Path, tmp_path: Path) -> None:
    import json
    import shutil

    copy = tmp_path / "no-second-expert"
    shutil.copytree(t2v_experts_folder, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["transformer_2"] = [None, None]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"boundary_ratio=0.875 needs a transformer_2 component"):
        NativeWanPipeline.configure(WanPipelineConfig(), copy)


def test_i2v_requests_are_checked(i2v_folder: Path) -> None:
    config = WanI2VPipelineConfig()
    NativeI2VPipeline.configure(config, i2v_folder)
    batch = native_batch(torch.float32, STEPS, True, False, 512)
    config.check_request(batch)
    for change, message in (
        ({"image": None}, "needs a conditioning image"),
        ({"image": conditioning_image().convert("RGBA")}, "must be an RGB PIL image, got RGBA"),
        ({"max_sequence_length": 64}, "max_sequence_length 64: Wan 2.1 I2V needs 512"),
        ({"true_cfg_scale_2": 2.0}, r"true_cfg_scale_2=2.0 needs a two-expert checkpoint"),
        ({"num_frames": 6}, r"frames = 4k \+ 1"),
    ):
        bad = native_batch(torch.float32, STEPS, True, False, 512)
        for key, value in change.items():
            setattr(bad, key, value)
        with pytest.raises(RequestError, match=message):
            config.check_request(bad)


def test_i2v_checkpoint_is_checked(i2v_folder: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "i2v"
    shutil.copytree(i2v_folder, copy)
    config_file = copy / "transformer" / "config.json"
    config_file.write_text(config_file.read_text().replace('"in_channels": 36', '"in_channels": 16'))
    with pytest.raises(CheckpointError, match=r"in_channels 16 should be 36 \(latents, 4 mask channels"):
        NativeI2VPipeline.configure(WanI2VPipelineConfig(), copy)
    with pytest.raises(TypeError, match="needs a WanI2VPipelineConfig"):
        NativeI2VPipeline.configure(WanPipelineConfig(), i2v_folder)


def test_stage_contracts_name_the_field(i2v_folder: Path) -> None:
    pipeline = NativeI2VPipeline(i2v_folder, WanI2VPipelineConfig())
    stages = dict(pipeline.stages)
    assert isinstance(stages["image_encoding"], ImageEncodingStage)
    assert isinstance(stages["condition_latent_preparation"], ConditionLatentStage)
    denoising = stages["denoising"]
    assert isinstance(denoising, DenoisingStage) and {"condition", "image_embeds"} <= set(denoising.reads)
    assert "condition" not in DenoisingStage.reads  # the class contract is unchanged for other families
    batch = native_batch(torch.float32, STEPS, True, False, 512)
    batch.image = conditioning_image().convert("L")
    with pytest.raises(StageFieldError, match="field 'image' .* PIL image in mode RGB, got PIL.Image in mode L"):
        stages["image_encoding"](batch)
    batch = native_batch(torch.float32, STEPS, True, False, 512)
    with pytest.raises(StageFieldError, match="field 'raw_latent_shape'"):
        stages["condition_latent_preparation"](batch)
    for name in ("text_encoding", "image_encoding", "latent_preparation", "timestep_preparation"):
        batch = stages[name](batch)
    with pytest.raises(StageFieldError, match="stage DenoisingStage: field 'condition'"):
        denoising(batch)
    with pytest.raises(ValueError, match="sample_mode 'mean'"):
        ConditionLatentStage(pipeline.get_module("vae"), pipeline.config, sample_mode="mean")
