"""Reference side for Wan 2.1: the UMT5-style tokenizer, the tiny offline checkpoint and the hooked Diffusers runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, WanPipeline, WanTransformer3DModel
from reference_checks import (
    assert_build_is_deterministic,
    assert_cached_build_once,
    assert_no_all_zero_weights,
    assert_records_finite_with_signal,
    assert_reference_records,
    model_dtype,
    record,
)
from transformers import AutoTokenizer, T5Tokenizer, UMT5Config, UMT5EncoderModel

from harness.run.request import GenerationRequest
from harness.trace.memory import Trace
from native_models.components import load_native_component
from native_models.models.t5_encoder import UMT5EncoderModel as NativeUMT5
from native_models.schedulers.unipc_flow import UniPCFlowScheduler
from references.common.tokenizers import build_t5_tokenizer, build_umt5_tokenizer
from references.wan.runner import check_wan_request, run_wan_reference, wan_guidance_scale
from references.wan.tiny import WAN_2_1_SCHEDULER, TinyWanConfig, build_tiny_wan, checkpoint_dir, tiny_wan_checkpoint

PROMPTS = ["a cat walks through the misty forest", "Ünïcode 中 猫 &amp;  x", "", "a " * 100, "<extra_id_1> video"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("wan") / "seed0", seed=0)


# ---- tokenizer ----


def test_umt5_tokenizer_conventions_and_round_trip(tmp_path: Path) -> None:
    tok = build_umt5_tokenizer()
    assert isinstance(tok, T5Tokenizer)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, None)
    ids = tok("a cat walks through the misty forest").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["▁a", "▁cat", "▁walks", "▁through", "▁the", "▁misty", "▁forest", "</s>"]
    assert tok("").input_ids == [tok.eos_token_id]  # the empty negative prompt is one eos token
    sentinels = tok.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(3)])
    assert sorted(sentinels) == list(range(len(tok) - 3, len(tok)))  # after the pieces, as in UMT5
    # Not the FLUX T5 tokenizer: another vocabulary, so the same prompt gives other ids.
    t5 = build_t5_tokenizer()
    assert len(tok) != len(t5) and tok("a photo of a cat").input_ids != t5("a photo of a cat").input_ids
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded) is type(tok) and len(reloaded) == len(tok)
    padded = dict(padding="max_length", max_length=24, truncation=True, return_attention_mask=True, return_tensors="pt")
    expected, got = tok(PROMPTS, **padded), reloaded(PROMPTS, **padded)
    assert torch.equal(got.input_ids, expected.input_ids) and torch.equal(got.attention_mask, expected.attention_mask)
    assert (expected.input_ids[expected.attention_mask == 0] == 0).all()  # padding is id 0, masked out


# ---- checkpoint ----


def test_build_is_deterministic(checkpoint: Path, tmp_path: Path) -> None:
    weight_files = {
        "text_encoder/model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    assert_build_is_deterministic(build_tiny_wan, checkpoint, tmp_path, weight_files)


def test_reloads_as_wan_pipeline(checkpoint: Path) -> None:
    pipe = DiffusionPipeline.from_pretrained(checkpoint, use_safetensors=True)
    assert isinstance(pipe, WanPipeline)
    config = TinyWanConfig()
    assert (pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial) == (4, 8)
    assert (config.vae_scale_factor_temporal, config.vae_scale_factor_spatial) == (4, 8)
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.transformer.config.text_dim == pipe.text_encoder.config.d_model
    assert pipe.transformer.config.in_channels == pipe.vae.config.z_dim == 16
    assert list(pipe.vae.config.latents_std) == list(config.vae_latents_std)
    assert pipe.scheduler.config.flow_shift == 3.0 and pipe.scheduler.config.use_flow_sigmas
    assert_no_all_zero_weights((pipe.text_encoder, pipe.transformer, pipe.vae))


def test_native_components_load_from_the_checkpoint(checkpoint: Path) -> None:
    """The names model_index.json uses map to native classes (components.py) that load strictly."""
    index = json.loads((checkpoint / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    cpu = torch.device("cpu")
    encoder = load_native_component("text_encoder", "UMT5EncoderModel", checkpoint, torch.float32, cpu)
    assert isinstance(encoder, NativeUMT5)
    scheduler = load_native_component("scheduler", "UniPCMultistepScheduler", checkpoint, torch.float32, cpu)
    assert isinstance(scheduler, UniPCFlowScheduler) and scheduler.config.flow_shift == 3.0
    tokenizer = load_native_component("tokenizer", index["tokenizer"][1], checkpoint, torch.float32, cpu)
    call = {"padding": "max_length", "max_length": 32, "truncation": True, "return_tensors": "pt"}
    assert torch.equal(tokenizer(PROMPTS[:1], **call).input_ids, build_umt5_tokenizer()(PROMPTS[:1], **call).input_ids)


def test_checkpoint_cache_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFPARITY_CACHE", str(tmp_path))
    first = assert_cached_build_once(tiny_wan_checkpoint, tmp_path, "wan-tiny-v3-seed0")
    wide = TinyWanConfig.wide()
    assert checkpoint_dir(seed=0, config=wide) == first.parent / f"wan-tiny-v3-seed0-{wide.digest()}"


def test_wide_config_has_the_real_widths() -> None:
    """Built on the meta device (no memory): Wan 2.1 1.3B's DiT width over 8 layers, UMT5-XXL's encoder width."""
    wide = TinyWanConfig.wide()
    with torch.device("meta"):
        dit = WanTransformer3DModel(
            patch_size=wide.dit_patch_size, num_attention_heads=wide.dit_heads, attention_head_dim=wide.dit_head_dim,
            in_channels=wide.vae_z_dim, out_channels=wide.vae_z_dim, text_dim=wide.umt5_d_model,
            freq_dim=wide.dit_freq_dim, ffn_dim=wide.dit_ffn_dim, num_layers=wide.dit_layers,
        )  # fmt: skip
        encoder = UMT5EncoderModel(
            UMT5Config(vocab_size=len(build_umt5_tokenizer()), d_model=wide.umt5_d_model, d_kv=wide.umt5_d_kv,
                       d_ff=wide.umt5_d_ff, num_layers=wide.umt5_layers, num_heads=wide.umt5_heads)
        )  # fmt: skip
    assert len(dit.blocks) == 8
    assert dit.blocks[0].attn1.to_q.weight.shape == (1536, 1536)
    assert dit.blocks[0].ffn.net[0].proj.weight.shape == (8960, 1536)
    assert dit.condition_embedder.text_embedder.linear_1.weight.shape == (1536, 4096)
    assert encoder.encoder.block[0].layer[0].SelfAttention.q.weight.shape == (4096, 4096)


def test_config_rejects_mismatched_vae_levels() -> None:
    with pytest.raises(ValueError, match="temperal_downsample"):
        TinyWanConfig(vae_dim_mult=(1, 2, 2))


# ---- runner ----

CASES = {
    # 5 frames (2 latent frames) at 48x64: latents (1, 16, 2, 6, 8); true CFG.
    "5f-48x64-cfg": GenerationRequest(
        prompt="a cat walks through the misty forest", seed=1, steps=3, height=48, width=64, frames=5,
        negative_prompt="blurry, low quality", true_cfg_scale=5.0, max_sequence_length=32,
    ),
    # One frame, no CFG: one transformer pass per step.
    "1f-32x48": GenerationRequest(prompt="a red car", seed=2, steps=2, height=32, width=48, frames=1,
                                  max_sequence_length=16),
    "9f-64x32-cfg-bf16": GenerationRequest(
        prompt="a bird flies", seed=3, steps=2, height=64, width=32, frames=9, negative_prompt="",
        true_cfg_scale=4.0, max_sequence_length=16, dtype="bf16",
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(CASES))
def run(request: pytest.FixtureRequest, checkpoint: Path) -> tuple[GenerationRequest, Trace]:
    req = CASES[request.param]
    trace = Trace()
    run_wan_reference(checkpoint, req, trace)
    return req, trace


def _expected_shapes(req: GenerationRequest) -> dict[str, tuple[int, ...]]:
    latent = TinyWanConfig().latent_shape(req.frames, req.height, req.width)
    shapes = {
        "encode/prompt_embeds": (1, req.max_sequence_length, 32),
        "timesteps/sigmas": (req.steps + 1,),
        "timesteps/timesteps": (req.steps,),
        "latents/initial": latent,
        "decode/latents": latent,
        "decode/image": (1, 3, req.frames, req.height, req.width),
    }
    fields = ["transformer_output", "noise_pred", "latents"]
    if req.do_true_cfg:
        shapes["encode/negative_prompt_embeds"] = (1, req.max_sequence_length, 32)
        fields.append("transformer_output_uncond")
    for step in range(req.steps):
        shapes.update({f"denoise/{field}/{step}": latent for field in fields})
    return shapes


def test_records_every_key_with_canonical_shapes(run: tuple[GenerationRequest, Trace]) -> None:
    req, trace = run
    assert_reference_records(trace, req, _expected_shapes(req), "WanPipeline")
    assert TinyWanConfig().latent_shape(5, 48, 64) == (1, 16, 2, 6, 8)
    assert trace.meta["wan_guidance_scale"] == (req.true_cfg_scale if req.do_true_cfg else 1.0)
    assert trace.meta["prompt_clean_ftfy"] in (True, False)


def test_record_dtypes(run: tuple[GenerationRequest, Trace]) -> None:
    """WanPipeline keeps float32 noise and latents whatever the model dtype; model outputs are in the model's."""
    req, trace = run
    dtype = model_dtype(req)
    assert record(trace, "timesteps/sigmas").dtype == torch.float32
    assert record(trace, "timesteps/timesteps").dtype == torch.int64
    assert record(trace, "latents/initial").dtype == torch.float32
    for step in range(req.steps):
        assert record(trace, f"denoise/latents/{step}").dtype == torch.float32
        assert record(trace, f"denoise/transformer_output/{step}").dtype == dtype
        assert record(trace, f"denoise/noise_pred/{step}").dtype == dtype
    for name in ("encode/prompt_embeds", "decode/latents", "decode/image"):
        assert record(trace, name).dtype == dtype, name


