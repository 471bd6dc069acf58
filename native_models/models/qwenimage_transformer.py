"""Qwen-Image DiT (Diffusers' `QwenImageTransformer2DModel`), native PyTorch.

Packed latent tokens (B, N, 64) and Qwen2.5-VL prompt states (B, L, 3584) go through `num_layers` dual-stream MMDiT
blocks: each stream has its own adaLN modulation (shift, scale, gate from SiLU(temb)), LayerNorm, q/k/v projections
with per-head RMSNorm of q and k, and GELU-tanh MLP; one joint attention runs over [text, image]. The output is
the image stream only, through an adaLN-continuous norm and a linear projection to (B, N, p*p*out_channels).

What is particular to Qwen-Image (checked against diffusers 0.42.1, transformer_qwenimage.py):
- Rotary: three axes (frame, row, column) of `axes_dims_rope` channels, applied as complex multiplication in fp32
  on adjacent channel pairs (`use_real=False`). Rows and columns are *centred* (`scale_rope=True`): an image of h
  rows has row positions -(h - h//2) .. h//2 - 1. Text token j sits at position max(h//2, w//2) + j on all three
  axes, i.e. after the image positions. The reference precomputes positions -4096..4095; this module computes
  the same angles per position (same float32 ops, same `torch.polar`) and refuses positions outside that range.
- Timestep: the pipeline passes t/1000; it is cast to the model dtype, then the sinusoid multiplies by 1000 again
  (`Timesteps(scale=1000)`), cos first, 256 channels, then a SiLU MLP.
- The prompt states are RMS-normalised (`txt_norm`, weight included) before `txt_in`.
- Text padding: `encoder_hidden_states_mask` (B, L) masks padded text *keys* of the joint attention (text first,
  then all image keys); padded text queries still run and are discarded. The rotary text length is the padded L.

Parallelism is declared as class data (`_tp_plan`, `_sp_plan`) and applied by `native_models.parallel.parallelize`:
heads split by TP (projections column-/row-parallel, per-head norms replicated), image tokens split by Ulysses SP
with the text stream replicated (native_models/parallel/joint_sequence_parallel.py). The forward below is the only
forward; attention heads are read from the (possibly sharded) projection width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from native_models.attention import attention
from native_models.config_dict import known_config_values
from native_models.models.flux_transformer import FeedForward, FinalLayer, MLPEmbedder
from native_models.models.norms import RMSNorm
from native_models.models.rope import timestep_embedding
from native_models.parallel.joint_sequence_parallel import JointUlysses
from native_models.parallel.sequence_parallel import GatherOutput, SplitInput, SplitOutput
from native_models.parallel.tensor_parallel import Colwise, Rowwise

ROPE_THETA = 10000
ROPE_POSITIONS = 4096  # the reference's tables cover positions -4096 .. 4095 on every axis
TIMESTEP_CHANNELS = 256
TIMESTEP_SCALE = 1000  # Timesteps(scale=1000): undoes the pipeline's t / 1000
NORM_EPS = 1e-6
FP16_MAX = 65504.0

Grid = tuple[int, int, int]  # (frames, rows, columns) of packed latent tokens


@dataclass(frozen=True)
class QwenImageConfig:
    """Hyper-parameters, named (and defaulted) as in Diffusers' config.json."""

    patch_size: int = 2
    in_channels: int = 64
    out_channels: int | None = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    zero_cond_t: bool = False
    use_additional_t_cond: bool = False
    use_layer3d_rope: bool = False

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.patch_size * self.patch_size * (self.out_channels or self.in_channels)

    def validate(self) -> None:
        """Reject settings this implementation does not reproduce, naming the value."""
        if self.guidance_embeds:
            # Diffusers builds no guidance embedder and its forward fails when guidance is passed.
            raise ValueError("guidance_embeds=True is not supported (Diffusers' Qwen-Image has no guidance embedder)")
        for name in ("zero_cond_t", "use_additional_t_cond", "use_layer3d_rope"):
            if getattr(self, name):
                raise ValueError(f"{name}=True (Qwen-Image edit/layered variants) is not supported: text-to-image only")
        if len(self.axes_dims_rope) != 3 or any(d < 2 or d % 2 for d in self.axes_dims_rope):
            raise ValueError(f"axes_dims_rope={list(self.axes_dims_rope)} must be three positive even ints")
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(f"axes_dims_rope={list(self.axes_dims_rope)} sums to {sum(self.axes_dims_rope)}, "
                             f"but attention_head_dim={self.attention_head_dim}")  # fmt: skip
        for name in ("patch_size", "in_channels", "num_attention_heads", "joint_attention_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> QwenImageConfig:
        """Read Diffusers' config.json; keys starting with '_' are metadata, unknown keys are rejected."""
        result = cls(**known_config_values(cls, config, "Qwen-Image transformer", tuple_keys=("axes_dims_rope",)))
        result.validate()
        return result


def axis_angles(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Unit complex rotations (N, dim/2) complex64 for integer positions (N,), as the reference's `rope_params`."""
    inv_freq = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, dim, 2).to(torch.float32).div(dim))  # (dim/2,) fp32
    angles = torch.outer(positions, inv_freq)  # int64 x fp32 -> fp32
    return torch.polar(torch.ones_like(angles), angles)


