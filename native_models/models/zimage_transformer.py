"""Z-Image DiT (Diffusers' `ZImageTransformer2DModel`, text-to-image mode), native PyTorch.

A single-stream DiT over one sequence per sample [image tokens, caption tokens]:
1. image latents (C, F, H, W) are cut into pF x pH x pW patches, embedded (`all_x_embedder`), and refined by
   `noise_refiner` blocks (timestep-modulated) on their own;
2. caption states (L_i, cap_feat_dim) of each prompt (unpadded: ZImagePipeline passes one tensor per prompt) are
   RMS-normalised and embedded (`cap_embedder`), then refined by `context_refiner` blocks (no modulation);
3. both are concatenated per sample and run through `layers` (modulated), then a scale-only adaLN output layer,
   and the image tokens are folded back into latents (C, F, H, W).

What is particular to Z-Image (checked against diffusers 0.42.1, transformer_z_image.py):
- Every stream is padded to a multiple of 32 tokens (SEQ_MULTI_OF) with a learned pad token (`x_pad_token`,
  `cap_pad_token`) in place of the repeated last feature; samples of a batch are then padded to the longest with
  zeros, and a key mask is built only when lengths differ.
- Rotary: three axes (`axes_dims`), angles theta^(-2i/d) * position computed in float64 then rounded to float32,
  unit complex numbers (complex64), applied by complex multiplication in fp32 on adjacent channel pairs. Caption
  token j sits at (1 + j, 0, 0); image token (f, h, w) at (f + L_cap_padded + 1, h, w); pad image tokens at
  (0, 0, 0). The reference gives caption padding tokens the positions continuing the caption (its position grid
  is built over the padded length, and its extra (0, 0, 0) rows are cut off); this module does the same.
- Timestep: the pipeline passes (1000 - t) / 1000 (1 = clean); the model multiplies by `t_scale` (1000) and embeds
  256 sinusoid channels (cos first, fp32) through a 1024-wide SiLU MLP to min(dim, 256) channels.
- Blocks: adaLN gives [scale_msa, gate_msa, scale_mlp, gate_mlp] with tanh gates and no shift; RMSNorm before
  and after attention and the SwiGLU FFN (`w2(silu(w1 x) * w3 x)`, hidden int(dim / 3 * 8)); q/k RMSNorm per head
  with eps 1e-5 (not norm_eps). `n_kv_heads` is read but, as in Diffusers, every head has its own keys and values.
- ZImagePipeline negates the model output (`noise_pred = -noise_pred`) before the scheduler step; this module
  returns what the model returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from native_models.attention import attention
from native_models.config_dict import known_config_values
from native_models.models.norms import RMSNorm
from native_models.models.rope import timestep_embedding

ADALN_EMBED_DIM = 256  # width of the timestep embedding that modulates every block
SEQ_MULTI_OF = 32  # every stream of a sample is padded to a multiple of this many tokens
TIMESTEP_CHANNELS = 256
TIMESTEP_MID = 1024  # the timestep MLP's hidden width (Diffusers' TimestepEmbedder(mid_size=1024))
QK_NORM_EPS = 1e-5  # Diffusers builds the q/k norms with eps=1e-5 whatever norm_eps says
FINAL_NORM_EPS = 1e-6


@dataclass(frozen=True)
class ZImageConfig:
    """Hyper-parameters, named (and defaulted) as in Diffusers' config.json."""

    all_patch_size: tuple[int, ...] = (2,)
    all_f_patch_size: tuple[int, ...] = (1,)
    in_channels: int = 16
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    n_kv_heads: int = 30  # unused by the reference's attention (it has full k/v heads); accepted and ignored
    norm_eps: float = 1e-5
    qk_norm: bool = True
    cap_feat_dim: int = 2560
    siglip_feat_dim: int | None = None
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    axes_dims: tuple[int, ...] = (32, 48, 48)
    axes_lens: tuple[int, ...] = (1024, 512, 512)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, ADALN_EMBED_DIM)

    def validate(self) -> None:
        """Reject settings this implementation does not reproduce, naming the value."""
        if self.siglip_feat_dim is not None:
            raise ValueError(f"siglip_feat_dim={self.siglip_feat_dim} (Z-Image Omni) is not supported: "
                             "text-to-image only")  # fmt: skip
        if len(self.all_patch_size) != len(self.all_f_patch_size) or not self.all_patch_size:
            raise ValueError(f"all_patch_size={list(self.all_patch_size)} and all_f_patch_size="
                             f"{list(self.all_f_patch_size)} must be non-empty and of equal length")  # fmt: skip
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if len(self.axes_dims) != 3 or len(self.axes_lens) != 3:
            raise ValueError(f"axes_dims={list(self.axes_dims)} and axes_lens={list(self.axes_lens)} must have "
                             "3 entries (frame, row, column)")  # fmt: skip
        if any(d < 2 or d % 2 for d in self.axes_dims) or sum(self.axes_dims) != self.head_dim:
            raise ValueError(f"axes_dims={list(self.axes_dims)} must be even and sum to the head dim "
                             f"{self.head_dim} (dim / n_heads)")  # fmt: skip
        for name in ("in_channels", "n_layers", "cap_feat_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ZImageConfig:
        """Read Diffusers' config.json; keys starting with '_' are metadata, unknown keys are rejected."""
        values = known_config_values(cls, config, "Z-Image transformer",
                                     tuple_keys=("all_patch_size", "all_f_patch_size", "axes_dims", "axes_lens"))
        result = cls(**values)
        result.validate()
        return result


def rope_table(ids: torch.Tensor, config: ZImageConfig) -> torch.Tensor:
    """(N, D/2) complex64 rotations for integer positions ids (N, 3), as the reference's RopeEmbedder indexes its
    tables: angles in float64, rounded to float32, then `torch.polar`."""
    parts = []
    for axis, (dim, length) in enumerate(zip(config.axes_dims, config.axes_lens, strict=True)):
        positions = ids[:, axis]
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= length):
            raise ValueError(f"rotary axis {axis} position {int(positions.max())} outside the table of "
                             f"axes_lens[{axis}]={length}")  # fmt: skip
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        angles = torch.outer(positions.to(torch.float64).cpu(), inv_freq).float()  # (N, dim/2)
        parts.append(torch.polar(torch.ones_like(angles), angles))
    return torch.cat(parts, dim=-1).to(ids.device)


