"""FLUX.1 DiT (double-stream MMDiT blocks, then single-stream parallel blocks), native PyTorch.

Written after the black-forest-labs reference layout but with Diffusers' parameter names, so a Diffusers
`transformer/` checkpoint loads strictly. The arithmetic mirrors Diffusers' `FluxTransformer2DModel` step for
step (dtype casts, operation order, memory layout into attention), so fp32 outputs agree to rounding noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from native_models.attention import attention
from native_models.config_dict import known_config_values
from native_models.models.rope import channel_tables, rotary_cos_sin, rotate_channels, timestep_embedding

TIMESTEP_CHANNELS = 256  # width of the sinusoidal timestep/guidance features
ROPE_THETA = 10000.0
NORM_EPS = 1e-6  # every LayerNorm and q/k RMSNorm in FLUX
FP16_MAX = 65504.0


@dataclass(frozen=True)
class FluxConfig:
    """Hyper-parameters, named as in Diffusers' config.json."""

    patch_size: int = 1
    in_channels: int = 64
    out_channels: int | None = None
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    def validate(self) -> None:
        """Reject settings this implementation does not reproduce, naming the value."""
        if self.patch_size != 1:
            raise ValueError(f"patch_size={self.patch_size} is not supported (FLUX packs 2x2 patches outside, uses 1)")
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(
                f"axes_dims_rope={list(self.axes_dims_rope)} sums to {sum(self.axes_dims_rope)}, "
                f"but attention_head_dim={self.attention_head_dim}"
            )
        odd = [d for d in self.axes_dims_rope if d % 2]
        if odd:
            raise ValueError(f"axes_dims_rope={list(self.axes_dims_rope)} has odd entries {odd}")
        for name in ("in_channels", "num_attention_heads", "attention_head_dim", "joint_attention_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> FluxConfig:
        """Read Diffusers' config.json; keys starting with '_' are metadata and ignored, unknown keys rejected."""
        values = known_config_values(cls, config, "FLUX transformer", tuple_keys=("axes_dims_rope",))
        result = cls(**values)
        result.validate()
        return result


class Rotary(NamedTuple):
    """Per-pair rotary tables for the joint [text, image] sequence, the pairing style, and the per-channel
    tables the rotation uses (`with_channels` builds them once per forward; left None, each call builds them)."""

    cos: torch.Tensor  # (L, D/2) float32
    sin: torch.Tensor  # (L, D/2) float32
    interleaved: bool
    cos_channels: torch.Tensor | None = None  # (L, 1, D) float32
    sin_channels: torch.Tensor | None = None  # (L, 1, D) float32, signed per pair (rope.channel_tables)

    def with_channels(self) -> Rotary:
        cos, sin = channel_tables(self.cos[:, None, :], self.sin[:, None, :], self.interleaved)
        return self._replace(cos_channels=cos, sin_channels=sin)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x (B, L, H, D)."""
        cos, sin = self.cos_channels, self.sin_channels
        if cos is None or sin is None:
            cos, sin = channel_tables(self.cos[:, None, :], self.sin[:, None, :], self.interleaved)
        return rotate_channels(x, cos.to(x.device), sin.to(x.device), self.interleaved)


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear: embeds timestep features, guidance features and the pooled text vector."""

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.linear_2 = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeTextEmbedding(nn.Module):
    """The conditioning vector: MLP(timestep) [+ MLP(guidance)] + MLP(pooled text). Shape (B, inner_dim)."""

    def __init__(self, inner_dim: int, pooled_dim: int, guidance: bool) -> None:
        super().__init__()
        self.timestep_embedder = MLPEmbedder(TIMESTEP_CHANNELS, inner_dim)
        self.guidance_embedder = MLPEmbedder(TIMESTEP_CHANNELS, inner_dim) if guidance else None
        self.text_embedder = MLPEmbedder(pooled_dim, inner_dim)

    def forward(self, timestep: torch.Tensor, guidance: torch.Tensor | None, pooled: torch.Tensor) -> torch.Tensor:
        """timestep and guidance are (B,) on the 0..1000 scale; sinusoids are float32, cast to pooled's dtype."""
        emb = self.timestep_embedder(timestep_embedding(timestep, TIMESTEP_CHANNELS).to(pooled.dtype))
        if self.guidance_embedder is not None:
            if guidance is None:
                raise ValueError("this FLUX transformer has guidance_embeds=True: pass guidance (B,)")
            emb = emb + self.guidance_embedder(timestep_embedding(guidance, TIMESTEP_CHANNELS).to(pooled.dtype))
        elif guidance is not None:
            raise ValueError("this FLUX transformer has guidance_embeds=False: guidance must be None")
        return emb + self.text_embedder(pooled)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over channels without affine parameters (FLUX modulates instead)."""
    return F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift, with (B, C) modulation broadcast over tokens of x (B, L, C)."""
    return layer_norm(x) * (1 + scale[:, None]) + shift[:, None]


class Modulation(nn.Module):
    """SiLU -> Linear of the conditioning vector, split into `count` (B, C) chunks (adaLN shifts/scales/gates)."""

    def __init__(self, dim: int, count: int) -> None:
        super().__init__()
        self.count = count
        self.linear = nn.Linear(dim, count * dim)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(vec)).chunk(self.count, dim=1)


