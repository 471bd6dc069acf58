"""Wan 2.1 T2V 1.3B folders from its published component configs (real widths, few layers).

Used by the real-config parity test (tests/test_published_configs.py), scripts/measure_load.py and
scripts/published_configs.py. Random weights: the build record says so (`random_weights`).
"""

from __future__ import annotations

from pathlib import Path

from references.common.published_build import DefaultDtype, fill_random, save_published, unallocated
from references.wan.tiny import WAN_2_1_SCHEDULER

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers: transformer/config.json (layers set by the builder)
WAN_13B_TRANSFORMER = {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128,
                       "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960,
                       "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
                       "rope_max_seq_len": 1024}
# text_encoder/config.json (google/umt5-xxl encoder; layers set by the builder)
WAN_UMT5 = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
            "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def build_published_wan(out: Path, dit_layers: int = 2, umt5_layers: int = 2, shard: str = "400MB",
                        seed: int = 0) -> Path:
    """A WanPipeline folder with Wan 2.1 T2V 1.3B's widths, saved by Diffusers in bf16, sharded."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from references.common.tokenizers import build_umt5_tokenizer

    with DefaultDtype(torch.bfloat16), unallocated():
        text_encoder = UMT5EncoderModel(UMT5Config(**WAN_UMT5, num_layers=umt5_layers))
        transformer = WanTransformer3DModel(**WAN_13B_TRANSFORMER, num_layers=dit_layers)
        vae = AutoencoderKLWan()  # Diffusers' defaults are Wan 2.1's VAE
    pipe = WanPipeline(
        tokenizer=build_umt5_tokenizer(),
        text_encoder=fill_random(text_encoder, seed),
        transformer=fill_random(transformer, seed + 1),
        vae=fill_random(vae, seed + 2),
        scheduler=UniPCMultistepScheduler(**WAN_2_1_SCHEDULER),
    )
    sizes = {"dit_layers": dit_layers, "umt5_layers": umt5_layers, "shard": shard}
    return save_published(pipe, out, "wan-1.3b", sizes, shard)