def coordinate_grid(size: Sequence[int], start: Sequence[int]) -> torch.Tensor:
    """(prod(size), 3) int32 positions start + index, row-major over `size` (frame, row, column)."""
    axes = [torch.arange(s0, s0 + n, dtype=torch.int32) for s0, n in zip(start, size, strict=True)]
    return torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1).flatten(0, 2)


@dataclass
class PaddedStream:
    """One sample's stream padded to a multiple of SEQ_MULTI_OF: features, pad flags, position ids."""

    features: torch.Tensor  # (T, C)
    is_pad: torch.Tensor  # (T,) bool
    positions: torch.Tensor  # (T or more, 3): captions carry extra (0, 0, 0) rows past T, as the reference

    @property
    def length(self) -> int:
        return self.features.shape[0]


def pad_stream(features: torch.Tensor, grid: Sequence[int], start: Sequence[int]) -> PaddedStream:
    """Pad `features` (N, C) by repeating its last row to a multiple of SEQ_MULTI_OF; positions from `grid`
    (its prod may exceed N: the caption's grid spans the padded length) then one (0, 0, 0) row per pad token."""
    count = features.shape[0]
    pad = (-count) % SEQ_MULTI_OF
    positions = coordinate_grid(grid, start)
    is_pad = torch.zeros(count + pad, dtype=torch.bool)
    if pad:
        positions = torch.cat((positions, torch.zeros(pad, 3, dtype=torch.int32)))
        features = torch.cat((features, features[-1:].repeat(pad, 1)))
        is_pad[count:] = True
    return PaddedStream(features, is_pad.to(features.device), positions)


