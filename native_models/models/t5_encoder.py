"""Native T5 and UMT5 encoders, numerically matching transformers' `T5EncoderModel` / `UMT5EncoderModel` (their
default SDPA attention path).

Diffusers pipelines (SD3, Flux, PixArt, DeepFloyd IF...) encode prompts with the T5 v1.1 encoder: a shared token
embedding, pre-norm blocks with RMS "T5 LayerNorm", unscaled attention whose scores get a learned relative
position bias (computed by the first block, reused by the others), a (gated) feed-forward, and a final norm.
Wan 2.1 uses UMT5 (google/umt5-xxl): the same blocks, except that *every* block owns its relative-bias table
(`encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias`) and computes its own bias.

Half-precision details follow transformers, because prompt embeddings feed every denoising step:
- T5 LayerNorm accumulates the variance in fp32 and casts back to the weight dtype only for fp16/bf16 weights;
- `wo` stays fp32 when the model is cast to fp16 (transformers' `_keep_in_fp32_modules`, applied by
  `from_pretrained(dtype=float16)` only, not for bf16); activations are cast to `wo`'s dtype before it, so the
  residual stream becomes fp32 after the first feed-forward, exactly as in transformers;
- fp16 hidden states are clamped after each sub-layer, with transformers' inf-dependent bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from native_models.attention import attention
from native_models.models.clip_text import ACTIVATIONS, config_float, config_int

T5_ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu")

# transformers' config defaults per model_type, used for keys a config.json leaves out (T5Config / UMT5Config).
_T5_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_heads": 8,
    "feed_forward_proj": "relu",
}  # fmt: skip
_MT5_DEFAULTS = {**_T5_DEFAULTS, "vocab_size": 250112, "d_ff": 1024, "num_layers": 8, "num_heads": 6,
                 "feed_forward_proj": "gated-gelu"}  # fmt: skip
CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {"t5": _T5_DEFAULTS, "mt5": _MT5_DEFAULTS, "umt5": _MT5_DEFAULTS}


def check_token_inputs(input_ids: Tensor, attention_mask: Tensor | None) -> None:
    """One-line ValueErrors for what a text encoder cannot take: input_ids not a non-empty (batch, length)
    integer tensor, or a mask of another shape (shared by the T5/UMT5 and Qwen text encoders)."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a non-empty (batch, length) tensor, got {shape}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if attention_mask is not None and (
        not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape
    ):
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask)
        raise ValueError(f"attention_mask must match input_ids {tuple(input_ids.shape)}, got {shape}")


