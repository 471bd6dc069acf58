"""Native Z-Image DiT against Diffusers' ZImageTransformer2DModel on a tiny random checkpoint.

Built with a fixed seed, every constant parameter randomised (the zero-initialised pad tokens and the norm weights
included: references/tiny_build.py), saved with `save_pretrained`; both sides load that folder. Inputs are what
ZImagePipeline passes: one latent (C, 1, H, W) per sample, t = (1000 - timestep) / 1000, one prompt-state tensor
per sample. The cases cover captions of different padded lengths (7 and 40 tokens -> 32 and 64: key masks in the
caption refiner and the main layers), a non-square 3 x 5 token grid (15 tokens, padded with the image pad token to
32), and a batch with nothing to pad. fp32 must agree to rounding and bitwise on the same attention kernel; bf16
within twice the difference between the reference's default SDPA kernel and torch's math kernel.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from numerics import rel_l2

from native_models.attention import attention_backend
from native_models.components import MODEL_CLASSES
from native_models.errors import CheckpointError
from native_models.loader import load_component
from native_models.models.zimage_transformer import ZImageConfig, ZImageTransformer2DModel, rope_table
from references.common.tiny_build import randomise_constant_parameters

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_dispatch import attention_backend as reference_attention_backend  # noqa: E402

TINY = {
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 4,
    "dim": 64,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 4,
    "n_kv_heads": 2,  # read and ignored, as by Diffusers
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": 32,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [4, 6, 6],
    "axes_lens": [160, 32, 32],
}
CASES = {  # name -> (latent (H, W), caption lengths)
    "padded": ((6, 10), (7, 40)),  # 3 x 5 tokens -> 32; captions -> 32 and 64 tokens: masks everywhere
    "unpadded": ((8, 16), (32, 32)),  # 4 x 8 = 32 tokens, captions of 32: no pad token, no mask
}
FP32_REL_L2 = 1e-6
BF16_FLOOR_FACTOR = 2.0


def make_inputs(case: str, dtype: torch.dtype) -> dict:
    """ZImagePipeline's call: x list of (C, 1, H, W), t = (1000 - timestep) / 1000, cap_feats list."""
    (h, w), caption_lengths = CASES[case]
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(len(caption_lengths), TINY["in_channels"], h, w, generator=gen).to(dtype)
    timestep = torch.tensor([999.0, 500.0])
    return {
        "x": list(latents.unsqueeze(2).unbind(dim=0)),
        "t": (1000 - timestep) / 1000,
        "cap_feats": [torch.randn(n, TINY["cap_feat_dim"], generator=gen).to(dtype) for n in caption_lengths],
    }


class Models:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded: dict[torch.dtype, tuple[torch.nn.Module, ZImageTransformer2DModel]] = {}

    def get(self, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, ZImageTransformer2DModel]:
        if dtype not in self._loaded:
            reference = diffusers.ZImageTransformer2DModel.from_pretrained(self.folder, torch_dtype=dtype).eval()
            self._loaded[dtype] = (reference, load_component(ZImageTransformer2DModel, self.folder, dtype))
        return self._loaded[dtype]

    def reference(self, dtype: torch.dtype, case: str) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack(self.get(dtype)[0](**make_inputs(case, dtype), return_dict=False)[0])

    def native(self, dtype: torch.dtype, case: str) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack(self.get(dtype)[1](**make_inputs(case, dtype)))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    torch.manual_seed(0)
    reference = diffusers.ZImageTransformer2DModel(**TINY)
    changed = randomise_constant_parameters(reference, seed=0, index=4)
    assert {"x_pad_token", "cap_pad_token", "cap_embedder.0.weight"} <= set(changed)
    folder = tmp_path_factory.mktemp("zimage") / "transformer"
    reference.save_pretrained(folder)
    return Models(folder)


def test_registered_for_checkpoints() -> None:
    assert MODEL_CLASSES["ZImageTransformer2DModel"].endswith("zimage_transformer:ZImageTransformer2DModel")


def test_state_dict_names_and_values_match(models: Models) -> None:
    reference, native = models.get()
    expected, actual = reference.state_dict(), native.state_dict()
    assert sorted(actual) == sorted(expected)
    assert all(torch.equal(actual[k], v) for k, v in expected.items())


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_diffusers(models: Models, case: str) -> None:
    expected, actual = models.reference(torch.float32, case), models.native(torch.float32, case)
    (h, w), lengths = CASES[case]
    assert actual.shape == expected.shape == (len(lengths), TINY["in_channels"], 1, h, w)
    err, max_abs = rel_l2(actual, expected), (actual - expected).abs().max().item()
    print(f"z-image DiT fp32 {case}: rel L2 {err:.3e}, max abs {max_abs:.3e}")
    assert err <= FP32_REL_L2, f"fp32 rel L2 {err:.3e} > {FP32_REL_L2} (max abs {max_abs:.3e})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_bitwise_equal_on_the_same_attention_kernel(models: Models, dtype: torch.dtype, case: str) -> None:
    with attention_backend("sdpa"):
        actual = models.native(dtype, case)
    expected = models.reference(dtype, case)
    assert torch.equal(actual, expected), f"max abs diff {(actual - expected).abs().max().item():.3e}"


