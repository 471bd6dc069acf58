"""The Diffusers/transformers components of a small FluxPipeline, built from a table of sizes.

Two builders make FLUX checkpoints: references/flux/tiny.py (random weights, for parity) and
scripts/train_digits.py (trained, for the not-noise check). Both build the same four models the same way, seeded
per component so that resizing one leaves the others' weights unchanged; this module is that one way. The
shipped digits checkpoint is reproducible by its script only while these constructor calls stay as they are.
"""

from __future__ import annotations

from typing import Any, Protocol

from references.common.tiny_build import seed_component

# FLUX.1-dev's scheduler/scheduler_config.json.
FLUX_DEV_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}


class FluxSizes(Protocol):
    """The size fields that TinyFluxConfig and the digits Recipe share."""

    clip_hidden: int
    clip_layers: int
    clip_heads: int
    clip_intermediate: int
    clip_projection_dim: int
    t5_d_model: int
    t5_d_kv: int
    t5_d_ff: int
    t5_layers: int
    t5_heads: int
    t5_relative_buckets: int
    t5_relative_max_distance: int
    dit_layers: int
    dit_single_layers: int
    dit_heads: int
    dit_head_dim: int
    dit_axes_dims_rope: tuple[int, int, int]
    vae_block_out_channels: tuple[int, ...]
    vae_layers_per_block: int
    vae_latent_channels: int
    vae_norm_groups: int


def build_flux_components(sizes: FluxSizes, seed: int, *, guidance_embeds: bool, vae_sample_size: int,
                          scheduler: dict[str, Any], clip_merges: tuple[tuple[str, str], ...] = (),
                          **vae_factors: float) -> dict[str, Any]:
    """Every FluxPipeline component, initial weights drawn from the global RNG seeded per component
    (seed * 16 + 0..3 for CLIP, T5, DiT, VAE). `clip_merges`: the CLIP tokenizer's BPE merges (none for the
    digits recipe, which was trained without); `vae_factors`: scaling_factor / shift_factor when given."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from references.common.tokenizers import CLIP_MAX_LENGTH, build_clip_tokenizer, build_t5_tokenizer

    clip_tokenizer = build_clip_tokenizer(clip_merges)
    t5_tokenizer = build_t5_tokenizer()

    seed_component(seed, 0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=sizes.clip_hidden,
            intermediate_size=sizes.clip_intermediate,
            projection_dim=sizes.clip_projection_dim,
            num_hidden_layers=sizes.clip_layers,
            num_attention_heads=sizes.clip_heads,
            max_position_embeddings=CLIP_MAX_LENGTH,
            hidden_act="quick_gelu",
            # Must be the tokenizer's ids: with eos_token_id == 2 CLIP pools by the legacy argmax rule.
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
        )
    )

    seed_component(seed, 1)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=sizes.t5_d_model,
            d_kv=sizes.t5_d_kv,
            d_ff=sizes.t5_d_ff,
            num_layers=sizes.t5_layers,
            num_heads=sizes.t5_heads,
            relative_attention_num_buckets=sizes.t5_relative_buckets,
            relative_attention_max_distance=sizes.t5_relative_max_distance,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            tie_word_embeddings=False,
            pad_token_id=t5_tokenizer.pad_token_id,
            eos_token_id=t5_tokenizer.eos_token_id,
            decoder_start_token_id=t5_tokenizer.pad_token_id,
        )
    )

    seed_component(seed, 2)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * sizes.vae_latent_channels,
        num_layers=sizes.dit_layers,
        num_single_layers=sizes.dit_single_layers,
        attention_head_dim=sizes.dit_head_dim,
        num_attention_heads=sizes.dit_heads,
        joint_attention_dim=sizes.t5_d_model,
        pooled_projection_dim=sizes.clip_hidden,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=tuple(sizes.dit_axes_dims_rope),
    )

    seed_component(seed, 3)
    depth = len(sizes.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        block_out_channels=tuple(sizes.vae_block_out_channels),
        layers_per_block=sizes.vae_layers_per_block,
        latent_channels=sizes.vae_latent_channels,
        norm_num_groups=sizes.vae_norm_groups,
        sample_size=vae_sample_size,
        use_quant_conv=False,
        use_post_quant_conv=False,
        **vae_factors,
    )

    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**scheduler),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": t5_tokenizer,
        "transformer": transformer,
    }