@dataclass(frozen=True)
class T5EncoderHParams:
    """Hyper-parameters read from a transformers `T5Config` config.json (defaults are transformers')."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    num_buckets: int
    max_distance: int
    layer_norm_eps: float
    gated: bool
    act: str
    tie_last_hidden_states: bool
    bias_per_layer: bool = False  # UMT5: every block has its own relative-bias table

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_config(cls, config: dict[str, Any], model_types: tuple[str, ...] = ("t5", "mt5")) -> T5EncoderHParams:
        """Parse a config.json; `model_types` are the ones the calling class accepts ('umt5' turns on
        per-layer relative bias)."""
        model_type = config.get("model_type", model_types[0])
        if model_type not in model_types:
            allowed = " or ".join(repr(t) for t in model_types)
            raise ValueError(f"config 'model_type' must be {allowed}, got {model_type!r}")
        hp = cls._parse(config, CONFIG_DEFAULTS[model_type])
        return dataclasses.replace(hp, bias_per_layer=model_type == "umt5")

    @classmethod
    def _parse(cls, config: dict[str, Any], defaults: dict[str, Any]) -> T5EncoderHParams:
        if config.get("is_decoder", False):
            raise ValueError(f"config 'is_decoder' is {config['is_decoder']!r}; only the T5 encoder is supported")
        proj = config.get("feed_forward_proj", defaults["feed_forward_proj"])
        parts = proj.split("-") if isinstance(proj, str) else []
        if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"config 'feed_forward_proj' must be '<act>' or 'gated-<act>', got {proj!r}")
        # transformers derives these from feed_forward_proj ('gated-gelu' means gelu_new), but values saved in
        # config.json override the derived ones when the config is loaded; do the same.
        gated = config.get("is_gated_act", len(parts) == 2)
        act = config.get("dense_act_fn", "gelu_new" if proj == "gated-gelu" else parts[-1])
        if not isinstance(gated, bool):
            raise ValueError(f"config 'is_gated_act' must be a boolean, got {gated!r}")
        if act not in T5_ACTIVATIONS:
            raise ValueError(f"config 'dense_act_fn' {act!r} (from feed_forward_proj {proj!r}) is not supported")
        tie_last = config.get("tie_last_hidden_states", True)
        if not isinstance(tie_last, bool):
            raise ValueError(f"config 'tie_last_hidden_states' must be a boolean, got {tie_last!r}")
        hp = cls(
            vocab_size=config_int(config, "vocab_size", defaults["vocab_size"]),
            d_model=config_int(config, "d_model", defaults["d_model"]),
            d_kv=config_int(config, "d_kv", defaults["d_kv"]),
            d_ff=config_int(config, "d_ff", defaults["d_ff"]),
            num_layers=config_int(config, "num_layers", defaults["num_layers"]),
            num_heads=config_int(config, "num_heads", defaults["num_heads"]),
            num_buckets=config_int(config, "relative_attention_num_buckets", 32, minimum=4),
            max_distance=config_int(config, "relative_attention_max_distance", 128),
            layer_norm_eps=config_float(config, "layer_norm_epsilon", 1e-6),
            gated=gated,
            act=act,
            tie_last_hidden_states=tie_last,
        )
        # Bidirectional buckets: half per direction, half of those exact; log-spacing needs max_distance beyond.
        if hp.max_distance <= hp.num_buckets // 4:
            raise ValueError(
                f"config 'relative_attention_max_distance' ({hp.max_distance}) must exceed "
                f"relative_attention_num_buckets // 4 ({hp.num_buckets // 4})"
            )
        return hp


@dataclass
class T5EncoderOutput:
    """What `T5EncoderModel` returns (transformers' field names)."""

    last_hidden_state: Tensor  # (B, L, C), after the final norm
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings + each block's output (last one normed), (B, L, C)


def relative_position_bucket(relative_position: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional T5 bucket of `key - query` offsets (any shape, int64).

    Half the buckets are for keys after the query; within each half, small distances get one bucket each and
    larger ones log-spaced buckets up to `max_distance`, beyond which they share the last. Same float ops in the
    same order as transformers, so the bucket boundaries cannot round differently.
    """
    half = num_buckets // 2
    bucket = (relative_position > 0).to(torch.long) * half
    distance = relative_position.abs()
    max_exact = half // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (half - max_exact)).to(torch.long)  # log(0) rows are discarded by is_small
    large = torch.clamp(large, max=half - 1)
    return bucket + torch.where(is_small, distance, large)


class T5LayerNorm(nn.Module):
    """RMS norm without mean or bias; the variance is accumulated in fp32 even for half inputs."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C)
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)  # (B, L, 1)
        x = x * torch.rsqrt(variance + self.eps)  # promotes to fp32
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


class T5Attention(nn.Module):
    """Multi-head self-attention without 1/sqrt(d) scaling; the first block also owns the position bias table."""

    def __init__(self, hp: T5EncoderHParams, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.hp = hp
        self.q = nn.Linear(hp.d_model, hp.inner_dim, bias=False)
        self.k = nn.Linear(hp.d_model, hp.inner_dim, bias=False)
        self.v = nn.Linear(hp.d_model, hp.inner_dim, bias=False)
        self.o = nn.Linear(hp.inner_dim, hp.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(hp.num_buckets, hp.num_heads)

    def compute_bias(self, length: int, device: torch.device) -> Tensor:  # -> (1, H, L, L)
        """Learned bias per head for every (query, key) pair, in the table's dtype."""
        positions = torch.arange(length, dtype=torch.long, device=device)
        relative = positions[None, :] - positions[:, None]  # (L, L): key - query
        buckets = relative_position_bucket(relative, self.hp.num_buckets, self.hp.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # (L, L, H) -> (1, H, L, L)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:  # (B, L, C), bias (B|1, H, L, L) -> (B, L, C)
        b, length, _ = x.shape

        def heads(t: Tensor) -> Tensor:  # (B, L, H * D) -> (B, H, L, D)
            return t.view(b, length, self.hp.num_heads, self.hp.d_kv).transpose(1, 2)

        out = attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), attn_mask=bias, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(b, length, -1))  # (B, H, L, D) -> (B, L, H * D) -> (B, L, C)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, hp: T5EncoderHParams, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(hp, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(hp.d_model, hp.layer_norm_eps)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class KeptFP32Linear(nn.Linear):
    """A Linear that stays fp32 when the model is cast to fp16, like transformers' `_keep_in_fp32_modules`
    for T5's `wo` (its fp16 activations overflow there). Other casts (bf16, fp32, devices) apply normally."""

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> KeptFP32Linear:
        probe = fn(torch.zeros((), dtype=torch.float32, device=self.weight.device))
        if probe.dtype != torch.float16:
            return super()._apply(fn, recurse)
        return super()._apply(lambda t: t.to(device=probe.device, dtype=torch.float32), recurse)


class T5DenseActDense(nn.Module):
    """wo(act(wi(x))) for `feed_forward_proj` 'relu' (original T5)."""

    def __init__(self, hp: T5EncoderHParams) -> None:
        super().__init__()
        self.act = ACTIVATIONS[hp.act]
        self.wi = nn.Linear(hp.d_model, hp.d_ff, bias=False)
        self.wo = KeptFP32Linear(hp.d_ff, hp.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        h = self.act(self.wi(x))  # (B, L, F)
        return self.wo(h.to(self.wo.weight.dtype))


class T5DenseGatedActDense(nn.Module):
    """wo(act(wi_0(x)) * wi_1(x)) for `feed_forward_proj` 'gated-gelu' (T5 v1.1, the Diffusers encoders)."""

    def __init__(self, hp: T5EncoderHParams) -> None:
        super().__init__()
        self.act = ACTIVATIONS[hp.act]
        self.wi_0 = nn.Linear(hp.d_model, hp.d_ff, bias=False)
        self.wi_1 = nn.Linear(hp.d_model, hp.d_ff, bias=False)
        self.wo = KeptFP32Linear(hp.d_ff, hp.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        h = self.act(self.wi_0(x)) * self.wi_1(x)  # (B, L, F)
        return self.wo(h.to(self.wo.weight.dtype))


class T5LayerFF(nn.Module):
    def __init__(self, hp: T5EncoderHParams) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(hp) if hp.gated else T5DenseActDense(hp)
        self.layer_norm = T5LayerNorm(hp.d_model, hp.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


def clamp_fp16(x: Tensor) -> Tensor:
    """transformers' fp16 guard: clamp to the fp16 range, 1000 below it once anything overflowed to inf."""
    if x.dtype != torch.float16:
        return x
    big = torch.finfo(torch.float16).max
    bound = torch.where(torch.isinf(x).any(), big - 1000, big)
    return torch.clamp(x, min=-bound, max=bound)


class T5Block(nn.Module):
    def __init__(self, hp: T5EncoderHParams, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(hp, has_relative_attention_bias), T5LayerFF(hp)])

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        x = clamp_fp16(self.layer[0](x, bias))
        return clamp_fp16(self.layer[1](x))


class T5Stack(nn.Module):
    """The `encoder` sub-tree: blocks (T5: only block 0 has a relative bias table; UMT5: every block) and the
    final norm."""

    def __init__(self, hp: T5EncoderHParams) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            T5Block(hp, has_relative_attention_bias=hp.bias_per_layer or i == 0) for i in range(hp.num_layers)
        )
        self.final_layer_norm = T5LayerNorm(hp.d_model, hp.layer_norm_eps)


def masked_bias(bias: Tensor, keep: Tensor | None) -> Tensor:
    """Padded keys get the dtype's minimum in place of their bias (not added to it), as transformers' SDPA path
    builds the mask. bias (1, H, L, L), keep (B, 1, 1, L) bool or None -> (B|1, H, L, L), contiguous."""
    if keep is not None:
        bias = torch.where(keep, bias, torch.finfo(bias.dtype).min)
    return bias.contiguous()


class T5EncoderModel(nn.Module):
    """T5 encoder: `forward(input_ids, attention_mask)` gives per-token states (B, L, d_model)."""

    MODEL_TYPES: tuple[str, ...] = ("t5", "mt5")

    def __init__(self, hp: T5EncoderHParams) -> None:
        super().__init__()
        self.hp = hp
        self.shared = nn.Embedding(hp.vocab_size, hp.d_model)
        self.encoder = T5Stack(hp)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> T5EncoderModel:
        return cls(T5EncoderHParams.from_config(config, model_types=cls.MODEL_TYPES))

    def convert_checkpoint_keys(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """`encoder.embed_tokens.weight` is tied to `shared.weight` (transformers 5.x saves only the latter, some
        older files only the former or both); decoder / LM-head tensors of a full T5 checkpoint are ignored, as
        transformers' T5EncoderModel ignores them."""
        state = dict(state)
        embed = state.pop("encoder.embed_tokens.weight", None)
        if embed is not None and "shared.weight" not in state:
            state["shared.weight"] = embed
        return {key: value for key, value in state.items() if not key.startswith(("decoder.", "lm_head."))}

    def check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None) -> None:
        check_token_inputs(input_ids, attention_mask)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, output_hidden_states: bool = False
    ) -> T5EncoderOutput:
        """input_ids (B, L); attention_mask (B, L) with 1 = token, 0 = padding (keys only, as in transformers:
        padded positions still get outputs). hidden_states (when asked) end with the normed last state."""
        self.check_inputs(input_ids, attention_mask)
        x = self.shared(input_ids)  # (B, L, C)
        length = input_ids.shape[1]
        keep = None
        if attention_mask is not None:
            keep = attention_mask.to(device=x.device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, L)
        bias = None
        states = [x]
        for block in self.encoder.block:
            attn = block.layer[0].SelfAttention
            if bias is None or self.hp.bias_per_layer:  # T5: block 0's bias serves every block
                bias = masked_bias(attn.compute_bias(length, x.device), keep)  # (B|1, H, L, L)
            x = block(x, bias)
            states.append(x)
        last = self.encoder.final_layer_norm(x)
        if self.hp.tie_last_hidden_states:
            states[-1] = last
        return T5EncoderOutput(last, tuple(states) if output_hidden_states else None)


class UMT5EncoderModel(T5EncoderModel):
    """UMT5 encoder (Wan 2.1's text encoder): T5 with a relative-bias table in every block.

    Accepts only `model_type` 'umt5' configs, so a T5 checkpoint named as UMT5 (or the reverse) fails at config
    parsing rather than through a confusing key mismatch."""

    MODEL_TYPES = ("umt5",)


__all__ = ["T5EncoderHParams", "T5EncoderModel", "T5EncoderOutput", "UMT5EncoderModel", "relative_position_bucket"]