def test_records_are_finite_and_carry_signal(run: tuple[GenerationRequest, Trace]) -> None:
    _, trace = run
    assert_records_finite_with_signal(trace)
    image = record(trace, "decode/image").double()
    assert image.abs().max() <= 1 and (image.abs() == 1).double().mean() < 0.05  # clamped, but barely saturated
    frames = image[0].transpose(0, 1).flatten(1)  # (frames, 3 * H * W): no frame is constant
    assert (frames.std(dim=1) > 1e-2).all()


def test_prompt_embeds_are_zero_past_each_prompt(run: tuple[GenerationRequest, Trace], checkpoint: Path) -> None:
    """WanPipeline encodes with the tokenizer's mask, keeps each prompt's first seq_len states, zero-pads the rest."""
    req, trace = run
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "tokenizer")
    encoder = UMT5EncoderModel.from_pretrained(checkpoint / "text_encoder", dtype=model_dtype(req)).eval()
    prompts = {"prompt_embeds": req.prompt}
    if req.do_true_cfg:
        prompts["negative_prompt_embeds"] = req.negative_prompt
    for field, prompt in prompts.items():
        inputs = tokenizer(prompt, padding="max_length", max_length=req.max_sequence_length, truncation=True,
                           return_attention_mask=True, return_tensors="pt")  # fmt: skip
        length = int(inputs.attention_mask.sum())
        with torch.no_grad():
            states = encoder(inputs.input_ids, inputs.attention_mask).last_hidden_state
        embeds = record(trace, f"encode/{field}")
        assert torch.equal(embeds[:, :length], states[:, :length]), field
        assert not embeds[:, length:].any(), field
        assert embeds[:, :length].abs().sum(-1).gt(0).all(), field


