"""Decoder-only Qwen LLMs as text encoders (Qwen2.5-VL's text path, Qwen3), matching transformers' SDPA path.

Diffusion pipelines of 2025 encode the prompt with a chat LLM and take one hidden state per token: Qwen-Image runs
`Qwen2_5_VLForConditionalGeneration` on a text-only prompt, Z-Image runs `Qwen3Model`. Both are the same decoder:
token embedding, pre-norm layers of [RMSNorm -> grouped-query attention with rotary positions under a causal (and
padding) mask -> residual, RMSNorm -> SwiGLU MLP -> residual], a final RMSNorm. What differs is configuration, kept
in `QwenLMConfig`:

| | Qwen2.5-VL text | Qwen3 |
|---|---|---|
| head_dim | hidden_size / num_attention_heads | its own `head_dim` key |
| q/k/v bias, o bias | yes, no | `attention_bias` for all four |
| per-head RMSNorm of q and k (before rotary) | no | yes |
| rotary | multimodal "mrope": channel sections take the temporal, height or width position row | 1D |
| default rope_theta | 1e6 | 1e4 |

Multimodal rotary on a text-only prompt: transformers builds position ids (3, B, L) from `arange(L)` for all three
rows (no image tokens, so `get_rope_index` is never reached and no rope delta exists). Every channel section then
reads the same positions, so the recomposed table equals plain 1D rotary. `mrope_tables` still computes what the
reference computes (three rows, sections recomposed), so a section list that does not cover the head or a row
mix-up cannot hide behind the text-only shortcut; the tests check both.

Precision follows transformers: RMSNorm normalises in fp32 and casts back before the weight multiply; the rotary
cos/sin tables are computed in fp32 and cast to the activation dtype, and the rotation itself runs in that dtype
(bf16 stays bf16, unlike the DiTs' fp32 rotation); attention is scaled by head_dim**-0.5 explicitly.

Positions are `arange(L)` whatever the mask says (transformers does not shift them for left padding), and the
attention mask is the causal mask AND the key padding mask, built only when a padding token is present (otherwise
the kernel's own causal flag, as transformers does).

Parameter names equal transformers' state-dict keys for each checkpoint class; the vision tower and the LM head
are never built (a text encoder takes a hidden state, never logits), so their tensors are dropped on load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from native_models.attention import attention
from native_models.models.clip_text import ACTIVATIONS, config_float, config_int
from native_models.models.t5_encoder import check_token_inputs

SUPPORTED_ACTIVATIONS = ("silu",)  # every Qwen LLM; anything else is refused rather than approximated


@dataclass(frozen=True)
class QwenLMConfig:
    """Hyper-parameters of the decoder, named as in transformers' config (one dataclass for every variant)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    mrope_section: tuple[int, ...] | None = None  # Qwen2.5-VL: channel pairs per (temporal, height, width) row
    hidden_act: str = "silu"

    @property
    def kv_groups(self) -> int:
        """Query heads sharing one key/value head (grouped-query attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    def validate(self) -> None:
        """Reject settings this implementation does not reproduce, naming the values."""
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even (rotary pairs channels)")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported (only {list(SUPPORTED_ACTIVATIONS)})")
        if self.mrope_section is not None:
            if len(self.mrope_section) != 3 or min(self.mrope_section) < 0:
                raise ValueError(f"mrope_section={list(self.mrope_section)} must be three non-negative ints")
            if sum(self.mrope_section) != self.head_dim // 2:
                raise ValueError(
                    f"mrope_section={list(self.mrope_section)} sums to {sum(self.mrope_section)}, but the head has "
                    f"{self.head_dim // 2} rotary pairs (head_dim={self.head_dim})"
                )


# transformers' defaults for keys a config.json leaves out (Qwen2_5_VLTextConfig / Qwen3Config).
_QWEN2_5_VL_DEFAULTS: dict[str, Any] = {
    "vocab_size": 152064, "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
    "num_attention_heads": 64, "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
}  # fmt: skip
_QWEN3_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
}  # fmt: skip


def _rope_settings(config: Mapping[str, Any], default_theta: float) -> tuple[float, tuple[int, ...] | None]:
    """(rope_theta, mrope_section) from transformers 5 `rope_parameters` or the legacy `rope_scaling`/`rope_theta`.

    Only the default (unscaled) rotary is reproduced; legacy Qwen2.5-VL configs call it type 'mrope'."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"config 'rope_parameters' must be an object, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(f"rope type {rope_type!r} is not supported (only the default rotary)")
    theta = params.get("rope_theta", config.get("rope_theta", default_theta))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 1:
        raise ValueError(f"config 'rope_theta' must be a number > 1, got {theta!r}")
    section = params.get("mrope_section")
    return float(theta), (tuple(int(s) for s in section) if section is not None else None)


