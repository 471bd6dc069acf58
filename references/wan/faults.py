"""The Wan faults: text-encoder padding, norm weights, the image-to-video inputs (CLIP layer, mask channels,
conditioning normalisation, the VAE encoder's dtype), the two-expert switch, and shard faults of the parallel DiT.

Shard faults break one rank's part of the parallel DiT (native_models/parallel), so they need the native side on
several ranks (`topology`, run by harness/run/multirank.py on every rank); on one rank there is nothing to break
and `apply` refuses. Their functions are module-level: they are pickled into the rank processes. Registered on
import (harness/verdicts/faults.py explains a `Fault`).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from harness.run.forcing import find_stage
from harness.verdicts.faults import (
    Fault,
    drop_weight,
    parallel_modules,
    register,
    swap_qk_norm_weights,
    wrap_after,
)
from native_models.pipeline import ComposedPipeline
from native_models.stages.condition_latents import ConditionLatentStage
from native_models.stages.image_encoding import ImageEncodingStage
from native_models.stages.text_encoding import TextEncodingStage

I2V = ("wan_i2v",)


def _wan_text_spec_changed(pipeline: ComposedPipeline, **changes: Any) -> None:
    stage = find_stage(pipeline, TextEncodingStage)
    stage.encoders = [(replace(spec, **changes), tokenizer, model) for spec, tokenizer, model in stage.encoders]


def _umt5_padding_mask_dropped(pipeline: ComposedPipeline) -> None:
    _wan_text_spec_changed(pipeline, attention_mask=False)


register(Fault(
    name="wan_text_padding_mask_dropped",
    description="UMT5 run without the tokenizer's padding mask: every prompt token also attends to the padding "
                "after it (the embeddings past the prompt are still zeroed)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_umt5_padding_mask_dropped, families=("wan",),
    expected_module=None,
))


def _umt5_padding_not_zeroed(pipeline: ComposedPipeline) -> None:
    _wan_text_spec_changed(pipeline, zero_padding=False)


register(Fault(
    name="wan_text_padding_not_zeroed",
    description="the UMT5 states at padding positions handed to the DiT instead of zeros (WanPipeline cuts each "
                "prompt's states at its token count and pads with zeros)",
    expected_stage="encode", expected_field="prompt_embeds", expected_step=None,
    apply=_umt5_padding_not_zeroed, families=("wan",),
    expected_module=None,
))


def _wan_cross_norm_weight_dropped(pipeline: ComposedPipeline) -> None:
    drop_weight(pipeline, "transformer", ".norm2")


register(Fault(
    name="wan_norm_weight_dropped",
    description="every block's cross-attention LayerNorm (norm2, affine in Wan 2.1) run without its weight",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_wan_cross_norm_weight_dropped, families=("wan",),
    expected_module="blocks.0.norm2",
))


def _wan_qk_norm_swapped(pipeline: ComposedPipeline) -> None:
    swap_qk_norm_weights(pipeline, ".attn1")


register(Fault(
    name="wan_qk_norm_weights_swapped",
    description="every block's self-attention norm_q weight loaded into norm_k and the other way round (Wan's "
                "q/k RMSNorm spans all heads: one weight of dim entries each)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_wan_qk_norm_swapped, families=("wan",),
    expected_module="blocks.0.attn1.norm_q",
))


def _wan_cross_norm_bias_dropped(pipeline: ComposedPipeline) -> None:
    drop_weight(pipeline, "transformer", ".norm2", "bias")


register(Fault(
    name="wan_norm_bias_dropped",
    description="every block's cross-attention LayerNorm (norm2) keeps its weight but drops its bias",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_wan_cross_norm_bias_dropped, families=("wan",), dtypes=("fp32",),
    scope_note="fp32 only: the bias of a norm whose output feeds the tiny DiT's cross-attention moves the forced "
               "step-0 output by rel_l2 7.2e-3 in fp32 and 8.5e-3 in bf16, below the bf16 threshold (9.8e-3, 3x "
               "the floor of two correct bf16 runs): no bf16 tolerance can see it without failing correct runs",
    expected_module="blocks.0.norm2",
))


# ---- image-to-video inputs (registry family wan_i2v) and the two-expert switch --------------------------------
def _image_embeds_last_layer(pipeline: ComposedPipeline) -> None:
    find_stage(pipeline, ImageEncodingStage)  # refuses a pipeline without an image path (Wan 2.2 A14B I2V)
    pipeline.config.image_hidden_state = -1  # the config instance of this pipeline only


register(Fault(
    name="wan_i2v_image_embeds_last_layer",
    description="the CLIP image tokens taken from the vision tower's last layer instead of the penultimate one "
                "(WanImageToVideoPipeline.encode_image: hidden_states[-2])",
    expected_stage="encode", expected_field="image_embeds", expected_step=None,
    apply=_image_embeds_last_layer, families=I2V, cases=("wan-i2v-tiny",),
))


def channels_folded_frames_first(mask: torch.Tensor) -> torch.Tensor:
    """Wan's mask (B, f_t, T, h, w) as a port gets it that folds the per-frame mask (B, 1, f_t * T, h, w) into
    channels without the transpose: view(B, f_t, T, h, w) instead of view(B, T, f_t, h, w).transpose(1, 2)."""
    b, channels, frames, h, w = mask.shape
    per_frame = mask.transpose(1, 2).reshape(b, 1, frames * channels, h, w)
    return per_frame.view(b, channels, frames, h, w)


def _mask_channels_wrong_order(pipeline: ComposedPipeline) -> None:
    find_stage(pipeline, ConditionLatentStage)
    wrap_after(pipeline.config, "prepare_condition_mask", channels_folded_frames_first)


register(Fault(
    name="wan_i2v_mask_channels_wrong_order",
    description="the first-frame mask folded into its 4 channels in the wrong order (frames before channels: no "
                "transpose), so the 'given' channels land on later latent frames",
    expected_stage="latents", expected_field="mask", expected_step=None,
    apply=_mask_channels_wrong_order, families=I2V,
))


def _condition_not_normalized(pipeline: ComposedPipeline) -> None:
    find_stage(pipeline, ConditionLatentStage)

    def raw(latents: torch.Tensor, vae: Any, batch: Any) -> torch.Tensor:
        return latents  # the VAE's posterior mean, without (z - mean) * (1 / std)

    pipeline.config.normalize_condition_latents = raw  # type: ignore[method-assign]


register(Fault(
    name="wan_i2v_condition_not_normalized",
    description="the VAE-encoded conditioning frame handed to the DiT without Wan's latent normalisation "
                "(z - mean) * (1 / std)",
    expected_stage="latents", expected_field="condition", expected_step=None,
    apply=_condition_not_normalized, families=I2V,
))


def _vae_encoder_wrong_dtype(pipeline: ComposedPipeline) -> None:
    """The encoder in the other precision: bfloat16 in an fp32 run, float32 in a bf16 run (a port that keeps, or
    casts, the encoder apart from the rest of the VAE). A copy: the decoder keeps the run's dtype."""
    stage = find_stage(pipeline, ConditionLatentStage)
    dtype = next(stage.vae.parameters()).dtype
    stage.vae = copy.deepcopy(stage.vae).to(torch.float32 if dtype == torch.bfloat16 else torch.bfloat16)


