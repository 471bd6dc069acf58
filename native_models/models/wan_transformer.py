"""Wan 2.1 DiT (text- and image-to-video), native PyTorch, numerically matching Diffusers' `WanTransformer3DModel`.

Latent video (B, C, T, H, W) -> 3D patches (Conv3d) -> a sequence of L = T/pt * H/ph * W/pw tokens, run through
blocks of [modulated self-attention with 3D RoPE, cross-attention to the text, modulated GELU-tanh FFN], each
block modulated by the timestep through its own `scale_shift_table`; then a modulated output norm, a linear
projection and unpatchify back to (B, C_out, T, H, W). Parameter names equal Diffusers' state-dict keys.

Image-to-video (Wan 2.1 I2V: `image_dim` and `added_kv_proj_dim` set) adds an image path: the CLIP tokens
(B, 257, image_dim) go through `condition_embedder.image_embedder` (fp32 LayerNorm, GELU MLP, fp32 LayerNorm) to
(B, 257, C), and every block's cross-attention attends from the same queries to them through its own key/value
projections (`add_k_proj`, `add_v_proj`, with `norm_added_k` on the keys); the image and the text results are
summed before `to_out`. Diffusers concatenates the image tokens in front of the text and splits them off again
inside attention assuming exactly 512 text tokens; here the two contexts stay separate tensors, which is the same
computation at 512 text tokens (the I2V pipeline refuses other lengths, docs/families/wan-i2v.md). The input
channels are the noisy latents concatenated with the mask and the conditioning latents (36 for Wan 2.1 I2V).

Precision follows Diffusers step for step: Diffusers keeps `rope`, `time_embedder`, `scale_shift_table` and
`norm1/2/3` in float32 when the model is loaded in half precision (`_keep_in_fp32_modules`), and computes the
modulation, the layer norms and the gated residual adds in float32; this module does the same (see `_apply`).

Parallelism is declared once, as class data (`_tp_plan`, `_sp_plan`), and applied by
`native_models.parallel.parallelize`; the forward below is the only forward, single- or multi-rank. It is
parallel-ready by construction: attention heads are inferred from the (possibly sharded) projection width, and
attention itself is a swappable parameter-free `core` module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from native_models.attention import attention
from native_models.config_dict import known_config_values
from native_models.models.fused_linear import FusedLinears
from native_models.models.rope import axis_frequencies, channel_tables, rotate_channels, timestep_embedding
from native_models.parallel.sequence_parallel import GatherOutput, SplitInput, SplitOutput, Ulysses
from native_models.parallel.tensor_parallel import Colwise, HeadShardedRMSNorm, Rowwise

ROPE_THETA = 10000.0
# Diffusers' WanTransformer3DModel._keep_in_fp32_modules: a parameter or buffer stays float32 under a half-precision
# cast when one of its dotted name components is in this set.
KEEP_FP32_COMPONENTS = frozenset({"rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"})
HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class WanConfig:
    """Hyper-parameters, named (and defaulted) as in Diffusers' config.json."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        """Channels of the (frame, height, width) rotary axes, split as Diffusers' WanRotaryPosEmbed does."""
        hw = 2 * (self.attention_head_dim // 6)
        return self.attention_head_dim - 2 * hw, hw, hw

    def validate(self) -> None:
        """Reject settings this implementation does not reproduce, naming the value."""
        if self.pos_embed_seq_len is not None:
            raise ValueError(
                f"pos_embed_seq_len={self.pos_embed_seq_len} is not supported (first-last-frame Wan is not implemented)"
            )
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise ValueError(
                f"image_dim={self.image_dim} and added_kv_proj_dim={self.added_kv_proj_dim} must be set together "
                "(the image embedder feeds the added key/value projections)"
            )
        if self.added_kv_proj_dim is not None and self.added_kv_proj_dim != self.inner_dim:
            raise ValueError(
                f"added_kv_proj_dim={self.added_kv_proj_dim} must equal num_attention_heads x attention_head_dim = "
                f"{self.inner_dim} (it projects the image embedder's output)"
            )
        if self.qk_norm != "rms_norm_across_heads":
            raise ValueError(f"qk_norm={self.qk_norm!r} is not supported (only 'rms_norm_across_heads')")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size={list(self.patch_size)} must be three positive ints (t, h, w)")
        if self.attention_head_dim % 2 or self.attention_head_dim < 6:
            raise ValueError(f"attention_head_dim={self.attention_head_dim} must be even and at least 6 (3D RoPE)")
        for name in ("num_attention_heads", "in_channels", "text_dim", "freq_dim", "ffn_dim", "rope_max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.image_dim is not None and self.image_dim < 1:
            raise ValueError(f"image_dim={self.image_dim} must be positive")

    @property
    def has_image_context(self) -> bool:
        """Wan 2.1 I2V: the DiT takes CLIP image tokens besides the text."""
        return self.image_dim is not None

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> WanConfig:
        """Read Diffusers' config.json; keys starting with '_' are metadata and ignored, unknown keys rejected."""
        values = known_config_values(cls, config, "Wan transformer", tuple_keys=("patch_size",))
        result = cls(**values)
        result.validate()
        return result


