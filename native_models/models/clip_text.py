"""Native CLIP text encoder (the text tower of CLIP), numerically matching transformers' `CLIPTextModel`.

Diffusers pipelines (SD 1.x/2.x, SDXL, SD3, Flux) use it for prompt embeddings: token + learned position
embeddings, pre-LN transformer layers under a causal mask, a final LayerNorm, and a pooled vector taken at the
end-of-text token. `CLIPTextModelWithProjection` (SDXL's second encoder, SD3) adds a bias-free projection of it.

Parameter names are those of transformers 4.x checkpoints, as found in Diffusers pipeline folders
(`text_model.embeddings.token_embedding.weight`, ...). transformers 5.x writes `CLIPTextModel` without the
`text_model.` prefix; `convert_checkpoint_keys` accepts both layouts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from native_models.attention import attention


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


def gelu_new(x: Tensor) -> Tensor:
    """Tanh-approximated GELU spelled out term by term, as transformers' `gelu_new` does (F.gelu(approximate=
    'tanh') rounds differently in the last bit)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


# transformers' `hidden_act` / `dense_act_fn` names -> the same computation, op for op.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}

CLIP_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")


def config_int(config: dict[str, Any], key: str, default: int | None = None, minimum: int = 1) -> int:
    """An integer config entry (transformers' default when absent), rejected with its value when out of range."""
    value = config.get(key, default)
    if value is None:
        raise ValueError(f"config has no '{key}'")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"config '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def config_float(config: dict[str, Any], key: str, default: float) -> float:
    """A positive float config entry (transformers' default when absent or null)."""
    value = config.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"config '{key}' must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CLIPTextHParams:
    """Hyper-parameters read from a transformers `CLIPTextConfig` config.json (defaults are transformers')."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_positions: int
    hidden_act: str
    layer_norm_eps: float
    eos_token_id: int
    projection_dim: int | None  # only CLIPTextModelWithProjection uses it
    tie_last_hidden_states: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CLIPTextHParams:
        model_type = config.get("model_type", "clip_text_model")
        if model_type != "clip_text_model":
            raise ValueError(f"config 'model_type' must be 'clip_text_model', got {model_type!r}")
        hidden_act = config.get("hidden_act", "quick_gelu")
        if hidden_act not in CLIP_ACTIVATIONS:
            raise ValueError(f"config 'hidden_act' {hidden_act!r} is not supported (one of {CLIP_ACTIVATIONS})")
        eos = config.get("eos_token_id", 49407)
        if isinstance(eos, list) and len(eos) == 1:
            eos = eos[0]
        if isinstance(eos, bool) or not isinstance(eos, int):
            raise ValueError(f"config 'eos_token_id' must be one integer (it picks the pooled token), got {eos!r}")
        tie_last = config.get("tie_last_hidden_states", False)
        if not isinstance(tie_last, bool):
            raise ValueError(f"config 'tie_last_hidden_states' must be a boolean, got {tie_last!r}")
        projection_dim = config.get("projection_dim", 512)  # transformers allows null: no projection then
        hp = cls(
            vocab_size=config_int(config, "vocab_size", 49408),
            hidden_size=config_int(config, "hidden_size", 512),
            intermediate_size=config_int(config, "intermediate_size", 2048),
            num_layers=config_int(config, "num_hidden_layers", 12, minimum=0),
            num_heads=config_int(config, "num_attention_heads", 8),
            max_positions=config_int(config, "max_position_embeddings", 77),
            hidden_act=hidden_act,
            layer_norm_eps=config_float(config, "layer_norm_eps", 1e-5),
            eos_token_id=eos,
            projection_dim=None if projection_dim is None else config_int(config, "projection_dim", 512),
            tie_last_hidden_states=tie_last,
        )
        if hp.hidden_size % hp.num_heads:
            raise ValueError(
                f"config 'hidden_size' ({hp.hidden_size}) is not a multiple of 'num_attention_heads' ({hp.num_heads})"
            )
        return hp


@dataclass
class CLIPTextOutput:
    """What the CLIP text encoders return (transformers' field names)."""

    last_hidden_state: Tensor  # (B, L, C), after the final LayerNorm
    pooler_output: Tensor  # (B, C), last_hidden_state at the end-of-text token
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings + each layer's output, each (B, L, C)
    text_embeds: Tensor | None = None  # (B, P), only from CLIPTextModelWithProjection


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, hp: CLIPTextHParams) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(hp.vocab_size, hp.hidden_size)
        self.position_embedding = nn.Embedding(hp.max_positions, hp.hidden_size)

    def forward(self, input_ids: Tensor) -> Tensor:  # (B, L) -> (B, L, C)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]  # (1, L)
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with biased q/k/v/out projections."""

    def __init__(self, hp: CLIPTextHParams) -> None:
        super().__init__()
        self.num_heads = hp.num_heads
        self.head_dim = hp.head_dim
        self.q_proj = nn.Linear(hp.hidden_size, hp.hidden_size)
        self.k_proj = nn.Linear(hp.hidden_size, hp.hidden_size)
        self.v_proj = nn.Linear(hp.hidden_size, hp.hidden_size)
        self.out_proj = nn.Linear(hp.hidden_size, hp.hidden_size)
        self.is_causal = True  # CLIP's only mask (pipelines pass none); an attribute, as transformers has it

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        b, length, _ = x.shape

        def heads(t: Tensor) -> Tensor:  # (B, L, C) -> (B, H, L, D)
            return t.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        # The scale is passed explicitly, as transformers does, so every backend sees the same Python float.
        out = attention(q, k, v, is_causal=self.is_causal, scale=self.head_dim**-0.5)  # (B, H, L, D)
        return self.out_proj(out.transpose(1, 2).reshape(b, length, -1))


class CLIPMLP(nn.Module):
    def __init__(self, hp: CLIPTextHParams) -> None:
        super().__init__()
        self.act = ACTIVATIONS[hp.hidden_act]
        self.fc1 = nn.Linear(hp.hidden_size, hp.intermediate_size)
        self.fc2 = nn.Linear(hp.intermediate_size, hp.hidden_size)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, hp: CLIPTextHParams) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(hp)
        self.layer_norm1 = nn.LayerNorm(hp.hidden_size, eps=hp.layer_norm_eps)
        self.mlp = CLIPMLP(hp)
        self.layer_norm2 = nn.LayerNorm(hp.hidden_size, eps=hp.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, hp: CLIPTextHParams) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(hp) for _ in range(hp.num_layers))


class CLIPTextTransformer(nn.Module):
    """The `text_model` sub-tree of transformers 4.x (embeddings, encoder, final_layer_norm)."""

    def __init__(self, hp: CLIPTextHParams) -> None:
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(hp)
        self.encoder = CLIPEncoder(hp)
        self.final_layer_norm = nn.LayerNorm(hp.hidden_size, eps=hp.layer_norm_eps)


class CLIPTextModel(nn.Module):
    """CLIP text tower: `forward(input_ids)` gives per-token states and the pooled end-of-text state."""

    def __init__(self, hp: CLIPTextHParams) -> None:
        super().__init__()
        self.hp = hp
        self.text_model = CLIPTextTransformer(hp)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CLIPTextModel:
        return cls(CLIPTextHParams.from_config(config))

    def convert_checkpoint_keys(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Accept transformers 5.x `CLIPTextModel` files (no `text_model.` prefix) and drop the `position_ids`
        buffer that transformers < 4.31 saved; positions are recomputed here."""
        if not any(key.startswith("text_model.") for key in state):
            state = {f"text_model.{key}": value for key, value in state.items()}
        return {key: value for key, value in state.items() if key != "text_model.embeddings.position_ids"}

    def check_input_ids(self, input_ids: Tensor) -> None:
        """Reject what transformers would fail on (or silently mis-embed) with a message naming the value."""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, length) tensor, got {shape}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if not 1 <= input_ids.shape[1] <= self.hp.max_positions:
            raise ValueError(
                f"input_ids length {input_ids.shape[1]} is outside 1..{self.hp.max_positions} (max_position_embeddings)"
            )

    def pooled_index(self, input_ids: Tensor) -> Tensor:  # (B, L) -> (B,)
        """Where the pooled state is read, by transformers' rule: checkpoints whose config says
        `eos_token_id == 2` (written before transformers PR #24773) take the largest token id, which is the
        end-of-text token in the original vocabulary; others take the first occurrence of `eos_token_id`
        (position 0 when it is absent, as transformers' argmax gives)."""
        ids = input_ids.to(torch.int)  # int32, as transformers (argmax on int64 is not ONNX-exportable)
        if self.hp.eos_token_id == 2:
            return ids.argmax(dim=-1)
        return (ids == self.hp.eos_token_id).int().argmax(dim=-1)

    def encode(self, input_ids: Tensor, output_hidden_states: bool) -> CLIPTextOutput:
        self.check_input_ids(input_ids)
        tower = self.text_model
        x = tower.embeddings(input_ids)  # (B, L, C)
        states = [x]
        for layer in tower.encoder.layers:
            x = layer(x)
            states.append(x)
        last = tower.final_layer_norm(x)  # (B, L, C)
        if self.hp.tie_last_hidden_states and len(states) > 1:
            states[-1] = last
        index = self.pooled_index(input_ids).to(last.device)
        pooled = last[torch.arange(last.shape[0], device=last.device), index]  # (B, C)
        return CLIPTextOutput(last, pooled, tuple(states) if output_hidden_states else None)

    def forward(self, input_ids: Tensor, output_hidden_states: bool = False) -> CLIPTextOutput:
        """input_ids (B, L) -> CLIPTextOutput; hidden_states (when asked) end with the last layer's output
        before the final LayerNorm, as transformers returns them for CLIP."""
        return self.encode(input_ids, output_hidden_states)


class CLIPTextModelWithProjection(CLIPTextModel):
    """CLIP text tower plus `text_projection` (no bias) of the pooled state into `text_embeds`."""

    def __init__(self, hp: CLIPTextHParams) -> None:
        if hp.projection_dim is None:
            raise ValueError("config 'projection_dim' is null; CLIPTextModelWithProjection needs its size")
        super().__init__(hp)
        self.text_projection = nn.Linear(hp.hidden_size, hp.projection_dim, bias=False)

    def convert_checkpoint_keys(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Only the legacy `position_ids` buffer needs dropping: both transformers 4.x and 5.x write this
        class with the `text_model.` prefix."""
        return {key: value for key, value in state.items() if key != "text_model.embeddings.position_ids"}

    def forward(self, input_ids: Tensor, output_hidden_states: bool = False) -> CLIPTextOutput:
        out = self.encode(input_ids, output_hidden_states)
        out.text_embeds = self.text_projection(out.pooler_output)  # (B, P)
        return out


__all__ = [
    "ACTIVATIONS",
    "CLIPTextHParams",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPTextOutput",
    "config_float",
    "config_int",
]