register(Fault(
    name="wan_i2v_vae_encoder_wrong_dtype",
    description="the VAE encoder run in the wrong dtype (bf16 in an fp32 run, fp32 in a bf16 run) while the "
                "reference encodes the conditioning video in the VAE's dtype",
    expected_stage="latents", expected_field="condition", expected_step=None,
    apply=_vae_encoder_wrong_dtype, families=I2V, dtypes=("fp32",),
    scope_note="fp32 only: in a bf16 run the float32 encoder moves latents/condition by rel_l2 3.4e-3 (wan-i2v-tiny, "
               "2.4x the floor 1.4e-3 that a correct bf16 run also shows against Diffusers), below the bf16 "
               "threshold 4.2e-3 (3x the floor): one bf16 rounding of the encoder is what bf16 parity allows",
))


def _switch_one_step_early(pipeline: ComposedPipeline) -> None:
    """select_expert asked about the next step's timestep: the low-noise expert takes over one step early."""
    if not pipeline.has_module("transformer_2"):
        raise ValueError("wan_expert_switch_one_step_early needs a two-expert pipeline (transformer_2)")
    config = pipeline.config
    original = config.select_expert

    def early(t: torch.Tensor, batch: Any) -> int:
        timesteps = [float(v) for v in batch.timesteps]
        step = timesteps.index(float(t))
        return original(batch.timesteps[step + 1], batch) if step + 1 < len(timesteps) else original(t, batch)

    config.select_expert = early  # type: ignore[method-assign]


