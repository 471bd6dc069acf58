"""Native FLUX transformer against Diffusers' FluxTransformer2DModel on a tiny random checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from numerics import cosine, rel_l2

from native_models.attention import attention_backend
from native_models.errors import CheckpointError
from native_models.loader import load_component
from native_models.models.flux_transformer import FluxTransformer2DModel
from native_models.models.rope import apply_rotary, rotary_cos_sin, timestep_embedding

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is first imported (by diffusers)
diffusers = pytest.importorskip("diffusers")

TINY = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": [4, 6, 6],
}
GRID = (3, 5)  # latent token grid (h, w): non-square so the two spatial rotary axes differ
TEXT_LEN = 7
BATCH = 2


def image_ids(height: int, width: int) -> torch.Tensor:
    """Position ids (h*w, 3) laid out as FluxPipeline._prepare_latent_image_ids does: (0, row, col)."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(height * width, 3)


def make_inputs(guidance: bool, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(1)
    n = GRID[0] * GRID[1]
    return {
        "hidden_states": torch.randn(BATCH, n, TINY["in_channels"], generator=gen).to(dtype),
        "encoder_hidden_states": torch.randn(BATCH, TEXT_LEN, TINY["joint_attention_dim"], generator=gen).to(dtype),
        "pooled_projections": torch.randn(BATCH, TINY["pooled_projection_dim"], generator=gen).to(dtype),
        "timestep": torch.tensor([0.73, 0.215]).to(dtype),  # already /1000, as FluxPipeline passes it
        "img_ids": image_ids(*GRID).to(dtype),
        "txt_ids": torch.zeros(TEXT_LEN, 3).to(dtype),
        "guidance": torch.full((BATCH,), 3.5).to(dtype) if guidance else None,
    }


@dataclass
class Case:
    """One tiny random checkpoint on disk, with both sides loaded from it once per dtype."""

    folder: Path
    guidance: bool
    _loaded: dict[torch.dtype, tuple[torch.nn.Module, FluxTransformer2DModel]] = field(default_factory=dict)

    def models(self, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, FluxTransformer2DModel]:
        """(Diffusers reference, native) in `dtype`, both read from the same safetensors file."""
        if dtype not in self._loaded:
            reference = diffusers.FluxTransformer2DModel.from_pretrained(self.folder, torch_dtype=dtype).eval()
            self._loaded[dtype] = (reference, load_component(FluxTransformer2DModel, self.folder, dtype))
        return self._loaded[dtype]

    def outputs(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected, actual) on the same random inputs, native on the default (CPU: math) attention backend."""
        reference, native = self.models(dtype)
        inputs = make_inputs(self.guidance, dtype)
        return run_reference(reference, inputs), run_native(native, inputs)


@pytest.fixture(scope="module", params=[True, False], ids=["guidance", "no-guidance"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    guidance = request.param
    torch.manual_seed(0)
    reference = diffusers.FluxTransformer2DModel(**TINY, guidance_embeds=guidance)
    with torch.no_grad():  # RMSNorm weights start at one; perturb them so a dropped norm weight shows
        for name, param in reference.named_parameters():
            if "norm_" in name:
                param.add_(0.2 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("flux") / "transformer"
    reference.save_pretrained(folder)
    return Case(folder, guidance)


def run_reference(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def run_native(model: FluxTransformer2DModel, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


def test_state_dict_keys_match(case: Case) -> None:
    reference, native = case.models()
    assert sorted(native.state_dict()) == sorted(reference.state_dict())


def test_fp32_matches_diffusers(case: Case) -> None:
    expected, actual = case.outputs()
    assert actual.shape == expected.shape == (BATCH, GRID[0] * GRID[1], TINY["in_channels"])
    err = rel_l2(actual, expected)
    max_abs = (actual - expected).abs().max().item()
    print(f"fp32 guidance={case.guidance}: rel L2 {err:.3e}, max abs {max_abs:.3e}")
    assert err <= 1e-6, f"fp32 rel L2 {err:.3e} > 1e-6 (max abs {max_abs:.3e})"
    assert max_abs <= 1e-5, f"fp32 max abs diff {max_abs:.3e}"


def test_bf16_matches_diffusers(case: Case) -> None:
    expected, actual = case.outputs(torch.bfloat16)
    assert actual.dtype == expected.dtype == torch.bfloat16
    cos, err = cosine(actual, expected), rel_l2(actual, expected)
    print(f"bf16 guidance={case.guidance}: cosine {cos:.7f}, rel L2 {err:.3e}")
    assert cos >= 0.999, f"bf16 cosine {cos:.6f} < 0.999 (rel L2 {err:.3e})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bitwise_equal_on_the_same_attention_kernel(case: Case, dtype: torch.dtype) -> None:
    """On torch's own SDPA kernel choice (what Diffusers calls) every other op is mirrored exactly."""
    with attention_backend("sdpa"):
        expected, actual = case.outputs(dtype)
    assert torch.equal(actual, expected), f"max abs diff {(actual - expected).abs().max().item():.3e}"


def test_split_half_rotary_is_detected(case: Case) -> None:
    _, native = case.models()
    native.rope_interleaved = False
    try:
        expected, wrong = case.outputs()
    finally:
        native.rope_interleaved = True
    err = rel_l2(wrong, expected)
    print(f"split-half rotary guidance={case.guidance}: rel L2 {err:.3e}")
    assert err > 1e-3, f"swapping the rotary style changed the output by only {err:.3e}"


def test_rotary_tables_match_diffusers() -> None:
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    ids = torch.cat((torch.zeros(TEXT_LEN, 3), image_ids(*GRID)))
    ref_cos, ref_sin = FluxPosEmbed(theta=10000, axes_dim=TINY["axes_dims_rope"])(ids)
    cos, sin = rotary_cos_sin(ids, TINY["axes_dims_rope"])
    assert torch.equal(cos.repeat_interleave(2, dim=-1), ref_cos)
    assert torch.equal(sin.repeat_interleave(2, dim=-1), ref_sin)


def test_apply_rotary_matches_diffusers() -> None:
    from diffusers.models.embeddings import apply_rotary_emb

    ids = image_ids(*GRID)
    cos, sin = rotary_cos_sin(ids, TINY["axes_dims_rope"])
    x = torch.randn(BATCH, ids.shape[0], 2, 16, generator=torch.Generator().manual_seed(3)).bfloat16()  # (B,L,H,D)
    ref = (cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1))
    expected = apply_rotary_emb(x, ref, sequence_dim=1)
    assert torch.equal(apply_rotary(x, cos[:, None], sin[:, None]), expected)
    split_ref = (torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1))
    split_expected = apply_rotary_emb(x, split_ref, use_real_unbind_dim=-2, sequence_dim=1)
    assert torch.equal(apply_rotary(x, cos[:, None], sin[:, None], interleaved=False), split_expected)


def test_timestep_embedding_matches_diffusers() -> None:
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.5, 215.0, 730.0, 999.0])
    expected = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.equal(timestep_embedding(t), expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patch_size": 2}, "patch_size=2"),
        ({"axes_dims_rope": [4, 6, 8]}, "axes_dims_rope=[4, 6, 8]"),
        ({"qk_norm": "layer_norm"}, "qk_norm"),
    ],
)
def test_unsupported_config_raises(change: dict, message: str, tmp_path: Path) -> None:
    config = {**TINY, "guidance_embeds": True, "_class_name": "FluxTransformer2DModel", **change}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        FluxTransformer2DModel.from_config(config)


def test_loader_reports_unsupported_config(case: Case, tmp_path: Path) -> None:
    bad = tmp_path / "transformer"
    bad.mkdir()
    for file in case.folder.iterdir():
        (bad / file.name).write_bytes(file.read_bytes())
    config = (bad / "config.json").read_text().replace('"patch_size": 1', '"patch_size": 2')
    (bad / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="patch_size=2"):
        load_component(FluxTransformer2DModel, bad)