class WanRotary(NamedTuple):
    """Per-pair rotary tables for the image tokens, (L, 1, D/2) float32 each; adjacent channels are paired. The
    model also passes the per-channel tables the rotation uses ((L, 1, D), `rope.channel_tables`), built from
    its stored per-channel buffers; given per-pair tables only, each call builds them."""

    cos: torch.Tensor
    sin: torch.Tensor
    cos_channels: torch.Tensor | None = None
    sin_channels: torch.Tensor | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x (B, L, H, D), in float32, cast back to x's dtype (as Diffusers' Wan processor does)."""
        cos, sin = self.cos_channels, self.sin_channels
        if cos is None or sin is None:
            cos, sin = channel_tables(self.cos, self.sin, interleaved=True)
        return rotate_channels(x, cos, sin, interleaved=True)


class WanRotaryPosEmbed(nn.Module):
    """3D RoPE: frame, row and column angles concatenated along the channel pairs of every head.

    Tables for positions 0..max_seq_len-1 are built once in float64 (Diffusers' choice off MPS) and stored in
    float32, exactly as Diffusers builds its `freqs_cos`/`freqs_sin` buffers.
    """

    def __init__(self, axes: tuple[int, int, int], max_seq_len: int, theta: float = ROPE_THETA) -> None:
        super().__init__()
        self.pairs = tuple(dim // 2 for dim in axes)
        self.max_seq_len = max_seq_len
        positions = torch.arange(max_seq_len)  # int64, promoted to float64 by the outer product, as in Diffusers
        angles = [torch.outer(positions, axis_frequencies(dim, theta, torch.float64, positions.device)) for dim in axes]
        self.register_buffer("freqs_cos", torch.cat([a.cos().float() for a in angles], dim=1), persistent=False)
        self.register_buffer("freqs_sin", torch.cat([a.sin().float() for a in angles], dim=1), persistent=False)
        cos_channels, sin_channels = channel_tables(self.freqs_cos, self.freqs_sin, interleaved=True)  # (S, D) each
        self.register_buffer("freqs_cos_channels", cos_channels, persistent=False)
        self.register_buffer("freqs_sin_channels", sin_channels, persistent=False)
        self._cache: tuple[tuple[int, int, int], tuple[torch.Tensor, ...], WanRotary] | None = None  # the last grid

    def table(self, full: torch.Tensor, grid: tuple[int, int, int], per_channel: bool = False) -> torch.Tensor:
        """(max_seq_len, D/2) per-axis table -> (f*h*w, 1, D/2) for tokens in (frame, row, column) order; with
        `per_channel`, a (max_seq_len, D) per-channel table -> (f*h*w, 1, D)."""
        f, h, w = grid
        t_part, h_part, w_part = full.split(tuple(2 * p for p in self.pairs) if per_channel else self.pairs, dim=1)
        parts = (
            t_part[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            h_part[:h].view(1, h, 1, -1).expand(f, h, w, -1),
            w_part[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        )
        return torch.cat(parts, dim=-1).reshape(f * h * w, 1, -1)

    def forward(self, grid: tuple[int, int, int]) -> WanRotary:
        if max(grid) > self.max_seq_len:
            raise ValueError(f"token grid {grid} exceeds rope_max_seq_len={self.max_seq_len}")
        buffers = tuple(self.buffers())  # a cast or a move of the module replaces them: the cache no longer applies
        cached = self._cache
        if cached is not None and cached[0] == grid and all(a is b for a, b in zip(cached[1], buffers, strict=True)):
            return cached[2]  # every denoising step asks for the same grid
        rope = WanRotary(self.table(self.freqs_cos, grid), self.table(self.freqs_sin, grid),
                         self.table(self.freqs_cos_channels, grid, per_channel=True),
                         self.table(self.freqs_sin_channels, grid, per_channel=True))
        self._cache = (grid, buffers, rope)
        return rope


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (weights upcast), returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class MLP(nn.Module):
    """linear_1 -> activation -> linear_2 (the timestep embedder and the text projection)."""

    def __init__(self, in_dim: int, out_dim: int, act: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.act = act
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class ImageEmbedding(nn.Module):
    """CLIP tokens (B, L_img, image_dim) -> (B, L_img, C): fp32 LayerNorm, exact-GELU MLP of hidden width
    image_dim, fp32 LayerNorm (Diffusers' WanImageEmbedding; both norms stay float32 under bf16, by their names)."""

    def __init__(self, image_dim: int, dim: int) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(image_dim)  # eps 1e-5, affine: nn.LayerNorm's defaults, as Diffusers builds it
        self.ff = FeedForward(image_dim, image_dim, dim, approximate="none")
        self.norm2 = FP32LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.ff(self.norm1(x)))


class ConditionEmbedder(nn.Module):
    """Timestep -> (temb (B, C), per-block modulation (B, 6, C)); text (B, L, text_dim) -> (B, L, C); image tokens
    (B, L_img, image_dim) -> (B, L_img, C) when the model has an image path."""

    def __init__(self, dim: int, freq_dim: int, text_dim: int, image_dim: int | None = None) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = MLP(freq_dim, dim, F.silu)
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = MLP(text_dim, dim, gelu_tanh)
        self.image_embedder = ImageEmbedding(image_dim, dim) if image_dim is not None else None

    def forward(
        self, timestep: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        freqs = timestep_embedding(timestep, self.freq_dim)  # (B, freq_dim) float32, cos first
        freqs = freqs.to(self.time_embedder.linear_1.weight.dtype)  # float32 unless cast to full half precision
        temb = self.time_embedder(freqs).type_as(text)  # (B, C) in the activation dtype
        modulation = self.time_proj(F.silu(temb)).unflatten(1, (6, -1))  # (B, 6, C)
        image_context = None
        if image is not None:
            if self.image_embedder is None:
                raise ValueError("image tokens given to a Wan DiT without an image path (image_dim is null)")
            image_context = self.image_embedder(image)
        return temb, modulation, self.text_embedder(text), image_context


class Attend(nn.Module):
    """The attention kernel call as a parameter-free module, so sequence parallelism can wrap it (Ulysses)."""

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return attention(q, k, v, attn_mask=attn_mask)  # (B, H, Lq, D)


class WanAttention(nn.Module):
    """Multi-head attention with RMSNorm of q and k across all heads (over H*D channels), then to_out.

    Self-attention when `context` is None (with RoPE), cross-attention to `context` otherwise. The head count is
    read from the projection width, so tensor parallelism (which shards q/k/v by heads) needs no other change.
    """

    def __init__(self, dim: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.core = Attend()
        self.fused_qkv = FusedLinears()  # self-attention: to_q, to_k, to_v of x as one GEMM (per rank under TP)
        self.fused_kv = FusedLinears()  # cross-attention: to_k, to_v of the context as one GEMM

    def attend(self, core: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, L, H, D), k and v (B, Lk, H, D) -> (B, L, H*D) in q's dtype, through the attention `core`."""
        out = core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, L, D)
        return out.transpose(1, 2).flatten(2, 3).type_as(q)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, rope: WanRotary | None = None
    ) -> torch.Tensor:
        """x (B, L, C), context (B, L_txt, C) or None -> (B, L, C)."""
        if context is None:
            q, k, v = self.fused_qkv(x, (self.to_q, self.to_k, self.to_v))
        else:
            q, (k, v) = self.to_q(x), self.fused_kv(context, (self.to_k, self.to_v))
        q = self.norm_q(q).unflatten(2, (-1, self.head_dim))  # (B, L, H, D)
        k = self.norm_k(k).unflatten(2, (-1, self.head_dim))  # (B, Lk, H, D)
        v = v.unflatten(2, (-1, self.head_dim))
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        return self.to_out[0](self.attend(self.core, q, k, v))


class WanImageCrossAttention(WanAttention):
    """Cross-attention to the text and, from the same queries, to the image tokens (Wan 2.1 I2V).

    The image keys and values come from their own projections (`add_k_proj`, `add_v_proj`; RMSNorm across heads on
    the keys, `norm_added_k`); both attention results are summed before `to_out`. Each context is attended whole
    on every rank under sequence parallelism: neither `core` nor `image_core` is a Ulysses exchange (the image and
    text contexts are not sharded, and sending them through the all-to-all is a known shipped bug).
    """

    def __init__(self, dim: int, head_dim: int, eps: float, added_kv_dim: int) -> None:
        super().__init__(dim, head_dim, eps)
        self.add_k_proj = nn.Linear(added_kv_dim, dim)
        self.add_v_proj = nn.Linear(added_kv_dim, dim)
        self.norm_added_k = nn.RMSNorm(dim, eps=eps)
        self.image_core = Attend()
        self.fused_added_kv = FusedLinears()  # add_k_proj, add_v_proj of the image tokens as one GEMM

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, context: torch.Tensor, image_context: torch.Tensor
    ) -> torch.Tensor:
        """x (B, L, C), context (B, L_txt, C), image_context (B, L_img, C) -> (B, L, C)."""
        q = self.norm_q(self.to_q(x)).unflatten(2, (-1, self.head_dim))  # (B, L, H, D)
        k, v = self.fused_kv(context, (self.to_k, self.to_v))
        k = self.norm_k(k).unflatten(2, (-1, self.head_dim))  # (B, L_txt, H, D)
        v = v.unflatten(2, (-1, self.head_dim))
        k_img, v_img = self.fused_added_kv(image_context, (self.add_k_proj, self.add_v_proj))
        k_img = self.norm_added_k(k_img).unflatten(2, (-1, self.head_dim))  # (B, L_img, H, D)
        v_img = v_img.unflatten(2, (-1, self.head_dim))
        image_out = self.attend(self.image_core, q, k_img, v_img)  # (B, L, H*D)
        return self.to_out[0](self.attend(self.core, q, k, v) + image_out)