def apply_rotary(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x (B, L, H, D) by table (B, L, D/2): complex product in fp32."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, L, H, D/2)
    return torch.view_as_real(pairs * table.unsqueeze(2)).flatten(3).type_as(x)


class ZImageAttention(nn.Module):
    """Multi-head self-attention, bias-free projections, optional per-head q/k RMSNorm, complex rotary."""

    def __init__(self, config: ZImageConfig) -> None:
        super().__init__()
        dim = config.dim
        self.head_dim = config.head_dim
        self.to_q, self.to_k = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])
        self.norm_q = RMSNorm(self.head_dim, QK_NORM_EPS) if config.qk_norm else None
        self.norm_k = RMSNorm(self.head_dim, QK_NORM_EPS) if config.qk_norm else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rope: torch.Tensor) -> torch.Tensor:
        """x (B, L, C), mask (B, L) keys to keep or None, rope (B, L, D/2) -> (B, L, C)."""
        q = self.to_q(x).unflatten(-1, (-1, self.head_dim))  # (B, L, H, D)
        k = self.to_k(x).unflatten(-1, (-1, self.head_dim))
        v = self.to_v(x).unflatten(-1, (-1, self.head_dim))
        if self.norm_q is not None and self.norm_k is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        key_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask)  # (B, H, L, D)
        return self.to_out[0](out.transpose(1, 2).flatten(2, 3).to(q.dtype))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), bias-free."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ZImageTransformerBlock(nn.Module):
    """Sandwich-normed attention and FFN; with `modulation`, scaled inputs and tanh-gated residuals from temb."""

    def __init__(self, config: ZImageConfig, modulation: bool) -> None:
        super().__init__()
        dim, eps = config.dim, config.norm_eps
        self.attention = ZImageAttention(config)
        self.feed_forward = FeedForward(dim, int(dim / 3 * 8))
        self.attention_norm1, self.ffn_norm1 = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.attention_norm2, self.ffn_norm2 = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.modulation = modulation
        if modulation:
            self.adaLN_modulation = nn.Sequential(nn.Linear(config.adaln_dim, 4 * dim))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, rope: torch.Tensor, temb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, L, C), temb (B, adaln_dim) for modulated blocks -> (B, L, C)."""
        if not self.modulation:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), mask, rope))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        if temb is None:
            raise ValueError("a modulated Z-Image block needs the timestep embedding")
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(temb).unsqueeze(1).chunk(4, dim=2)
        gate_msa, gate_mlp = gate_msa.tanh(), gate_mlp.tanh()  # (B, 1, C) each
        scale_msa, scale_mlp = 1.0 + scale_msa, 1.0 + scale_mlp
        x = x + gate_msa * self.attention_norm2(self.attention(self.attention_norm1(x) * scale_msa, mask, rope))
        return x + gate_mlp * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * scale_mlp))


class FinalLayer(nn.Module):
    """LayerNorm (no affine) times 1 + scale(temb) (no shift), then the patch projection."""

    def __init__(self, dim: int, adaln_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim, dim))

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + self.adaLN_modulation(temb)  # (B, C)
        return self.linear(F.layer_norm(x, (x.shape[-1],), eps=FINAL_NORM_EPS) * scale.unsqueeze(1))


class TimestepEmbedder(nn.Module):
    """`t_embedder`: 256 sinusoid channels (cos first, fp32) -> Linear(1024) -> SiLU -> Linear(adaln_dim)."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(TIMESTEP_CHANNELS, TIMESTEP_MID), nn.SiLU(), nn.Linear(TIMESTEP_MID, out_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, TIMESTEP_CHANNELS).to(self.mlp[0].weight.dtype))


@dataclass
class Batched:
    """Padded streams of a batch as one tensor, with their rotary tables and key mask."""

    tokens: torch.Tensor  # (B, T_max, C)
    rope: torch.Tensor  # (B, T_max, D/2) complex64
    mask: torch.Tensor | None  # (B, T_max) bool, or None when every sample has T_max tokens
    lengths: list[int]