def test_initial_noise_follows_documented_rng_recipe(run: tuple[GenerationRequest, Trace]) -> None:
    req, trace = run
    generator = torch.Generator("cpu").manual_seed(req.seed)
    shape = TinyWanConfig().latent_shape(req.frames, req.height, req.width)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    assert torch.equal(record(trace, "latents/initial"), noise)


def test_schedule_is_wan_unipc(run: tuple[GenerationRequest, Trace]) -> None:
    req, trace = run
    native = UniPCFlowScheduler.from_config(WAN_2_1_SCHEDULER)
    native.set_timesteps(req.steps)
    assert torch.equal(record(trace, "timesteps/sigmas"), native.sigmas)
    assert torch.equal(record(trace, "timesteps/timesteps"), native.timesteps)
    assert record(trace, "timesteps/timesteps")[0] == 999 and record(trace, "timesteps/sigmas")[-1] == 0


def test_denoise_steps_are_consistent(run: tuple[GenerationRequest, Trace]) -> None:
    """noise_pred is uncond + scale * (cond - uncond) in the model dtype (or cond without CFG), and every recorded
    latent is the UniPC step of the recorded noise_pred (replayed with the native scheduler, bit for bit)."""
    req, trace = run
    scheduler = UniPCFlowScheduler.from_config(WAN_2_1_SCHEDULER)
    scheduler.set_timesteps(req.steps)
    latents = record(trace, "latents/initial")
    for step in range(req.steps):
        cond = record(trace, f"denoise/transformer_output/{step}")
        noise_pred = record(trace, f"denoise/noise_pred/{step}")
        if req.do_true_cfg:
            uncond = record(trace, f"denoise/transformer_output_uncond/{step}")
            assert not torch.equal(cond, uncond)
            assert torch.equal(noise_pred, uncond + wan_guidance_scale(req) * (cond - uncond))
        else:
            assert torch.equal(noise_pred, cond)
        latents = scheduler.step(noise_pred, step, latents)
        assert torch.equal(record(trace, f"denoise/latents/{step}"), latents), f"step {step}"