class GeluTanhProj(nn.Module):
    """Linear then tanh-approximated GELU (the first half of FLUX's feed-forward)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """GELU-tanh MLP with 4x hidden width; `net.1` is a parameter-free slot kept so names match `net.2`."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GeluTanhProj(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, L, H*D) -> (B, L, H, D)."""
    return x.unflatten(-1, (-1, head_dim))


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: Rotary) -> torch.Tensor:
    """Rotary then full attention over (B, L, H, D) q/k/v; returns (B, L, H*D).

    Kept in (B, L, H, D) memory layout up to the attention call, exactly as the reference feeds its kernel.
    """
    q, k = rope.apply(q), rope.apply(k)
    out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, L, D)
    return out.transpose(1, 2).flatten(2, 3).to(q.dtype)  # (B, L, H*D)


class SelfAttention(nn.Module):
    """q/k/v projections with per-head RMSNorm on q and k; no output projection (single-stream blocks)."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(head_dim, eps=NORM_EPS)
        self.norm_k = nn.RMSNorm(head_dim, eps=NORM_EPS)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, C) -> q, k, v each (B, L, H, D), q and k normalised.

        Three GEMMs, not one fused q/k/v GEMM: at FLUX's width (3072) the fused one measured no faster on the CPU
        (docs/speed.md, section 6); Wan's narrower blocks do fuse (native_models/models/fused_linear.py).
        """
        q = self.norm_q(split_heads(self.to_q(x), self.head_dim))
        k = self.norm_k(split_heads(self.to_k(x), self.head_dim))
        v = split_heads(self.to_v(x), self.head_dim)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: Rotary) -> torch.Tensor:
        return joint_attention(*self.qkv(x), rope)  # (B, L, C)


class JointAttention(SelfAttention):
    """Image-stream attention plus a second set of projections for the text stream, attended jointly."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__(dim, head_dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.add_q_proj = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.norm_added_q = nn.RMSNorm(head_dim, eps=NORM_EPS)
        self.norm_added_k = nn.RMSNorm(head_dim, eps=NORM_EPS)
        self.to_add_out = nn.Linear(dim, dim)

    def context_qkv(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text-stream q, k, v each (B, L_txt, H, D)."""
        q = self.norm_added_q(split_heads(self.add_q_proj(c), self.head_dim))
        k = self.norm_added_k(split_heads(self.add_k_proj(c), self.head_dim))
        v = split_heads(self.add_v_proj(c), self.head_dim)
        return q, k, v

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Rotary) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """x (B, L_img, C) and c (B, L_txt, C) -> projected attention outputs of the same shapes."""
        img_q, img_k, img_v = self.qkv(x)
        txt_q, txt_k, txt_v = self.context_qkv(c)
        q = torch.cat((txt_q, img_q), dim=1)  # text tokens first, as the rotary ids are ordered
        k = torch.cat((txt_k, img_k), dim=1)
        v = torch.cat((txt_v, img_v), dim=1)
        out = joint_attention(q, k, v, rope)  # (B, L_txt + L_img, C)
        txt_out, img_out = out.split_with_sizes((c.shape[1], x.shape[1]), dim=1)
        return self.to_out[0](img_out.contiguous()), self.to_add_out(txt_out.contiguous())


class DoubleStreamBlock(nn.Module):
    """MMDiT block: separate weights for image and text streams, one joint attention over both."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = Modulation(dim, 6)
        self.norm1_context = Modulation(dim, 6)
        self.attn = JointAttention(dim, head_dim)
        self.ff = FeedForward(dim)
        self.ff_context = FeedForward(dim)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, vec: torch.Tensor, rope: Rotary
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L_img, C), c (B, L_txt, C), vec (B, C) -> updated (x, c)."""
        shift, scale, gate, mlp_shift, mlp_scale, mlp_gate = self.norm1(vec)
        c_shift, c_scale, c_gate, c_mlp_shift, c_mlp_scale, c_mlp_gate = self.norm1_context(vec)

        img_attn, txt_attn = self.attn(modulate(x, shift, scale), modulate(c, c_shift, c_scale), rope)

        x = x + gate.unsqueeze(1) * img_attn
        x = x + mlp_gate.unsqueeze(1) * self.ff(modulate(x, mlp_shift, mlp_scale))

        c = c + c_gate.unsqueeze(1) * txt_attn
        c = c + c_mlp_gate.unsqueeze(1) * self.ff_context(modulate(c, c_mlp_shift, c_mlp_scale))
        if c.dtype == torch.float16:  # the reference clips only the text stream here
            c = c.clip(-FP16_MAX, FP16_MAX)
        return x, c


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP over the concatenated [text, image] sequence, one fused output projection."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        mlp_dim = int(dim * mlp_ratio)
        self.norm = Modulation(dim, 3)
        self.proj_mlp = nn.Linear(dim, mlp_dim)
        self.proj_out = nn.Linear(dim + mlp_dim, dim)
        self.attn = SelfAttention(dim, head_dim)

    def forward(self, xc: torch.Tensor, vec: torch.Tensor, rope: Rotary) -> torch.Tensor:
        """xc (B, L_txt + L_img, C), vec (B, C) -> xc of the same shape."""
        shift, scale, gate = self.norm(vec)
        h = modulate(xc, shift, scale)
        mlp = F.gelu(self.proj_mlp(h), approximate="tanh")
        attn = self.attn(h, rope)
        xc = xc + gate.unsqueeze(1) * self.proj_out(torch.cat((attn, mlp), dim=2))
        if xc.dtype == torch.float16:
            xc = xc.clip(-FP16_MAX, FP16_MAX)
        return xc