def test_bf16_within_measured_floor(models: Models) -> None:
    expected, actual = models.reference(torch.bfloat16, "padded"), models.native(torch.bfloat16, "padded")
    with reference_attention_backend("_native_math"):
        other_kernel = models.reference(torch.bfloat16, "padded")
    floor, err = rel_l2(other_kernel, expected), rel_l2(actual, expected)
    print(f"z-image DiT bf16: native rel L2 {err:.3e} (max abs {(actual.double() - expected.double()).abs().max():.3e})"
          f"; floor (reference sdpa vs math kernel) {floor:.3e}")  # fmt: skip
    assert floor > 0, "the reference's two attention kernels agree bitwise: no floor measured"
    assert err <= BF16_FLOOR_FACTOR * floor


def test_timestep_convention_matters(models: Models) -> None:
    """Passing t / 1000 (FLUX's convention) instead of (1000 - t) / 1000 must show."""
    _, native = models.get()
    inputs = make_inputs("padded", torch.float32)
    with torch.no_grad():
        right = torch.stack(native(**inputs))
        wrong = torch.stack(native(**{**inputs, "t": 1 - inputs["t"]}))
    assert rel_l2(wrong, right) > 1e-3


def test_pad_tokens_are_used(models: Models) -> None:
    """The learned image and caption pad tokens reach the output (a zero or missing pad token is a fault)."""
    _, native = models.get()
    expected = models.native(torch.float32, "padded")
    for name in ("x_pad_token", "cap_pad_token"):
        token = getattr(native, name)
        saved = token.detach().clone()
        with torch.no_grad():
            token.zero_()
        try:
            changed = models.native(torch.float32, "padded")
        finally:
            with torch.no_grad():
                token.copy_(saved)
        assert rel_l2(changed, expected) > 1e-4, name


def test_rotary_matches_diffusers(models: Models) -> None:
    reference, _ = models.get()
    ids = torch.tensor([[0, 0, 0], [1, 0, 0], [65, 2, 4], [159, 31, 31]], dtype=torch.int32)
    assert torch.equal(rope_table(ids, ZImageConfig.from_dict(TINY)), reference.rope_embedder(ids))
    with pytest.raises(ValueError, match=r"position 160 outside the table of axes_lens\[0\]=160"):
        rope_table(torch.tensor([[160, 0, 0]]), ZImageConfig.from_dict(TINY))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"siglip_feat_dim": 16}, "siglip_feat_dim=16"),
        ({"axes_dims": [4, 6, 8]}, "must be even and sum to the head dim 16"),
        ({"n_heads": 5}, "dim=64 is not divisible by n_heads=5"),
        ({"all_f_patch_size": [1, 2]}, "of equal length"),
        ({"mystery": 1}, r"unsupported Z-Image transformer config keys \['mystery'\]"),
    ],
)
def test_unsupported_config_raises(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ZImageTransformer2DModel.from_config({**TINY, "_class_name": "ZImageTransformer2DModel", **change})


def test_loader_reports_unsupported_config(models: Models, tmp_path: Path) -> None:
    bad = tmp_path / "transformer"
    bad.mkdir()
    for file in models.folder.iterdir():
        (bad / file.name).write_bytes(file.read_bytes())
    config = (bad / "config.json").read_text().replace('"siglip_feat_dim": null', '"siglip_feat_dim": 16')
    (bad / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="siglip_feat_dim=16"):
        load_component(ZImageTransformer2DModel, bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"t": torch.zeros(3)}, r"t must be \(B,\) = \(2,\), got \(3,\)"),
        ({"x": [torch.zeros(4, 1, 6, 9)] * 2}, r"\(1, 6, 9\) does not divide by the patch"),
        ({"cap_feats": [torch.zeros(5, 31)] * 2}, r"cap_feats\[0\] must be \(L >= 1, 32\)"),
        ({"cap_feats": [torch.zeros(5, 32)]}, "one tensor per sample, got 2 and 1"),
        ({"patch_size": 4}, "patch_size=4, f_patch_size=1 not in this model's"),
    ],
)
def test_bad_inputs_raise(models: Models, change: dict, message: str) -> None:
    _, native = models.get()
    with pytest.raises(ValueError, match=message):
        native(**{**make_inputs("padded", torch.float32), **change})