def batch_streams(lengths: list[int], features: list[torch.Tensor], rope: list[torch.Tensor]) -> Batched:
    """Zero-pad samples to the longest; rotary tables padded likewise and cut to the token count."""
    tokens = pad_sequence(features, batch_first=True, padding_value=0.0)
    table = pad_sequence(rope, batch_first=True, padding_value=0.0)[:, : tokens.shape[1]]
    mask = None
    if any(n != tokens.shape[1] for n in lengths):
        mask = torch.zeros(len(lengths), tokens.shape[1], dtype=torch.bool, device=tokens.device)
        for i, n in enumerate(lengths):
            mask[i, :n] = True
    return Batched(tokens, table, mask, lengths)


class ZImageTransformer2DModel(nn.Module):
    """The Z-Image denoiser; parameter names equal Diffusers' state-dict keys."""

    def __init__(self, config: ZImageConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dim = config.dim
        patches = list(zip(config.all_patch_size, config.all_f_patch_size, strict=True))
        self.all_x_embedder = nn.ModuleDict(
            {f"{p}-{f}": nn.Linear(f * p * p * config.in_channels, dim) for p, f in patches}
        )
        self.all_final_layer = nn.ModuleDict(
            {f"{p}-{f}": FinalLayer(dim, config.adaln_dim, p * p * f * config.in_channels) for p, f in patches}
        )
        self.noise_refiner = nn.ModuleList(ZImageTransformerBlock(config, True) for _ in range(config.n_refiner_layers))
        self.context_refiner = nn.ModuleList(
            ZImageTransformerBlock(config, False) for _ in range(config.n_refiner_layers)
        )
        self.t_embedder = TimestepEmbedder(config.adaln_dim)
        self.cap_embedder = nn.Sequential(RMSNorm(config.cap_feat_dim, config.norm_eps),
                                          nn.Linear(config.cap_feat_dim, dim))  # fmt: skip
        self.x_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.layers = nn.ModuleList(ZImageTransformerBlock(config, True) for _ in range(config.n_layers))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ZImageTransformer2DModel:
        """Build from Diffusers' transformer config.json (raises ValueError for unsupported settings)."""
        return cls(ZImageConfig.from_dict(config))

    def check_inputs(self, x: Sequence[torch.Tensor], t: torch.Tensor, cap_feats: Sequence[torch.Tensor],
                     patch: tuple[int, int]) -> None:  # fmt: skip
        if f"{patch[0]}-{patch[1]}" not in self.all_x_embedder:
            raise ValueError(f"patch_size={patch[0]}, f_patch_size={patch[1]} not in this model's "
                             f"{list(self.all_x_embedder)}")  # fmt: skip
        if not x or len(x) != len(cap_feats):
            raise ValueError(f"x and cap_feats must be non-empty lists of one tensor per sample, got {len(x)} and "
                             f"{len(cap_feats)}")  # fmt: skip
        if t.shape != (len(x),):
            raise ValueError(f"t must be (B,) = ({len(x)},), got {tuple(t.shape)}")
        p, f = patch
        for i, (image, cap) in enumerate(zip(x, cap_feats, strict=True)):
            if image.ndim != 4 or image.shape[0] != self.config.in_channels:
                raise ValueError(f"x[{i}] must be ({self.config.in_channels}, F, H, W), got {tuple(image.shape)}")
            if image.shape[1] % f or image.shape[2] % p or image.shape[3] % p:
                raise ValueError(f"x[{i}] (F, H, W)={tuple(image.shape[1:])} does not divide by the patch ({f}, {p}, "
                                 f"{p})")  # fmt: skip
            if cap.ndim != 2 or cap.shape[1] != self.config.cap_feat_dim or cap.shape[0] < 1:
                raise ValueError(f"cap_feats[{i}] must be (L >= 1, {self.config.cap_feat_dim}), got {tuple(cap.shape)}")

    @staticmethod
    def patchify(image: torch.Tensor, p: int, f: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(C, F, H, W) -> (F/f * H/p * W/p, f*p*p*C) in (frame, row, column) order, and the token grid."""
        c, frames, h, w = image.shape
        grid = (frames // f, h // p, w // p)
        patches = image.view(c, grid[0], f, grid[1], p, grid[2], p).permute(1, 3, 5, 2, 4, 6, 0)
        return patches.reshape(grid[0] * grid[1] * grid[2], f * p * p * c), grid

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int], p: int, f: int) -> torch.Tensor:
        """(>= n, f*p*p*C) -> (C, F, H, W) from the first n = prod(grid) tokens."""
        c = self.config.in_channels
        count = grid[0] * grid[1] * grid[2]
        x = tokens[:count].view(*grid, f, p, p, c).permute(6, 0, 3, 1, 4, 2, 5)  # (C, F/f, f, H/p, p, W/p, p)
        return x.reshape(c, grid[0] * f, grid[1] * p, grid[2] * p)

    def embed_streams(
        self, streams: list[PaddedStream], embed: nn.Module, pad_token: torch.Tensor
    ) -> Batched:
        """Embed every sample's stream, put the pad token at its pad positions, batch with rotary and mask."""
        lengths = [s.length for s in streams]
        embedded = embed(torch.cat([s.features for s in streams]))  # (sum T, C)
        is_pad = torch.cat([s.is_pad for s in streams]).unsqueeze(-1)
        embedded = torch.where(is_pad, pad_token, embedded)
        table = rope_table(torch.cat([s.positions for s in streams]), self.config).to(embedded.device)
        tables = list(table.split([len(s.positions) for s in streams]))
        return batch_streams(lengths, list(embedded.split(lengths)), tables)

    def forward(
        self, x: Sequence[torch.Tensor], t: torch.Tensor, cap_feats: Sequence[torch.Tensor],
        patch_size: int = 2, f_patch_size: int = 1,
    ) -> list[torch.Tensor]:  # fmt: skip
        """Predict the model output for each sample; the arguments are what ZImagePipeline passes.

        x: one latent (C, F, H, W) per sample, in the model dtype; t (B,): (1000 - timestep) / 1000, so 1 is
        clean; cap_feats: one (L_i, cap_feat_dim) tensor of prompt states per sample (lengths may differ).
        Returns one (C, F, H, W) tensor per sample (the pipeline negates it to get the flow velocity).
        """
        p, f = patch_size, f_patch_size
        self.check_inputs(x, t, cap_feats, (p, f))
        temb = self.t_embedder(t * self.config.t_scale).type_as(x[0])  # (B, adaln_dim)

        captions, images, grids = [], [], []
        for image, cap in zip(x, cap_feats, strict=True):
            padded = len(cap) + (-len(cap)) % SEQ_MULTI_OF
            caption = pad_stream(cap, (padded, 1, 1), (1, 0, 0))
            patches, grid = self.patchify(image, p, f)
            images.append(pad_stream(patches, grid, (caption.length + 1, 0, 0)))
            captions.append(caption)
            grids.append(grid)

        img = self.embed_streams(images, self.all_x_embedder[f"{p}-{f}"], self.x_pad_token)
        for block in self.noise_refiner:
            img.tokens = block(img.tokens, img.mask, img.rope, temb)
        cap = self.embed_streams(captions, self.cap_embedder, self.cap_pad_token)
        for block in self.context_refiner:
            cap.tokens = block(cap.tokens, cap.mask, cap.rope)

        # One sequence per sample: [image tokens, caption tokens], each stream without its batch padding.
        lengths = [a + b for a, b in zip(img.lengths, cap.lengths, strict=True)]
        joint = [torch.cat((img.tokens[i, :a], cap.tokens[i, :b]))
                 for i, (a, b) in enumerate(zip(img.lengths, cap.lengths, strict=True))]  # fmt: skip
        tables = [torch.cat((img.rope[i, :a], cap.rope[i, :b]))
                  for i, (a, b) in enumerate(zip(img.lengths, cap.lengths, strict=True))]  # fmt: skip
        unified = batch_streams(lengths, joint, tables)
        hidden = unified.tokens
        for block in self.layers:
            hidden = block(hidden, unified.mask, unified.rope, temb)
        hidden = self.all_final_layer[f"{p}-{f}"](hidden, temb)  # (B, T_max, f*p*p*C)
        return [self.unpatchify(hidden[i], grids[i], p, f) for i in range(len(grids))]


__all__ = ["ZImageConfig", "ZImageTransformer2DModel", "rope_table"]