def test_decode_latents_are_denormalised(run: tuple[GenerationRequest, Trace]) -> None:
    """decode/latents = final latents in the VAE dtype, divided by (1 / std) and shifted by mean, as WanPipeline
    computes it (the reciprocal taken in the VAE dtype)."""
    req, trace = run
    dtype = model_dtype(req)
    config = TinyWanConfig()
    final = record(trace, f"denoise/latents/{req.steps - 1}").to(dtype)
    mean = torch.tensor(config.vae_latents_mean).view(1, 16, 1, 1, 1).to(dtype)
    inv_std = 1.0 / torch.tensor(config.vae_latents_std).view(1, 16, 1, 1, 1).to(dtype)
    assert torch.equal(record(trace, "decode/latents"), final / inv_std + mean)


def test_guidance_mapping_and_request_checks() -> None:
    assert wan_guidance_scale(GenerationRequest(prompt="x", negative_prompt="", true_cfg_scale=5.0)) == 5.0
    assert wan_guidance_scale(GenerationRequest(prompt="x", true_cfg_scale=5.0)) == 1.0  # no negative prompt
    assert wan_guidance_scale(GenerationRequest(prompt="x", negative_prompt="y")) == 1.0
    check_wan_request(GenerationRequest(prompt="x", frames=81, height=480, width=832))
    with pytest.raises(ValueError, match="frames = 4k \\+ 1"):
        check_wan_request(GenerationRequest(prompt="x", frames=4))
    with pytest.raises(ValueError, match="divisible by 16"):
        check_wan_request(GenerationRequest(prompt="x", frames=5, height=40))


def test_rejects_other_pipeline_classes(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="needs a WanPipeline"):
        run_wan_reference(tmp_path, GenerationRequest(prompt="x", frames=5), Trace())
    with pytest.raises(FileNotFoundError):
        run_wan_reference(tmp_path / "missing", GenerationRequest(prompt="x", frames=5), Trace())
