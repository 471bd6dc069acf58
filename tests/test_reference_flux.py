"""Reference side for FLUX.1: tiny offline checkpoint, in-memory tokenizers, and the hooked Diffusers runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, FluxPipeline
from reference_checks import (
    assert_build_is_deterministic,
    assert_cached_build_once,
    assert_no_all_zero_weights,
    assert_records_finite_with_signal,
    assert_reference_records,
    model_dtype,
    record,
)
from transformers import AutoTokenizer, CLIPTokenizer, T5Tokenizer

from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from references.common.reference_pipeline import make_generator
from references.common.tokenizers import build_clip_tokenizer, build_t5_tokenizer
from references.flux.runner import run_flux_reference, unpack_flux_latents
from references.flux.tiny import TinyFluxConfig, build_tiny_flux, checkpoint_dir, tiny_flux_checkpoint

PROMPTS = ["a photo of a cat", "Handwritten digit SEVEN, 42!", "", "a " * 100]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux(tmp_path_factory.mktemp("flux") / "seed0", seed=0)


# ---- tokenizers ----


@pytest.mark.parametrize("build", [build_clip_tokenizer, build_t5_tokenizer])
def test_tokenizers_round_trip(build, tmp_path: Path) -> None:
    tokenizer = build()
    tokenizer.save_pretrained(tmp_path)
    for loader in (AutoTokenizer, type(tokenizer)):
        reloaded = loader.from_pretrained(tmp_path)
        assert type(reloaded) is type(tokenizer)
        assert len(reloaded) == len(tokenizer)
        assert reloaded.model_max_length == tokenizer.model_max_length
        for prompt in PROMPTS:
            assert reloaded(prompt).input_ids == tokenizer(prompt).input_ids
        padded = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        assert torch.equal(reloaded(PROMPTS, **padded).input_ids, tokenizer(PROMPTS, **padded).input_ids)


def test_clip_tokenizer_conventions() -> None:
    tok = build_clip_tokenizer()
    assert isinstance(tok, CLIPTokenizer)
    ids = tok("a cat").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.pad_token_id == tok.eos_token_id  # as in FLUX.1's CLIP tokenizer
    assert tok.model_max_length == 77
    assert tok.unk_token_id not in tok("Ünïcode ✓ text").input_ids[1:-1]  # byte-level: nothing is unknown


def test_t5_tokenizer_conventions() -> None:
    tok = build_t5_tokenizer()
    assert isinstance(tok, T5Tokenizer)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens(tok("a photo of a cat").input_ids) == ["▁a", "▁photo", "▁of", "▁a", "▁cat", "</s>"]
    assert tok.unk_token_id not in tok("handwritten digit 7, zero; xyz!").input_ids
    assert not any("extra_id" in t for t in tok.get_vocab())


# ---- checkpoint ----


def test_build_is_deterministic(checkpoint: Path, tmp_path: Path) -> None:
    weight_files = {
        "text_encoder/model.safetensors",
        "text_encoder_2/model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    assert_build_is_deterministic(build_tiny_flux, checkpoint, tmp_path, weight_files)


def test_reloads_as_diffusion_pipeline(checkpoint: Path) -> None:
    pipe = DiffusionPipeline.from_pretrained(checkpoint, use_safetensors=True)
    assert isinstance(pipe, FluxPipeline)
    config = TinyFluxConfig()
    assert pipe.vae_scale_factor == config.vae_scale_factor == 8
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.text_encoder_2.config.vocab_size == len(pipe.tokenizer_2)
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert pipe.transformer.config.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    assert pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.shift == 3.0
    assert_no_all_zero_weights((pipe.text_encoder, pipe.text_encoder_2, pipe.transformer, pipe.vae))


def test_checkpoint_cache_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFPARITY_CACHE", str(tmp_path))
    first = assert_cached_build_once(tiny_flux_checkpoint, tmp_path, "flux-tiny-v3-seed0")
    wide = TinyFluxConfig.wide()
    assert checkpoint_dir(seed=0, config=wide) == first.parent / f"flux-tiny-v3-seed0-{wide.digest()}"
    assert checkpoint_dir(seed=0, config=TinyFluxConfig()) == first


def test_config_rejects_mismatched_rope_axes() -> None:
    with pytest.raises(ValueError, match="must sum to"):
        TinyFluxConfig(dit_head_dim=32)


# ---- runner ----

CASES = {
    "square": GenerationRequest(prompt="a photo of a cat", seed=1, steps=3, height=64, width=64),
    "wide-cfg": GenerationRequest(
        prompt="handwritten digit seven",
        seed=2,
        steps=2,
        height=48,
        width=80,
        negative_prompt="blurry",
        true_cfg_scale=2.5,
        max_sequence_length=32,
    ),
    "tall-cfg-bf16": GenerationRequest(
        prompt="a red house",
        seed=3,
        steps=4,
        height=96,
        width=64,
        negative_prompt="",
        true_cfg_scale=3.0,
        max_sequence_length=16,
        dtype="bf16",
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def run(request: pytest.FixtureRequest, checkpoint: Path) -> tuple[GenerationRequest, Trace]:
    req = CASES[request.param]
    trace = Trace()
    run_flux_reference(checkpoint, req, trace)
    return req, trace


def _expected_shapes(req: GenerationRequest) -> dict[str, tuple[int, ...]]:
    h, w = req.height // 8, req.width // 8
    spatial = (1, 16, h, w)
    shapes = {
        "encode/pooled_prompt_embeds": (1, 32),
        "encode/prompt_embeds": (1, req.max_sequence_length, 32),
        "timesteps/sigmas": (req.steps + 1,),
        "timesteps/timesteps": (req.steps,),
        "latents/initial": spatial,
        "decode/latents": spatial,
        "decode/image": (1, 3, req.height, req.width),
    }
    fields = ["transformer_output", "noise_pred", "latents"]
    if req.do_true_cfg:
        shapes["encode/negative_pooled_prompt_embeds"] = (1, 32)
        shapes["encode/negative_prompt_embeds"] = (1, req.max_sequence_length, 32)
        fields.append("transformer_output_uncond")
    for step in range(req.steps):
        shapes.update({f"denoise/{field}/{step}": spatial for field in fields})
    return shapes


def test_records_every_key_with_canonical_shapes(run: tuple[GenerationRequest, Trace]) -> None:
    req, trace = run
    assert_reference_records(trace, req, _expected_shapes(req), "FluxPipeline")
    assert {"diffusers_version", "torch_version"} <= trace.meta.keys()


def test_records_are_finite_and_carry_signal(run: tuple[GenerationRequest, Trace]) -> None:
    req, trace = run
    assert_records_finite_with_signal(trace)
    assert record(trace, "latents/initial").dtype == model_dtype(req)
    assert record(trace, "decode/image").dtype == model_dtype(req)


def test_schedule(run: tuple[GenerationRequest, Trace]) -> None:
    req, trace = run
    sigmas, timesteps = record(trace, "timesteps/sigmas"), record(trace, "timesteps/timesteps")
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and (sigmas.diff() < 0).all()
    torch.testing.assert_close(timesteps, sigmas[:-1] * 1000)


def test_initial_noise_follows_documented_rng_recipe(run: tuple[GenerationRequest, Trace]) -> None:
    req, trace = run
    dtype = model_dtype(req)
    generator = torch.Generator("cpu").manual_seed(req.seed)
    noise = torch.randn((1, 16, req.height // 8, req.width // 8), generator=generator, dtype=dtype)
    assert torch.equal(record(trace, "latents/initial"), noise)
    assert make_generator(req).device.type == "cpu"


def test_denoise_steps_are_consistent(run: tuple[GenerationRequest, Trace]) -> None:
    """noise_pred is the (guided) transformer output; each Euler step is x + (sigma_next - sigma) * noise_pred."""
    req, trace = run
    sigmas = record(trace, "timesteps/sigmas")
    latents = record(trace, "latents/initial")
    for step in range(req.steps):
        cond = record(trace, f"denoise/transformer_output/{step}")
        noise_pred = record(trace, f"denoise/noise_pred/{step}")
        if req.do_true_cfg:
            uncond = record(trace, f"denoise/transformer_output_uncond/{step}")
            assert not torch.equal(cond, uncond)
            expected = uncond + req.true_cfg_scale * (cond - uncond)
            torch.testing.assert_close(noise_pred, expected, rtol=0, atol=0)
        else:
            assert torch.equal(noise_pred, cond)
        # As FlowMatchEulerDiscreteScheduler.step: the 0-d fp32 dt times the model output stays in the model's
        # dtype (bf16 rounding included), the sum is fp32, the result is cast back.
        stepped = latents.float() + (sigmas[step + 1] - sigmas[step]) * noise_pred
        latents = record(trace, f"denoise/latents/{step}")
        torch.testing.assert_close(latents, stepped.to(latents.dtype), rtol=0, atol=0)


def test_final_latents_match_latent_output(run: tuple[GenerationRequest, Trace], checkpoint: Path) -> None:
    req, trace = run
    dtype = model_dtype(req)
    pipe = FluxPipeline.from_pretrained(checkpoint, dtype=dtype, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    packed = pipe(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        true_cfg_scale=req.true_cfg_scale,
        guidance_scale=req.guidance_scale,
        height=req.height,
        width=req.width,
        num_inference_steps=req.steps,
        max_sequence_length=req.max_sequence_length,
        generator=make_generator(req),
        output_type="latent",
        return_dict=False,
    )[0]
    final = unpack_flux_latents(packed, req.height, req.width, pipe.vae_scale_factor)
    assert torch.equal(record(trace, f"denoise/latents/{req.steps - 1}"), final)
    vae = pipe.vae.config
    assert torch.equal(record(trace, "decode/latents"), final / vae.scaling_factor + vae.shift_factor)


def test_unpack_inverts_diffusers_pack() -> None:
    spatial = torch.randn(2, 16, 6, 10)
    packed = FluxPipeline._pack_latents(spatial, 2, 16, 6, 10)
    assert torch.equal(unpack_flux_latents(packed, 48, 80, 8), spatial)
    with pytest.raises(ValueError, match="do not match"):
        unpack_flux_latents(packed, 64, 64, 8)


def test_rejects_other_pipeline_classes(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(ValueError, match="needs a FluxPipeline"):
        run_flux_reference(tmp_path, GenerationRequest(prompt="x"), Trace())
    with pytest.raises(FileNotFoundError):
        run_flux_reference(tmp_path / "missing", GenerationRequest(prompt="x"), Trace())