register(Fault(
    name="wan_expert_switch_one_step_early",
    description="Wan 2.2 A14B: the low-noise expert (transformer_2) takes over one step before the boundary "
                "timestep (at 4 steps, timesteps 999/900/750/500: step 1 instead of step 2)",
    expected_stage="denoise", expected_field="expert", expected_step=1,
    apply=_switch_one_step_early, families=("wan", "wan_i2v"), cases=("wan-a14b-tiny", "wan-a14b-i2v-tiny"),
    request_overrides=(("steps", 4),),
))


# ---- shard faults: they break one rank's part of the parallel DiT (native_models/parallel), so they need the
# native side on several ranks (`topology`, run by harness/run/multirank.py on every rank); on one rank there is
# nothing to break and `apply` refuses. Module-level functions: they are pickled into the rank processes.
def heads_back_in_wrong_order(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Ulysses' return all-to-all with the ranks' head chunks put back in reverse order."""
    from native_models.parallel import comm

    out = comm.heads_to_sequence(x, group)  # (B, H, L/w, D)
    return out.unflatten(1, (comm.group_size(group), -1)).flip(1).flatten(1, 2)


def _sp_heads_wrong_order(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.sequence_parallel import UlyssesAttention

    for module in parallel_modules(pipeline, UlyssesAttention, "sp_heads_wrong_order"):
        module.to_sequence = heads_back_in_wrong_order  # instance attribute (the seam UlyssesAttention offers)


register(Fault(
    name="sp_heads_wrong_order",
    description="sequence parallelism: Ulysses' all-to-all back from head shards puts the ranks' heads in the "
                "wrong order, so every token's attention output mixes up heads",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_sp_heads_wrong_order, families=("wan",), topology=(1, 2),
    expected_module="blocks.0.attn1.core",
))


def _sp_padding_unmasked(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.sequence_parallel import UlyssesAttention

    for module in parallel_modules(pipeline, UlyssesAttention, "sp_padding_unmasked"):
        module.mask_padded_keys = False


register(Fault(
    name="sp_padding_unmasked",
    description="sequence parallelism: the zero tokens that pad the sequence to a multiple of the ranks are not "
                "masked, so every query also attends to them as keys (9 frames at 48x80: 45 tokens padded to 46)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_sp_padding_unmasked, families=("wan",), topology=(1, 2), request_overrides=(("frames", 9),),
    dtypes=("fp32",),
    scope_note="fp32 only: one unmasked zero key among 46 moves the forced step-0 DiT output by rel_l2 1.4e-3 in "
               "fp32, less than a correct bf16 run differs from Diffusers there (3.2e-3, cosine 0.999995; with "
               "the fault 4.0e-3, cosine 0.999992): no bf16 tolerance can see it without failing correct runs",
    expected_module="blocks.0.attn1.core",
))


def _tp_qk_norm_not_reduced(pipeline: ComposedPipeline) -> None:
    from native_models.parallel.tensor_parallel import ShardedRMSNorm

    for module in parallel_modules(pipeline, ShardedRMSNorm, "tp_qk_norm_not_reduced"):
        module.group = None  # no all-reduce: each rank normalises q/k by its own heads' mean square


register(Fault(
    name="tp_qk_norm_not_reduced",
    description="tensor parallelism: the q/k RMSNorm, which spans all heads, normalises each rank's head shard "
                "by that shard's own mean square (its all-reduce dropped). Step 0 in either precision; the field "
                "is the DiT output in fp32 (rel_l2 4.0e-2), in bf16 under the default cosine bar the guided "
                "noise_pred (cosine 0.9897; the DiT output's 0.99919 still passes 0.999)",
    expected_stage="denoise", expected_field=None, expected_step=0,
    apply=_tp_qk_norm_not_reduced, families=("wan",), topology=(2, 1),
    expected_module="blocks.0.attn1.norm_q",
))


# ---- image-to-video shard faults (Ulysses SP): the context exchange and the conditioning tokens ----------------
def _sequence_state(pipeline: ComposedPipeline, fault: str) -> Any:
    from native_models.parallel.sequence_parallel import UlyssesAttention

    return parallel_modules(pipeline, UlyssesAttention, fault)[0].state


class ContextThroughAllToAll(nn.Module):
    """Cross-attention run the self-attention way under Ulysses (the SGLang Wan bug): the image and text context,
    whole on every rank, is exchanged as if it were this rank's sequence shard. An exchange hands each rank every
    rank's shard, so the context arrives w times over: [image, text] x w. Diffusers' attention (which a port
    follows) then takes "all but the last 512 tokens" as the image: the image keys get text tokens and repeats.
    Wraps a block's `attn2`; module-level so the ranks can build it."""

    def __init__(self, inner: nn.Module, state: Any) -> None:
        super().__init__()
        self.inner = inner
        self.state = state

    def forward(self, x: torch.Tensor, context: torch.Tensor, image_context: torch.Tensor) -> torch.Tensor:
        from native_models.parallel import comm

        joint = torch.cat([image_context, context], dim=1)  # (B, L_img + L_txt, C), as Diffusers passes it
        exchanged = comm.all_gather_cat(joint, self.state.group, dim=1)  # (B, w (L_img + L_txt), C)
        text_length = context.shape[1]
        return self.inner(x, exchanged[:, -text_length:], exchanged[:, :-text_length])


def _sp_context_through_all_to_all(pipeline: ComposedPipeline) -> None:
    state = _sequence_state(pipeline, "sp_cross_attention_context_exchanged")
    blocks = pipeline.get_module("transformer").blocks
    if not hasattr(blocks[0].attn2, "image_core"):
        raise ValueError("sp_cross_attention_context_exchanged needs a DiT with an image path (Wan 2.1 I2V)")
    for block in blocks:
        block.attn2 = ContextThroughAllToAll(block.attn2, state)


register(Fault(
    name="sp_cross_attention_context_exchanged",
    description="sequence parallelism: the cross-attention context (CLIP image tokens + text, whole on every "
                "rank) sent through the Ulysses exchange as if sequence-sharded, so it arrives twice over and "
                "the image/text split by length hands text tokens to the image keys (SGLang's Wan bug)",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_sp_context_through_all_to_all, families=I2V, cases=("wan-i2v-tiny",), topology=(1, 2),
))


def shard_rotated_condition(module: nn.Module, args: tuple, output: torch.Tensor, latent_channels: int,
                            world: int) -> torch.Tensor:
    """The patch embedding's output with the conditioning channels' part (mask + conditioning latents) of every
    token shard replaced by the next rank's shard: rank r's tokens carry rank r+1's conditioning."""
    x = args[0]  # (B, C_in, T, H, W): latents, then the conditioning channels
    conditioning = x.clone()
    conditioning[:, :latent_channels] = 0
    part = nn.functional.conv3d(conditioning, module.weight, None, module.stride)  # (B, C, T', H', W')
    tokens = part.flatten(2)  # (B, C, L)
    length = tokens.shape[2]
    padded = -(-length // world) * world
    shards = nn.functional.pad(tokens, (0, padded - length)).unflatten(2, (world, padded // world))
    rotated = shards.roll(-1, dims=2).flatten(2)[:, :, :length].view_as(part)
    return output - part + rotated


def _sp_condition_shard_wrong_rank(pipeline: ComposedPipeline) -> None:
    import functools

    state = _sequence_state(pipeline, "sp_condition_shard_wrong_rank")
    latent_channels = int(pipeline.get_module("vae").latent_channels)
    for name in ("transformer", "transformer_2"):
        if pipeline.has_module(name):
            embedding = pipeline.get_module(name).patch_embedding
            if embedding.in_channels == latent_channels:
                raise ValueError("sp_condition_shard_wrong_rank needs an image-to-video DiT (conditioning channels)")
            embedding.register_forward_hook(functools.partial(shard_rotated_condition, latent_channels=latent_channels,
                                                              world=state.world))


register(Fault(
    name="sp_condition_shard_wrong_rank",
    description="sequence parallelism: each rank's tokens get the conditioning (mask + conditioning latents) of "
                "the next rank's shard, while the noisy latents are right",
    expected_stage="denoise", expected_field="transformer_output", expected_step=0,
    apply=_sp_condition_shard_wrong_rank, families=I2V, topology=(1, 2),
))