def centred(count: int) -> torch.Tensor:
    """Positions -(n - n//2) .. n//2 - 1 of `count` rows or columns (the reference's scale_rope layout)."""
    return torch.arange(-(count - count // 2), count // 2)


class QwenRotary(nn.Module):
    """3-axis rotary tables: `forward(grid)` gives the image tokens' table (a module call, so sequence parallelism
    can split it), `text_table` the text tokens'. Parameter-free: nothing of it is in the checkpoint."""

    def __init__(self, axes_dims: tuple[int, int, int]) -> None:
        super().__init__()
        self.axes_dims = axes_dims

    @staticmethod
    def text_start(grid: Grid) -> int:
        """First text position: just after the largest centred image position."""
        return max(grid[1] // 2, grid[2] // 2)

    def forward(self, grid: Grid) -> torch.Tensor:
        """(f*h*w, D/2) complex64 for tokens in (frame, row, column) order."""
        f, h, w = grid
        if f > ROPE_POSITIONS or max(h, w) - max(h, w) // 2 > ROPE_POSITIONS:
            raise ValueError(f"token grid {grid} exceeds the reference's rotary range of {ROPE_POSITIONS} positions")
        d_f, d_h, d_w = self.axes_dims
        parts = (
            axis_angles(torch.arange(f), d_f).view(f, 1, 1, -1).expand(f, h, w, -1),
            axis_angles(centred(h), d_h).view(1, h, 1, -1).expand(f, h, w, -1),
            axis_angles(centred(w), d_w).view(1, 1, w, -1).expand(f, h, w, -1),
        )
        return torch.cat(parts, dim=-1).reshape(f * h * w, -1)

    def text_table(self, grid: Grid, text_len: int) -> torch.Tensor:
        """(text_len, D/2) complex64: position start + j on all three axes."""
        start = self.text_start(grid)
        if start + text_len > ROPE_POSITIONS:
            raise ValueError(f"{text_len} text tokens after image position {start} exceed the reference's rotary "
                             f"range of {ROPE_POSITIONS} positions")  # fmt: skip
        positions = torch.arange(start, start + text_len)
        return torch.cat([axis_angles(positions, d) for d in self.axes_dims], dim=-1)


def apply_rotary(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x (B, L, H, D) by the complex table (L, D/2): complex product in fp32."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, L, H, D/2)
    return torch.view_as_real(pairs * table.to(x.device).unsqueeze(1)).flatten(3).type_as(x)


def joint_key_mask(
    txt_mask: torch.Tensor | None, img_mask: torch.Tensor | None, batch: int, txt_len: int, img_len: int
) -> torch.Tensor | None:
    """(B, 1, 1, L_txt + L_img) bool, True for keys to attend to; None when neither stream has padding."""
    if txt_mask is None and img_mask is None:
        return None
    device = (txt_mask if txt_mask is not None else img_mask).device  # type: ignore[union-attr]
    txt = torch.ones(batch, txt_len, dtype=torch.bool, device=device) if txt_mask is None else txt_mask.bool()
    img = torch.ones(batch, img_len, dtype=torch.bool, device=device) if img_mask is None else img_mask.bool()
    return torch.cat((txt, img.expand(batch, -1)), dim=1)[:, None, None, :]


class JointAttend(nn.Module):
    """The attention call over [text, image] as a parameter-free module (sequence parallelism wraps it)."""

    def forward(
        self,
        txt_q: torch.Tensor, txt_k: torch.Tensor, txt_v: torch.Tensor,
        img_q: torch.Tensor, img_k: torch.Tensor, img_v: torch.Tensor,
        txt_mask: torch.Tensor | None = None, img_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(B, L, H, D) each; masks (B, L) of keys to keep -> text and image outputs (B, L, H, D)."""
        txt_len = txt_q.shape[1]
        q = torch.cat((txt_q, img_q), dim=1)  # text first, as the reference orders the joint sequence
        k = torch.cat((txt_k, img_k), dim=1)
        v = torch.cat((txt_v, img_v), dim=1)
        mask = joint_key_mask(txt_mask, img_mask, q.shape[0], txt_len, img_q.shape[1])
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)  # (B, H, L, D)
        out = out.transpose(1, 2)  # (B, L, H, D)
        return out[:, :txt_len], out[:, txt_len:]


class JointAttention(nn.Module):
    """Per-stream q/k/v projections and per-head q/k RMSNorms, complex rotary, joint attention, per-stream outputs."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.add_q_proj, self.add_k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.to_add_out = nn.Linear(dim, dim)
        self.norm_q, self.norm_k = RMSNorm(head_dim, NORM_EPS), RMSNorm(head_dim, NORM_EPS)
        self.norm_added_q, self.norm_added_k = RMSNorm(head_dim, NORM_EPS), RMSNorm(head_dim, NORM_EPS)
        self.core = JointAttend()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.head_dim))  # (B, L, H*D) -> (B, L, H, D)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, txt_mask: torch.Tensor | None,
        img_rope: torch.Tensor, txt_rope: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Image x (B, N, C), text c (B, L, C) -> (image, text) attention outputs after their projections."""
        img_q = apply_rotary(self.norm_q(self.heads(self.to_q(x))), img_rope)
        img_k = apply_rotary(self.norm_k(self.heads(self.to_k(x))), img_rope)
        img_v = self.heads(self.to_v(x))
        txt_q = apply_rotary(self.norm_added_q(self.heads(self.add_q_proj(c))), txt_rope)
        txt_k = apply_rotary(self.norm_added_k(self.heads(self.add_k_proj(c))), txt_rope)
        txt_v = self.heads(self.add_v_proj(c))
        txt_out, img_out = self.core(txt_q, txt_k, txt_v, img_q, img_k, img_v, txt_mask=txt_mask)
        img_out = img_out.flatten(2, 3).to(img_q.dtype).contiguous()  # (B, N, H*D)
        txt_out = txt_out.flatten(2, 3).to(txt_q.dtype).contiguous()  # (B, L, H*D)
        return self.to_out[0](img_out), self.to_add_out(txt_out)


def modulate(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """params (B, 3C) = [shift, scale, gate]: returns (x * (1 + scale) + shift, gate), each broadcast over tokens."""
    shift, scale, gate = params.chunk(3, dim=-1)
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1), gate.unsqueeze(1)


class QwenImageTransformerBlock(nn.Module):
    """Dual-stream MMDiT block; the argument order and the (text, image) result order are Diffusers'."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.img_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS)
        self.attn = JointAttention(dim, head_dim)
        self.img_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS)
        self.img_mlp = FeedForward(dim)
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS)
        self.txt_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS)
        self.txt_mlp = FeedForward(dim)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, txt_mask: torch.Tensor | None, temb: torch.Tensor,
        img_rope: torch.Tensor, txt_rope: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """x (B, N, C) image, c (B, L, C) text, temb (B, C) -> (c, x) updated."""
        img_mod1, img_mod2 = self.img_mod(temb).chunk(2, dim=-1)  # (B, 3C) each
        txt_mod1, txt_mod2 = self.txt_mod(temb).chunk(2, dim=-1)
        img_in, img_gate1 = modulate(self.img_norm1(x), img_mod1)
        txt_in, txt_gate1 = modulate(self.txt_norm1(c), txt_mod1)
        img_attn, txt_attn = self.attn(img_in, txt_in, txt_mask, img_rope, txt_rope)
        x = x + img_gate1 * img_attn
        c = c + txt_gate1 * txt_attn

        img_in2, img_gate2 = modulate(self.img_norm2(x), img_mod2)
        x = x + img_gate2 * self.img_mlp(img_in2)
        txt_in2, txt_gate2 = modulate(self.txt_norm2(c), txt_mod2)
        c = c + txt_gate2 * self.txt_mlp(txt_in2)
        if c.dtype == torch.float16:
            c = c.clip(-FP16_MAX, FP16_MAX)
        if x.dtype == torch.float16:
            x = x.clip(-FP16_MAX, FP16_MAX)
        return c, x