class FinalLayer(nn.Module):
    """adaLN-continuous output norm: LayerNorm(x) * (1 + scale) + shift; note scale comes first here."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(vec).to(x.dtype)).chunk(2, dim=1)
        return modulate(x, shift, scale)


def _same(kept: torch.Tensor, ids: torch.Tensor) -> bool:
    """The same position ids as a kept copy: shape, dtype, device and values."""
    return kept.shape == ids.shape and kept.dtype == ids.dtype and kept.device == ids.device and torch.equal(kept, ids)


class FluxTransformer2DModel(nn.Module):
    """The FLUX.1 denoiser on packed latent tokens; parameter names equal Diffusers' state-dict keys."""

    def __init__(self, config: FluxConfig, rope_interleaved: bool = True) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.rope_interleaved = rope_interleaved  # FLUX pairs adjacent channels; False = split-half (a fault)
        dim, head_dim = config.inner_dim, config.attention_head_dim

        self.time_text_embed = TimeTextEmbedding(dim, config.pooled_projection_dim, config.guidance_embeds)
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim)
        self.x_embedder = nn.Linear(config.in_channels, dim)
        self.transformer_blocks = nn.ModuleList(DoubleStreamBlock(dim, head_dim) for _ in range(config.num_layers))
        self.single_transformer_blocks = nn.ModuleList(
            SingleStreamBlock(dim, head_dim) for _ in range(config.num_single_layers)
        )
        self.norm_out = FinalLayer(dim)
        self.proj_out = nn.Linear(dim, config.patch_size**2 * config.output_channels)
        # the last rotary tables and the ids they were built for: every denoising step passes the same ids
        self._rotary_cache: tuple[torch.Tensor, torch.Tensor, Rotary] | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FluxTransformer2DModel:
        """Build from Diffusers' transformer config.json (raises ValueError for unsupported settings)."""
        return cls(FluxConfig.from_dict(config))

    def rotary(self, txt_ids: torch.Tensor, img_ids: torch.Tensor) -> Rotary:
        """Rotary tables for the joint sequence, text positions first."""
        for name, ids in (("txt_ids", txt_ids), ("img_ids", img_ids)):
            if ids.ndim != 2 or ids.shape[1] != len(self.config.axes_dims_rope):
                raise ValueError(f"{name} must be (L, {len(self.config.axes_dims_rope)}), got {tuple(ids.shape)}")
        cached = self._rotary_cache
        if cached is not None and cached[2].interleaved == self.rope_interleaved and _same(cached[0], txt_ids) \
                and _same(cached[1], img_ids):
            return cached[2]
        cos, sin = rotary_cos_sin(torch.cat((txt_ids, img_ids), dim=0), self.config.axes_dims_rope, ROPE_THETA)
        rope = Rotary(cos, sin, self.rope_interleaved).with_channels()
        self._rotary_cache = (txt_ids.detach().clone(), img_ids.detach().clone(), rope)
        return rope

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity for packed image tokens.

        hidden_states (B, N, in_channels); encoder_hidden_states (B, L, joint_attention_dim);
        pooled_projections (B, pooled_projection_dim); timestep and guidance (B,) on the 0..1 scale (the
        pipeline divides by 1000; they are cast to the model dtype and scaled back here, as the reference does);
        img_ids (N, 3), txt_ids (L, 3). Returns (B, N, out_channels) in the model dtype.
        """
        x = self.x_embedder(hidden_states)  # (B, N, C)
        timestep = timestep.to(x.dtype) * 1000
        if guidance is not None:
            guidance = guidance.to(x.dtype) * 1000
        vec = self.time_text_embed(timestep, guidance, pooled_projections)  # (B, C)
        c = self.context_embedder(encoder_hidden_states)  # (B, L, C)
        rope = self.rotary(txt_ids, img_ids)

        for block in self.transformer_blocks:
            x, c = block(x, c, vec, rope)

        text_len = c.shape[1]
        xc = torch.cat((c, x), dim=1)  # (B, L + N, C)
        for block in self.single_transformer_blocks:
            xc = block(xc, vec, rope)
        x = xc[:, text_len:]

        return self.proj_out(self.norm_out(x, vec))  # (B, N, out_channels)
