"""FLUX.1-dev and FLUX.1-schnell folders from their published component configs (real widths, few layers).

Used by the real-config parity test (tests/test_published_configs.py) and scripts/measure_load.py, and by
scripts/published_configs.py for larger builds. Random weights: the build record says so (`random_weights`).
"""

from __future__ import annotations

from pathlib import Path

from references.common.published_build import DefaultDtype, fill_random, save_published, unallocated
from references.flux.components import FLUX_DEV_SCHEDULER

# black-forest-labs/FLUX.1-dev: transformer/config.json (layers set by the builder)
FLUX_DEV_TRANSFORMER = {"patch_size": 1, "in_channels": 64, "attention_head_dim": 128, "num_attention_heads": 24,
                        "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
                        "axes_dims_rope": (16, 56, 56)}
# text_encoder/config.json (openai/clip-vit-large-patch14's text tower, legacy eos id 2; layers set by the builder)
FLUX_DEV_CLIP = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768,
                 "num_attention_heads": 12, "max_position_embeddings": 77,
                 "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2,
                 "pad_token_id": 1}
CLIP_L_LAYERS = 12
# text_encoder_2/config.json (google/t5-v1_1-xxl encoder; layers set by the builder)
FLUX_DEV_T5 = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64,
               "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
               "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
               "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
# vae/config.json (the same in both repositories)
FLUX_DEV_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
                "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512),
                "layers_per_block": 2, "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 32,
                "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": False,
                "use_post_quant_conv": False, "mid_block_add_attention": True}
# black-forest-labs/FLUX.1-schnell: no guidance embedding (timestep-distilled), a fixed-shift scheduler
FLUX_SCHNELL_TRANSFORMER = {**FLUX_DEV_TRANSFORMER, "guidance_embeds": False}
FLUX_SCHNELL_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False,
                          "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}

VARIANTS = {"flux-dev": (FLUX_DEV_TRANSFORMER, FLUX_DEV_SCHEDULER),
            "flux-schnell": (FLUX_SCHNELL_TRANSFORMER, FLUX_SCHNELL_SCHEDULER)}


def build_published_flux(out: Path, variant: str = "flux-dev", double: int = 1, single: int = 1, t5_layers: int = 2,
                         clip_layers: int = CLIP_L_LAYERS, shard: str = "400MB", seed: int = 0) -> Path:
    """A FluxPipeline folder of `variant` ("flux-dev" or "flux-schnell") saved by Diffusers in bf16, sharded."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from references.common.tokenizers import CLIP_MERGES, build_clip_tokenizer, build_t5_tokenizer

    if variant not in VARIANTS:
        raise ValueError(f"unknown FLUX variant {variant!r}; known: {', '.join(VARIANTS)}")
    transformer, scheduler = VARIANTS[variant]
    with DefaultDtype(torch.bfloat16), unallocated():
        vae = AutoencoderKL(**FLUX_DEV_VAE)
        clip = CLIPTextModel(CLIPTextConfig(**FLUX_DEV_CLIP, num_hidden_layers=clip_layers))
        t5 = T5EncoderModel(T5Config(**FLUX_DEV_T5, num_layers=t5_layers))
        dit = FluxTransformer2DModel(**transformer, num_layers=double, num_single_layers=single)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler),
        vae=fill_random(vae, seed),
        text_encoder=fill_random(clip, seed + 1),
        tokenizer=build_clip_tokenizer(CLIP_MERGES),
        text_encoder_2=fill_random(t5, seed + 2),
        tokenizer_2=build_t5_tokenizer(),
        transformer=fill_random(dit, seed + 3),
    )
    sizes = {"double": double, "single": single, "t5_layers": t5_layers, "clip_layers": clip_layers, "shard": shard}
    return save_published(pipe, out, variant, sizes, shard)