class TimestepProjEmbeddings(nn.Module):
    """`time_text_embed`: sinusoid of t * 1000 (256 channels, cos first, fp32) -> SiLU MLP in the model dtype."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = MLPEmbedder(TIMESTEP_CHANNELS, dim)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        freqs = timestep_embedding(timestep, TIMESTEP_CHANNELS, scale=TIMESTEP_SCALE)  # (B, 256) fp32
        return self.timestep_embedder(freqs.to(dtype))  # (B, C)


def image_grid(img_shapes: Sequence[Sequence[Sequence[int]]], batch: int) -> Grid:
    """The token grid from Diffusers' `img_shapes` ([[(frames, rows, cols)]] per sample): one image per sample,
    the same for every sample (Diffusers would silently use the first)."""
    if len(img_shapes) != batch:
        raise ValueError(f"img_shapes has {len(img_shapes)} entries for a batch of {batch}")
    grids = set()
    for sample in img_shapes:
        if len(sample) != 1 or len(sample[0]) != 3:
            raise ValueError(f"img_shapes entries must be [(frames, rows, cols)], got {list(sample)}")
        grids.add(tuple(int(v) for v in sample[0]))
    if len(grids) != 1:
        raise ValueError(f"every sample of a batch must have the same image shape, got {sorted(grids)}")
    grid = grids.pop()
    if min(grid) < 1:
        raise ValueError(f"image shape {grid} must be positive")
    return grid  # type: ignore[return-value]


class QwenImageTransformer2DModel(nn.Module):
    """The Qwen-Image denoiser on packed latent tokens; parameter names equal Diffusers' state-dict keys."""

    # Tensor parallelism (Diffusers' own plan): heads split across ranks for both streams' q/k/v (column-parallel)
    # and output projections (row-parallel, all-reduced); MLPs column/row-parallel; per-head q/k norms, the
    # modulation linears and norm_out replicated.
    _tp_plan: ClassVar[dict[str, Any]] = {
        "transformer_blocks.*.attn.to_q": Colwise(),
        "transformer_blocks.*.attn.to_k": Colwise(),
        "transformer_blocks.*.attn.to_v": Colwise(),
        "transformer_blocks.*.attn.to_out.0": Rowwise(),
        "transformer_blocks.*.attn.add_q_proj": Colwise(),
        "transformer_blocks.*.attn.add_k_proj": Colwise(),
        "transformer_blocks.*.attn.add_v_proj": Colwise(),
        "transformer_blocks.*.attn.to_add_out": Rowwise(),
        "transformer_blocks.*.img_mlp.net.0.proj": Colwise(),
        "transformer_blocks.*.img_mlp.net.2": Rowwise(),
        "transformer_blocks.*.txt_mlp.net.0.proj": Colwise(),
        "transformer_blocks.*.txt_mlp.net.2": Rowwise(),
    }
    # Sequence parallelism (Ulysses): the image tokens and their rotary table are split (padded) before the first
    # block, the joint attention exchanges image sequence <-> heads and keeps the text stream whole on every rank,
    # and the image tokens are gathered (padding stripped) after proj_out.
    _sp_plan: ClassVar[dict[str, Any]] = {
        "pos_embed": SplitOutput(dim=0),
        "transformer_blocks.0": SplitInput(arg=0, dim=1),
        "transformer_blocks.*.attn.core": JointUlysses(),
        "proj_out": GatherOutput(dim=1),
    }

    def __init__(self, config: QwenImageConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dim = config.inner_dim
        self.pos_embed = QwenRotary(config.axes_dims_rope)
        self.time_text_embed = TimestepProjEmbeddings(dim)
        self.txt_norm = RMSNorm(config.joint_attention_dim, NORM_EPS)
        self.img_in = nn.Linear(config.in_channels, dim)
        self.txt_in = nn.Linear(config.joint_attention_dim, dim)
        self.transformer_blocks = nn.ModuleList(
            QwenImageTransformerBlock(dim, config.attention_head_dim) for _ in range(config.num_layers)
        )
        self.norm_out = FinalLayer(dim)
        self.proj_out = nn.Linear(dim, config.output_channels)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> QwenImageTransformer2DModel:
        """Build from Diffusers' transformer config.json (raises ValueError for unsupported settings)."""
        return cls(QwenImageConfig.from_dict(config))

    def check_parallel(self, tp: int, sp: int) -> None:
        """Raise ValueError when the heads cannot be split tp ways, then sp ways within a TP shard."""
        heads, dim = self.config.num_attention_heads, self.config.inner_dim
        if heads % tp:
            raise ValueError(f"num_attention_heads={heads} does not divide by tensor-parallel size {tp}")
        if (heads // tp) % sp:
            raise ValueError(f"num_attention_heads={heads} / tp={tp} = {heads // tp} heads per rank do not divide "
                             f"by sequence-parallel size {sp} (Ulysses splits heads)")  # fmt: skip
        if (4 * dim) % tp:
            raise ValueError(f"MLP width {4 * dim} does not divide by tensor-parallel size {tp}")

    def check_inputs(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_mask: torch.Tensor | None, timestep: torch.Tensor, grid: Grid,
    ) -> None:  # fmt: skip
        batch, tokens = hidden_states.shape[:2] if hidden_states.ndim == 3 else (-1, -1)
        if hidden_states.ndim != 3 or hidden_states.shape[2] != self.config.in_channels:
            raise ValueError(f"hidden_states must be (B, N, {self.config.in_channels}), got "
                             f"{tuple(hidden_states.shape)}")  # fmt: skip
        expected = grid[0] * grid[1] * grid[2]
        if tokens != expected:
            raise ValueError(f"hidden_states has {tokens} tokens but img_shapes {grid} gives {expected}")
        text = encoder_hidden_states.shape
        if encoder_hidden_states.ndim != 3 or text[0] != batch or text[2] != self.config.joint_attention_dim:
            raise ValueError(f"encoder_hidden_states must be ({batch}, L, {self.config.joint_attention_dim}), got "
                             f"{tuple(text)}")  # fmt: skip
        if encoder_hidden_states_mask is not None and tuple(encoder_hidden_states_mask.shape) != tuple(text[:2]):
            raise ValueError(f"encoder_hidden_states_mask must be {tuple(text[:2])}, got "
                             f"{tuple(encoder_hidden_states_mask.shape)}")  # fmt: skip
        if timestep.shape != (batch,):
            raise ValueError(f"timestep must be (B,) = ({batch},), got {tuple(timestep.shape)}")

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        img_shapes: Sequence[Sequence[Sequence[int]]],
        encoder_hidden_states_mask: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity of packed latent tokens; the arguments are QwenImagePipeline's keywords.

        hidden_states (B, N, in_channels) in the model dtype; encoder_hidden_states (B, L, joint_attention_dim);
        timestep (B,) on the 0..1 scale (t / 1000); img_shapes [[(frames, rows, cols)]] * B with N = f*h*w;
        encoder_hidden_states_mask (B, L), 1 = token, 0 = padding, or None (the pipeline passes None when nothing
        is padded). Returns (B, N, p*p*out_channels) in the model dtype.
        """
        if guidance is not None:
            raise ValueError("guidance must be None: Qwen-Image has no guidance embedder")
        grid = image_grid(img_shapes, hidden_states.shape[0])
        self.check_inputs(hidden_states, encoder_hidden_states, encoder_hidden_states_mask, timestep, grid)
        x = self.img_in(hidden_states)  # (B, N, C)
        temb = self.time_text_embed(timestep.to(x.dtype), x.dtype)  # (B, C)
        c = self.txt_in(self.txt_norm(encoder_hidden_states))  # (B, L, C)
        txt_mask = None if encoder_hidden_states_mask is None else encoder_hidden_states_mask.to(torch.bool)
        img_rope = self.pos_embed(grid)  # (N, D/2) complex64
        txt_rope = self.pos_embed.text_table(grid, c.shape[1])  # (L, D/2)

        for block in self.transformer_blocks:
            c, x = block(x, c, txt_mask, temb, img_rope, txt_rope)

        return self.proj_out(self.norm_out(x, temb))  # (B, N, p*p*out_channels)


__all__ = ["QwenImageConfig", "QwenImageTransformer2DModel", "QwenRotary", "image_grid"]