class GeluProj(nn.Module):
    """Linear then GELU (`ffn.net.0`): tanh-approximated in the blocks, exact in the image embedder."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "tanh") -> None:
        super().__init__()
        self.approximate = approximate
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """GELU MLP dim -> hidden -> out_dim (default dim); `net.1` is a parameter-free slot (Diffusers' dropout) so
    names match `net.2`."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, approximate: str = "tanh") -> None:
        super().__init__()
        self.net = nn.Sequential(GeluProj(dim, hidden, approximate), nn.Identity(), nn.Linear(hidden, out_dim or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class WanBlock(nn.Module):
    """Modulated self-attention, (optionally normed) cross-attention, modulated FFN; gated residuals in fp32."""

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        dim, eps = config.inner_dim, config.eps
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, config.attention_head_dim, eps)
        self.attn2 = (
            WanImageCrossAttention(dim, config.attention_head_dim, eps, config.added_kv_proj_dim)
            if config.added_kv_proj_dim is not None
            else WanAttention(dim, config.attention_head_dim, eps)
        )
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, config.ffn_dim)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, modulation: torch.Tensor, rope: WanRotary,
        image_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, C), context (B, L_txt, C), modulation (B, 6, C), image_context (B, L_img, C) for an I2V block
        -> x (B, L, C)."""
        mod = (self.scale_shift_table + modulation.float()).chunk(6, dim=1)  # 6 x (B, 1, C) float32
        shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = mod

        h = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        x = (x.float() + self.attn1(h, rope=rope) * gate).type_as(x)

        h = self.norm2(x.float()).type_as(x)
        x = x + (self.attn2(h, context) if image_context is None else self.attn2(h, context, image_context))

        h = (self.norm3(x.float()) * (1 + ffn_scale) + ffn_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * ffn_gate).type_as(x)


class WanTransformer3DModel(nn.Module):
    """The Wan 2.1 denoiser on latent video; parameter names equal Diffusers' state-dict keys.

    `from_config` builds a `WanImageTransformer3DModel` for a config with an image path (its parallel plans
    differ); this class itself is the text-to-video model.
    """

    supports_image_context: ClassVar[bool] = False

    # Tensor parallelism: heads split across ranks (q/k/v column-parallel, out-projection row-parallel with an
    # all-reduce), q/k RMSNorm over all heads via an all-reduced sum of squares, FFN in/out column/row-parallel.
    _tp_plan: ClassVar[dict[str, Any]] = {
        "blocks.*.attn*.to_q": Colwise(),
        "blocks.*.attn*.to_k": Colwise(),
        "blocks.*.attn*.to_v": Colwise(),
        "blocks.*.attn*.norm_q": HeadShardedRMSNorm(),
        "blocks.*.attn*.norm_k": HeadShardedRMSNorm(),
        "blocks.*.attn*.to_out.0": Rowwise(),
        "blocks.*.ffn.net.0.proj": Colwise(),
        "blocks.*.ffn.net.2": Rowwise(),
    }
    # Sequence parallelism (Ulysses): image tokens and their rotary tables split (padded) across ranks before the
    # first block, self-attention exchanges sequence <-> heads by all-to-all, the text (cross-attention keys and
    # values) stays whole on every rank, and the output tokens are gathered (padding stripped) after proj_out.
    _sp_plan: ClassVar[dict[str, Any]] = {
        "rope": SplitOutput(dim=0),
        "blocks.0": SplitInput(arg=0, dim=1),
        "blocks.*.attn1.core": Ulysses(),
        "proj_out": GatherOutput(dim=1),
    }

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        config.validate()
        if config.has_image_context != self.supports_image_context:
            raise ValueError(
                f"{type(self).__name__} cannot be built from a config with image_dim={config.image_dim}: "
                "use WanTransformer3DModel.from_config, which picks the class with the matching parallel plans"
            )
        self.config = config
        dim = config.inner_dim
        self.rope = WanRotaryPosEmbed(config.rope_axes, config.rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, config.patch_size, stride=config.patch_size)
        self.condition_embedder = ConditionEmbedder(dim, config.freq_dim, config.text_dim, config.image_dim)
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.norm_out = FP32LayerNorm(dim, config.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, config.output_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> WanTransformer3DModel:
        """Build from Diffusers' transformer config.json (raises ValueError for unsupported settings): a
        `WanImageTransformer3DModel` when the config has an image path, else a `WanTransformer3DModel`."""
        parsed = WanConfig.from_dict(config)
        return (WanImageTransformer3DModel if parsed.has_image_context else WanTransformer3DModel)(parsed)

    def check_parallel(self, tp: int, sp: int) -> None:
        """Raise ValueError when the heads cannot be split tp ways, then sp ways (Ulysses) within a TP shard."""
        heads = self.config.num_attention_heads
        if heads % tp:
            raise ValueError(f"num_attention_heads={heads} does not divide by tensor-parallel size {tp}")
        if (heads // tp) % sp:
            raise ValueError(
                f"num_attention_heads={heads} / tp={tp} = {heads // tp} heads per rank do not divide by "
                f"sequence-parallel size {sp} (Ulysses splits heads)"
            )
        if self.config.ffn_dim % tp:
            raise ValueError(f"ffn_dim={self.config.ffn_dim} does not divide by tensor-parallel size {tp}")

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> WanTransformer3DModel:
        """Cast as nn.Module does, but keep Diffusers' fp32 modules in float32 under a half-precision cast.

        Diffusers loads those tensors in float32 whatever `torch_dtype` says; the originals (not a rounded copy)
        are restored, so bf16 parity sees the same float32 values.
        """
        tensors = chain(self.named_parameters(), self.named_buffers())
        kept = {
            name: t.detach()  # a new handle on the float32 storage, which the cast below leaves intact
            for name, t in tensors
            if t.dtype == torch.float32 and KEEP_FP32_COMPONENTS.intersection(name.split("."))
        }
        super()._apply(fn, recurse)
        for name, original in kept.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = self.get_submodule(owner_name)
            if leaf in owner._parameters:
                param = owner._parameters[leaf]
                if param is not None and param.dtype in HALF_DTYPES:
                    param.data = original.to(param.device)
            elif owner._buffers.get(leaf) is not None and owner._buffers[leaf].dtype in HALF_DTYPES:
                owner._buffers[leaf] = original.to(owner._buffers[leaf].device)
        return self

    def token_grid(self, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        """(frames, rows, columns) of patches; the latent must divide by the patch size (no silent cropping)."""
        if hidden_states.ndim != 5 or hidden_states.shape[1] != self.config.in_channels:
            raise ValueError(
                f"hidden_states must be (B, {self.config.in_channels}, T, H, W), got {tuple(hidden_states.shape)}"
            )
        sizes = tuple(hidden_states.shape[2:])
        if any(s % p for s, p in zip(sizes, self.config.patch_size, strict=True)):
            raise ValueError(
                f"latent (T, H, W)={sizes} does not divide by patch_size={list(self.config.patch_size)}"
            )
        f, h, w = (s // p for s, p in zip(sizes, self.config.patch_size, strict=True))
        return f, h, w

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, f*h*w, pt*ph*pw*C) -> (B, C, f*pt, h*ph, w*pw)."""
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, -1)  # (B, f, h, w, pt, ph, pw, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, f, pt, h, ph, w, pw)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def check_image_context(self, image: torch.Tensor | None, batch: int) -> None:
        """The image tokens must be given to an image-path model, as (B, L_img, image_dim), and only to it."""
        if image is None:
            if self.config.has_image_context:
                raise ValueError(f"this Wan DiT has an image path (image_dim={self.config.image_dim}): "
                                 "encoder_hidden_states_image (B, L_img, image_dim) is required")
            return
        if not self.config.has_image_context:
            raise ValueError("encoder_hidden_states_image given to a Wan DiT without an image path (image_dim null)")
        if image.ndim != 3 or image.shape[0] != batch or image.shape[2] != self.config.image_dim:
            raise ValueError(f"encoder_hidden_states_image must be ({batch}, L_img, {self.config.image_dim}), "
                             f"got {tuple(image.shape)}")

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity of a latent video.

        hidden_states (B, in_channels, T, H, W) in the model dtype (for I2V: the noisy latents, the 4 mask
        channels and the conditioning latents, concatenated); timestep (B,) on the 0..1000 scale, as WanPipeline
        passes it (`t.expand(B)`; Wan 2.2's per-token (B, L) timesteps are not supported); encoder_hidden_states
        (B, L_txt, text_dim); encoder_hidden_states_image (B, L_img, image_dim), the CLIP tokens, for (and only
        for) a model with an image path. Returns (B, out_channels, T, H, W) in the model dtype.
        """
        grid = self.token_grid(hidden_states)
        batch = hidden_states.shape[0]
        if timestep.shape != (batch,):
            raise ValueError(f"timestep must be (B,) = ({batch},), got {tuple(timestep.shape)} (Wan 2.1 T2V only)")
        text_shape = encoder_hidden_states.shape
        if encoder_hidden_states.ndim != 3 or text_shape[0] != batch or text_shape[2] != self.config.text_dim:
            raise ValueError(
                f"encoder_hidden_states must be ({batch}, L, {self.config.text_dim}), got {tuple(text_shape)}"
            )
        self.check_image_context(encoder_hidden_states_image, batch)

        rope = self.rope(grid)  # (L, 1, D/2) tables
        x = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()  # (B, L, C)
        temb, modulation, context, image_context = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image
        )
        if image_context is not None:
            # Diffusers concatenates (image, text) and its attention slices them apart again; slices of one tensor
            # take another CPU bf16 matmul path than separate tensors, so the same layout keeps bf16 bit-equal.
            joint = torch.cat([image_context, context], dim=1)  # (B, L_img + L_txt, C)
            image_context, context = joint[:, : image_context.shape[1]], joint[:, image_context.shape[1] :]

        for block in self.blocks:
            x = block(x, context, modulation, rope, image_context)

        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)  # (B, 1, C) float32 each
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        return self.unpatchify(self.proj_out(x), grid)  # (B, C_out, T, H, W)


class WanImageTransformer3DModel(WanTransformer3DModel):
    """The Wan 2.1 image-to-video DiT: the same model with the image path built (by `from_config`).

    Its tensor-parallel plan also splits the added image key/value projections by heads (and their across-heads
    RMSNorm), like the text ones. Its sequence-parallel plan is the text-to-video one: the image path is
    token-wise for the (sharded) queries and attends to the whole image context on every rank, so nothing of it
    passes through the Ulysses all-to-all (which only exchanges self-attention's q, k, v).
    """

    supports_image_context: ClassVar[bool] = True
    _tp_plan: ClassVar[dict[str, Any]] = {
        **WanTransformer3DModel._tp_plan,
        "blocks.*.attn2.add_k_proj": Colwise(),
        "blocks.*.attn2.add_v_proj": Colwise(),
        "blocks.*.attn2.norm_added_k": HeadShardedRMSNorm(),
    }
