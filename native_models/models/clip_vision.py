"""Native CLIP vision encoder (the image tower of CLIP), numerically matching transformers' `CLIPVisionModel`.

Wan 2.1 image-to-video conditions its DiT on the *penultimate* hidden state of a CLIP ViT-H/14
(`WanImageToVideoPipeline.encode_image` takes `hidden_states[-2]`): a 224x224 image becomes 16x16 patch embeddings
plus a learned class embedding (257 tokens), learned position embeddings are added, a LayerNorm is applied
before the encoder ("pre_layrnorm", transformers' spelling), and the pre-LN layers (the text tower's layer, without
the causal mask) run. `hidden_states[0]` is the pre-LN embedding, `hidden_states[i]` the output of layer i;
`post_layernorm` only touches the pooled class token. `hidden_state(pixels, -2)` runs just the layers that index
needs (the last layer's output is never used by the pipeline).

Parameter names are those of transformers 4.x checkpoints, as found in Diffusers pipeline folders
(`vision_model.embeddings.class_embedding`, ...). transformers 5.x writes `CLIPVisionModel` without the
`vision_model.` prefix; `convert_checkpoint_keys` accepts both layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from native_models.models.clip_text import CLIP_ACTIVATIONS, CLIPEncoderLayer, config_float, config_int

PREFIX = "vision_model."
LEGACY_POSITION_IDS = f"{PREFIX}embeddings.position_ids"  # a buffer transformers < 4.31 saved; recomputed here


@dataclass(frozen=True)
class CLIPVisionHParams:
    """Hyper-parameters read from a transformers `CLIPVisionConfig` config.json (defaults are transformers').

    The attribute names shared with `CLIPTextHParams` (hidden_size, intermediate_size, num_heads, head_dim,
    hidden_act, layer_norm_eps) are what `CLIPEncoderLayer` reads, so both towers build the same layer.
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    hidden_act: str
    layer_norm_eps: float
    projection_dim: int | None  # only CLIPVisionModelWithProjection uses it

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        """Patches per side of the (square) input image."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Tokens per image: one per patch plus the class token (257 for ViT-H/14 at 224 px)."""
        return self.grid**2 + 1

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CLIPVisionHParams:
        model_type = config.get("model_type", "clip_vision_model")
        if model_type != "clip_vision_model":
            raise ValueError(f"config 'model_type' must be 'clip_vision_model', got {model_type!r}")
        hidden_act = config.get("hidden_act", "quick_gelu")
        if hidden_act not in CLIP_ACTIVATIONS:
            raise ValueError(f"config 'hidden_act' {hidden_act!r} is not supported (one of {CLIP_ACTIVATIONS})")
        projection_dim = config.get("projection_dim", 512)
        hp = cls(
            hidden_size=config_int(config, "hidden_size", 768),
            intermediate_size=config_int(config, "intermediate_size", 3072),
            num_layers=config_int(config, "num_hidden_layers", 12, minimum=0),
            num_heads=config_int(config, "num_attention_heads", 12),
            num_channels=config_int(config, "num_channels", 3),
            image_size=config_int(config, "image_size", 224),
            patch_size=config_int(config, "patch_size", 32),
            hidden_act=hidden_act,
            layer_norm_eps=config_float(config, "layer_norm_eps", 1e-5),
            projection_dim=None if projection_dim is None else config_int(config, "projection_dim", 512),
        )
        if hp.hidden_size % hp.num_heads:
            raise ValueError(
                f"config 'hidden_size' ({hp.hidden_size}) is not a multiple of 'num_attention_heads' ({hp.num_heads})"
            )
        if hp.patch_size > hp.image_size:
            raise ValueError(f"config 'patch_size' ({hp.patch_size}) exceeds 'image_size' ({hp.image_size})")
        return hp


@dataclass
class CLIPVisionOutput:
    """What the CLIP vision encoders return (transformers' field names)."""

    last_hidden_state: Tensor  # (B, N+1, C), the last layer's output (no final norm on the sequence)
    pooler_output: Tensor  # (B, C), post_layernorm of the class token
    hidden_states: tuple[Tensor, ...] | None = None  # pre-LN embeddings + each layer's output, each (B, N+1, C)
    image_embeds: Tensor | None = None  # (B, P), only from CLIPVisionModelWithProjection


class CLIPVisionEmbeddings(nn.Module):
    """Patch embedding (a bias-free conv with stride = kernel = patch), class token in front, learned positions."""

    def __init__(self, hp: CLIPVisionHParams) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(hp.hidden_size))
        self.patch_embedding = nn.Conv2d(hp.num_channels, hp.hidden_size, hp.patch_size, stride=hp.patch_size,
                                         bias=False)
        self.position_embedding = nn.Embedding(hp.num_positions, hp.hidden_size)

    def forward(self, pixel_values: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, N+1, C)
        # pixels arrive in float32 from the processor: cast to the weights' dtype first, as transformers does
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, C, S/p, S/p)
        patches = patches.flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.class_embedding.expand(pixel_values.shape[0], 1, -1)  # (B, 1, C)
        positions = torch.arange(self.position_embedding.num_embeddings, device=pixel_values.device)[None]  # (1, N+1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(positions)