def _check_full_attention(config: Mapping[str, Any]) -> None:
    """Sliding-window layers are not reproduced: refuse a config that would use them."""
    sliding = [i for i, kind in enumerate(config.get("layer_types") or []) if kind != "full_attention"]
    if sliding or config.get("use_sliding_window", False):
        raise ValueError(f"sliding-window attention is not supported (use_sliding_window="
                         f"{config.get('use_sliding_window', False)}, non-full layers {sliding[:4]})")


def _common(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    values = {
        key: config_int(dict(config), key, defaults[key])
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    }
    kv = config.get("num_key_value_heads", defaults["num_key_value_heads"])
    kv = values["num_attention_heads"] if kv is None else kv  # transformers: None means one k/v head per query head
    values["num_key_value_heads"] = config_int({"num_key_value_heads": kv}, "num_key_value_heads")
    values["rms_norm_eps"] = config_float(dict(config), "rms_norm_eps", defaults["rms_norm_eps"])
    values["hidden_act"] = config.get("hidden_act", "silu")
    _check_full_attention(config)
    return values


def qwen2_5_vl_text_config(config: Mapping[str, Any]) -> QwenLMConfig:
    """The text decoder of a `Qwen2_5_VLConfig` config.json: `text_config` when present (transformers 5 and
    recent 4.x files), else the top-level keys (older files keep the text settings there)."""
    model_type = config.get("model_type", "qwen2_5_vl")
    if model_type not in ("qwen2_5_vl", "qwen2_5_vl_text"):
        raise ValueError(f"config 'model_type' must be 'qwen2_5_vl', got {model_type!r}")
    text = config.get("text_config") or config
    if not isinstance(text, Mapping):
        raise ValueError(f"config 'text_config' must be an object, got {type(text).__name__}")
    values = _common(text, _QWEN2_5_VL_DEFAULTS)
    theta, section = _rope_settings(text, _QWEN2_5_VL_DEFAULTS["rope_theta"])
    heads, hidden = values["num_attention_heads"], values["hidden_size"]
    if hidden % heads:
        raise ValueError(f"hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    head_dim = hidden // heads
    if text.get("head_dim") not in (None, head_dim):  # the rotary would read it, the projections would not
        raise ValueError(f"config 'head_dim'={text['head_dim']} differs from hidden_size / heads = {head_dim}")
    result = QwenLMConfig(**values, head_dim=head_dim, rope_theta=theta, qkv_bias=True, o_bias=False,
                          qk_norm=False, mrope_section=section or (16, 24, 24))  # fmt: skip
    result.validate()
    return result


def qwen3_config(config: Mapping[str, Any]) -> QwenLMConfig:
    """A `Qwen3Config` config.json."""
    model_type = config.get("model_type", "qwen3")
    if model_type != "qwen3":
        raise ValueError(f"config 'model_type' must be 'qwen3', got {model_type!r}")
    values = _common(config, _QWEN3_DEFAULTS)
    theta, section = _rope_settings(config, _QWEN3_DEFAULTS["rope_theta"])
    if section is not None:
        raise ValueError(f"Qwen3 has 1D rotary, but the config gives mrope_section={list(section)}")
    bias = config.get("attention_bias", False)
    if not isinstance(bias, bool):
        raise ValueError(f"config 'attention_bias' must be a boolean, got {bias!r}")
    head_dim = config_int(dict(config), "head_dim", _QWEN3_DEFAULTS["head_dim"])
    result = QwenLMConfig(**values, head_dim=head_dim, rope_theta=theta, qkv_bias=bias, o_bias=bias, qk_norm=True)
    result.validate()
    return result


@dataclass
class QwenLMOutput:
    """What transformers returns (its field names)."""

    last_hidden_state: Tensor  # (B, L, C), after the final norm
    # embeddings, then each layer's output with the last one replaced by the final-normed state (transformers'
    # `hidden_states`: num_hidden_layers + 1 entries), when asked for
    hidden_states: tuple[Tensor, ...] | None = None


class QwenRMSNorm(nn.Module):
    """x / rms(x) computed in fp32, cast back to x's dtype, then times the weight (transformers' order)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.compute_dtype = torch.float32  # instance attribute: the precision the normalisation runs in (a seam)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(self.compute_dtype)
        variance = xf.pow(2).mean(-1, keepdim=True)
        return self.weight * (xf * torch.rsqrt(variance + self.eps)).to(x.dtype)


def inverse_frequencies(head_dim: int, theta: float) -> Tensor:
    """theta^(-2i/head_dim) in fp32, (head_dim/2,): transformers' default rotary, op for op."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def mrope_tables(
    position_ids: Tensor, inv_freq: Tensor, sections: tuple[int, ...] | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos and sin (B, L, head_dim) in `dtype`, split-half layout, for position ids (3, B, L) (or (B, L) for 1D).

    With `sections`, channel-pair section i takes its angles from position row i % 3 (temporal, height, width),
    as transformers' Qwen2.5-VL recomposes them; without, the single row is used for every pair."""
    rows = position_ids[None] if position_ids.ndim == 2 else position_ids  # (R, B, L)
    freqs = rows[..., None].float() * inv_freq.to(device=rows.device, dtype=torch.float32)  # (R, B, L, D/2)
    cos, sin = freqs.cos(), freqs.sin()
    if sections is not None:
        if rows.shape[0] != 3:
            raise ValueError(f"multimodal rotary needs 3 position rows, got {tuple(position_ids.shape)}")
        cos = torch.cat([part[i % 3] for i, part in enumerate(cos.split(list(sections), dim=-1))], dim=-1)
        sin = torch.cat([part[i % 3] for i, part in enumerate(sin.split(list(sections), dim=-1))], dim=-1)
    else:
        cos, sin = cos[0], sin[0]
    return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((sin, sin), dim=-1).to(dtype)  # (B, L, D)


def rotate_half(x: Tensor) -> Tensor:
    """(a, b) halves -> (-b, a): the split-half ("NeoX") pairing of channel i with i + D/2."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, L, D) by cos/sin (B, L, D), in x's dtype (as transformers does, bf16 included)."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, L, D)
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """(B, H_kv, L, D) -> (B, H_kv * groups, L, D): each key/value head serves `groups` consecutive query heads."""
    if groups == 1:
        return x
    b, h, length, d = x.shape
    return x[:, :, None].expand(b, h, groups, length, d).reshape(b, h * groups, length, d)


class QwenAttention(nn.Module):
    """Grouped-query causal self-attention; Qwen3 normalises q and k per head before the rotary."""

    def __init__(self, config: QwenLMConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config, config.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * d, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * d, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * d, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_attention_heads * d, c.hidden_size, bias=c.o_bias)
        if c.qk_norm:
            self.q_norm = QwenRMSNorm(d, c.rms_norm_eps)
            self.k_norm = QwenRMSNorm(d, c.rms_norm_eps)
        self.expand_kv: Callable[[Tensor, int], Tensor] = repeat_kv  # instance attribute: how k/v heads are shared

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
        """x (B, L, C); rotary cos/sin (B, L, D); mask (B, 1, L, L) bool or None for plain causal -> (B, L, C)."""
        b, length, _ = x.shape
        d = self.config.head_dim
        q = self.q_proj(x).view(b, length, -1, d)  # (B, L, H, D)
        k = self.k_proj(x).view(b, length, -1, d)  # (B, L, H_kv, D)
        v = self.v_proj(x).view(b, length, -1, d).transpose(1, 2)  # (B, H_kv, L, D)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q.transpose(1, 2), *rotary)  # (B, H, L, D)
        k = apply_rotary(k.transpose(1, 2), *rotary)  # (B, H_kv, L, D)
        groups = self.config.kv_groups
        k, v = self.expand_kv(k, groups), self.expand_kv(v, groups)  # (B, H, L, D)
        out = attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=d**-0.5)  # (B, H, L, D)
        return self.o_proj(out.transpose(1, 2).reshape(b, length, -1))


class QwenMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: QwenLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act: Callable[[Tensor], Tensor] = ACTIVATIONS[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class QwenDecoderLayer(nn.Module):
    def __init__(self, config: QwenLMConfig) -> None:
        super().__init__()
        self.self_attn = QwenAttention(config)
        self.mlp = QwenMLP(config)
        self.input_layernorm = QwenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = QwenRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:  # (B, L, C)
        x = x + self.self_attn(self.input_layernorm(x), rotary, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def causal_padding_mask(attention_mask: Tensor | None, length: int) -> Tensor | None:
    """(B, 1, L, L) bool: query i sees key j <= i that is not padding; None when nothing is padded (then the
    kernel's causal flag does it, as transformers chooses). Fully padded query rows stay all-False; the attention
    kernel returns zeros for them, as for the reference."""
    if attention_mask is None:
        return None
    keep = attention_mask.to(torch.bool)
    if bool(keep.all()):
        return None
    positions = torch.arange(length, device=keep.device)
    causal = positions[None, :] <= positions[:, None]  # (L, L): key index <= query index
    return causal[None, None] & keep[:, None, None, :]


class QwenTextModel(nn.Module):
    """The decoder stack: `embed_tokens`, `layers`, `norm` (transformers' `Qwen*Model` / `language_model`)."""

    def __init__(self, config: QwenLMConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(QwenDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = QwenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.register_buffer("inv_freq", inverse_frequencies(config.head_dim, config.rope_theta), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> QwenTextModel:
        """Cast as nn.Module does, but keep the rotary inverse frequencies in fp32 (transformers reads them as
        float32 whatever the model dtype; rounding them to bf16 would move every angle)."""
        inv_freq = self.inv_freq
        super()._apply(fn, recurse)
        self.inv_freq = inv_freq.to(self.inv_freq.device)
        return self

    def check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None) -> None:
        check_token_inputs(input_ids, attention_mask)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, output_hidden_states: bool = False,
        num_layers: int | None = None,
    ) -> QwenLMOutput:  # fmt: skip
        """input_ids (B, L); attention_mask (B, L), 1/True = token, 0/False = padding (either side).

        `num_layers` < num_hidden_layers stops early: the result's last hidden state is then the un-normed output
        of that many layers (what `hidden_state` needs for an inner layer)."""
        self.check_inputs(input_ids, attention_mask)
        depth = len(self.layers) if num_layers is None else num_layers
        x = self.embed_tokens(input_ids)  # (B, L, C)
        length = input_ids.shape[1]
        positions = torch.arange(length, device=x.device)[None].expand(input_ids.shape[0], -1)  # (B, L)
        if self.config.mrope_section is not None:
            positions = positions[None].expand(3, -1, -1)  # (3, B, L): text-only, all rows equal
        rotary = mrope_tables(positions, self.inv_freq, self.config.mrope_section, x.dtype)
        mask = causal_padding_mask(attention_mask, length)
        if mask is not None:
            mask = mask.to(x.device)
        states = [x]
        for layer in self.layers[:depth]:
            x = layer(x, rotary, mask)
            states.append(x)
        if depth == len(self.layers):
            x = self.norm(x)
            states[-1] = x
        return QwenLMOutput(x, tuple(states) if output_hidden_states else None)


def select_hidden_state(model: QwenTextModel, input_ids: Tensor, attention_mask: Tensor | None, index: int) -> Tensor:
    """transformers' `hidden_states[index]` (0 = embeddings, -1 = the final-normed output), running only the layers
    that state needs: Z-Image's -2 skips the last layer, Qwen-Image's -1 runs them all."""
    count = len(model.layers) + 1
    if not -count <= index < count:
        raise ValueError(f"hidden state index {index} out of range for {count - 1} layers (+ embeddings)")
    return model(input_ids, attention_mask, num_layers=index % count).last_hidden_state


class QwenTextEncoder(nn.Module):
    """Base of the checkpoint classes that hold the decoder stack under a prefix (`model.`...): the encoder API."""

    DROPPED: ClassVar[tuple[str, ...]] = ()  # tensors of modules a text encoder never runs

    def text_model(self) -> QwenTextModel:
        raise NotImplementedError

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, output_hidden_states: bool = False
    ) -> QwenLMOutput:
        return self.text_model()(input_ids, attention_mask, output_hidden_states)

    def hidden_state(self, input_ids: Tensor, attention_mask: Tensor | None, index: int) -> Tensor:
        return select_hidden_state(self.text_model(), input_ids, attention_mask, index)

    def convert_checkpoint_keys(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in state.items() if not k.startswith(self.DROPPED)}


class _LanguageModelHolder(nn.Module):
    """`model.language_model`: where transformers 5 keeps Qwen2.5-VL's text decoder."""

    def __init__(self, config: QwenLMConfig) -> None:
        super().__init__()
        self.language_model = QwenTextModel(config)


class Qwen2_5_VLForConditionalGeneration(QwenTextEncoder):  # noqa: N801 - named after the transformers class
    """Qwen2.5-VL's text path (Qwen-Image's text encoder); the vision tower and LM head are not built."""

    DROPPED = ("model.visual.", "visual.", "lm_head.")

    def __init__(self, config: QwenLMConfig) -> None:
        super().__init__()
        self.model = _LanguageModelHolder(config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Qwen2_5_VLForConditionalGeneration:
        return cls(qwen2_5_vl_text_config(config))

    def text_model(self) -> QwenTextModel:
        return self.model.language_model

    def convert_checkpoint_keys(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Drop vision and LM-head tensors; accept the transformers 4.x layout (`model.layers...`, `visual...`)
        by moving the text decoder under `model.language_model.`, as transformers 5 does on load."""
        converted = {}
        for key, value in super().convert_checkpoint_keys(state).items():
            if key.startswith("model.") and not key.startswith("model.language_model."):
                key = "model.language_model." + key.removeprefix("model.")
            converted[key] = value
        return converted


class Qwen3Model(QwenTextModel):
    """Qwen3's decoder stack without head (Z-Image's text encoder): keys `embed_tokens.*`, `layers.*`, `norm.*`."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Qwen3Model:
        return cls(qwen3_config(config))

    def hidden_state(self, input_ids: Tensor, attention_mask: Tensor | None, index: int) -> Tensor:
        return select_hidden_state(self, input_ids, attention_mask, index)


class Qwen3ForCausalLM(QwenTextEncoder):
    """Qwen3 with its LM head (tied or stored) in the checkpoint; only the stack under `model.` is built."""

    DROPPED = ("lm_head.",)

    def __init__(self, config: QwenLMConfig) -> None:
        super().__init__()
        self.model = QwenTextModel(config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Qwen3ForCausalLM:
        return cls(qwen3_config(config))

    def text_model(self) -> QwenTextModel:
        return self.model


__all__ = [
    "QwenLMConfig", "QwenLMOutput", "QwenTextModel", "QwenTextEncoder", "Qwen2_5_VLForConditionalGeneration",
    "Qwen3Model", "Qwen3ForCausalLM", "qwen2_5_vl_text_config", "qwen3_config", "mrope_tables",
    "causal_padding_mask", "select_hidden_state",
]  # fmt: skip