class CLIPVisionEncoder(nn.Module):
    def __init__(self, hp: CLIPVisionHParams) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(hp) for _ in range(hp.num_layers))  # type: ignore[arg-type]
        for layer in self.layers:
            layer.self_attn.is_causal = False  # the vision tower attends over all tokens (transformers' default)


class CLIPVisionTransformer(nn.Module):
    """The `vision_model` sub-tree of transformers 4.x: embeddings, pre_layrnorm, encoder, post_layernorm."""

    def __init__(self, hp: CLIPVisionHParams) -> None:
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(hp)
        self.pre_layrnorm = nn.LayerNorm(hp.hidden_size, eps=hp.layer_norm_eps)
        self.encoder = CLIPVisionEncoder(hp)
        self.post_layernorm = nn.LayerNorm(hp.hidden_size, eps=hp.layer_norm_eps)


class CLIPVisionModel(nn.Module):
    """CLIP image tower: `forward(pixel_values)` gives per-token states and the pooled class state;
    `hidden_state(pixel_values, index)` gives one entry of transformers' `hidden_states` tuple."""

    def __init__(self, hp: CLIPVisionHParams) -> None:
        super().__init__()
        self.hp = hp
        self.vision_model = CLIPVisionTransformer(hp)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CLIPVisionModel:
        return cls(CLIPVisionHParams.from_config(config))

    def convert_checkpoint_keys(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Accept transformers 5.x `CLIPVisionModel` files (no `vision_model.` prefix) and drop the legacy
        `position_ids` buffer; positions are recomputed here."""
        if not any(key.startswith(PREFIX) for key in state):
            state = {f"{PREFIX}{key}": value for key, value in state.items()}
        return {key: value for key, value in state.items() if key != LEGACY_POSITION_IDS}

    def check_pixel_values(self, pixel_values: Tensor) -> None:
        """Reject what transformers would fail on, with a message naming the shape or dtype."""
        hp = self.hp
        expected = (hp.num_channels, hp.image_size, hp.image_size)
        if not isinstance(pixel_values, Tensor) or pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be (B, {', '.join(map(str, expected))}), got {shape}")
        if not pixel_values.dtype.is_floating_point:
            raise ValueError(f"pixel_values must be floating point (normalised pixels), got {pixel_values.dtype}")

    def layers_for(self, index: int) -> int:
        """How many encoder layers transformers' `hidden_states[index]` has passed (negative indices allowed)."""
        count = self.hp.num_layers + 1  # the pre-LN embeddings, then one entry per layer
        if not -count <= index < count:
            raise ValueError(f"hidden state index {index} is outside -{count}..{count - 1} ({self.hp.num_layers} "
                             "layers)")
        return index % count

    def hidden_state(self, pixel_values: Tensor, index: int) -> Tensor:
        """transformers' `hidden_states[index]` (B, N+1, C), running only the layers it depends on."""
        self.check_pixel_values(pixel_values)
        tower = self.vision_model
        x = tower.pre_layrnorm(tower.embeddings(pixel_values))  # hidden_states[0]
        for layer in tower.encoder.layers[: self.layers_for(index)]:
            x = layer(x)
        return x

    def encode(self, pixel_values: Tensor, output_hidden_states: bool) -> CLIPVisionOutput:
        self.check_pixel_values(pixel_values)
        tower = self.vision_model
        x = tower.pre_layrnorm(tower.embeddings(pixel_values))
        states = [x]
        for layer in tower.encoder.layers:
            x = layer(x)
            states.append(x)
        pooled = tower.post_layernorm(x[:, 0, :])  # (B, C): the class token only
        return CLIPVisionOutput(x, pooled, tuple(states) if output_hidden_states else None)

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False) -> CLIPVisionOutput:
        """pixel_values (B, 3, S, S), normalised -> CLIPVisionOutput."""
        return self.encode(pixel_values, output_hidden_states)


class CLIPVisionModelWithProjection(CLIPVisionModel):
    """CLIP image tower plus `visual_projection` (no bias) of the pooled state into `image_embeds`."""

    def __init__(self, hp: CLIPVisionHParams) -> None:
        if hp.projection_dim is None:
            raise ValueError("config 'projection_dim' is null; CLIPVisionModelWithProjection needs its size")
        super().__init__(hp)
        self.visual_projection = nn.Linear(hp.hidden_size, hp.projection_dim, bias=False)

    def convert_checkpoint_keys(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """transformers 4.x and 5.x both write this class with the `vision_model.` prefix; only the legacy
        `position_ids` buffer needs dropping."""
        return {key: value for key, value in state.items() if key != LEGACY_POSITION_IDS}

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False) -> CLIPVisionOutput:
        out = self.encode(pixel_values, output_hidden_states)
        out.image_embeds = self.visual_projection(out.pooler_output)  # (B, P)
        return out


__all__ = ["CLIPVisionHParams", "CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPVisionOutput"]
