"""Native Qwen-Image DiT against Diffusers' QwenImageTransformer2DModel on a tiny random checkpoint.

The Diffusers model is built with a fixed seed, every constant parameter randomised (references/tiny_build.py),
saved with `save_pretrained`; both sides load that folder. Inputs are what QwenImagePipeline passes: packed latent
tokens of a non-square grid (3 x 5), batch 2, text states with one padded prompt (mask) or none, timestep t/1000 in
the model dtype. fp32 must agree to float rounding and bitwise on the same attention kernel; bf16 must stay within
twice the difference between two correct bf16 runs of the reference itself (its default SDPA kernel against
torch's math kernel: `diffusers.models.attention_dispatch.attention_backend("_native_math")`).
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
from native_models.models.qwenimage_transformer import QwenImageTransformer2DModel, QwenRotary
from references.common.tiny_build import randomise_constant_parameters

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_dispatch import attention_backend as reference_attention_backend  # noqa: E402

TINY = {
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 4,
    "joint_attention_dim": 32,
    "axes_dims_rope": (4, 6, 6),
}
GRID = (1, 3, 5)  # (frames, rows, cols) of packed tokens: non-square, odd rows -> asymmetric centred positions
TEXT_LEN = 7
PROMPT_LENGTHS = (7, 4)  # second prompt padded
BATCH = 2
FP32_REL_L2 = 1e-6
BF16_FLOOR_FACTOR = 2.0


def make_inputs(dtype: torch.dtype, masked: bool = True, grid: tuple[int, int, int] = GRID) -> dict:
    """QwenImagePipeline's keywords: latents (B, N, C), timestep t.expand(B).to(dtype) / 1000, img_shapes."""
    gen = torch.Generator().manual_seed(1)
    tokens = grid[0] * grid[1] * grid[2]
    mask = torch.zeros(BATCH, TEXT_LEN, dtype=torch.long)
    for row, length in enumerate(PROMPT_LENGTHS):
        mask[row, :length] = 1
    text = torch.randn(BATCH, TEXT_LEN, TINY["joint_attention_dim"], generator=gen)
    text = text * mask[..., None]  # the pipeline zero-pads each prompt's states past its length
    return {
        "hidden_states": torch.randn(BATCH, tokens, TINY["in_channels"], generator=gen).to(dtype),
        "encoder_hidden_states": text.to(dtype),
        "encoder_hidden_states_mask": mask if masked else None,
        "timestep": torch.tensor([1000.0, 431.0]).to(dtype) / 1000,
        "img_shapes": [[grid]] * BATCH,
    }


class Models:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded: dict[torch.dtype, tuple[torch.nn.Module, QwenImageTransformer2DModel]] = {}

    def get(self, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, QwenImageTransformer2DModel]:
        if dtype not in self._loaded:
            reference = diffusers.QwenImageTransformer2DModel.from_pretrained(self.folder, torch_dtype=dtype).eval()
            self._loaded[dtype] = (reference, load_component(QwenImageTransformer2DModel, self.folder, dtype))
        return self._loaded[dtype]

    def outputs(self, dtype: torch.dtype = torch.float32, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected, actual) on the same inputs; native on the current attention backend."""
        reference, native = self.get(dtype)
        inputs = make_inputs(dtype, **kwargs)  # type: ignore[arg-type]
        with torch.no_grad():
            return reference(**inputs, return_dict=False)[0], native(**inputs)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    torch.manual_seed(0)
    reference = diffusers.QwenImageTransformer2DModel(**TINY)
    changed = randomise_constant_parameters(reference, seed=0, index=2)
    assert "txt_norm.weight" in changed and "transformer_blocks.0.attn.norm_q.weight" in changed
    folder = tmp_path_factory.mktemp("qwenimage") / "transformer"
    reference.save_pretrained(folder)
    return Models(folder)


def test_registered_for_checkpoints() -> None:
    assert MODEL_CLASSES["QwenImageTransformer2DModel"].endswith("qwenimage_transformer:QwenImageTransformer2DModel")


def test_state_dict_names_and_values_match(models: Models) -> None:
    reference, native = models.get()
    expected, actual = reference.state_dict(), native.state_dict()
    assert sorted(actual) == sorted(expected)
    assert all(torch.equal(actual[k], v) for k, v in expected.items())


@pytest.mark.parametrize("masked", [True, False], ids=["text-mask", "no-mask"])
def test_fp32_matches_diffusers(models: Models, masked: bool) -> None:
    expected, actual = models.outputs(masked=masked)
    assert actual.shape == expected.shape == (BATCH, GRID[1] * GRID[2], 4 * TINY["out_channels"])
    err, max_abs = rel_l2(actual, expected), (actual - expected).abs().max().item()
    print(f"qwen-image DiT fp32 masked={masked}: rel L2 {err:.3e}, max abs {max_abs:.3e}")
    assert err <= FP32_REL_L2, f"fp32 rel L2 {err:.3e} > {FP32_REL_L2} (max abs {max_abs:.3e})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bitwise_equal_on_the_same_attention_kernel(models: Models, dtype: torch.dtype) -> None:
    """On torch's own SDPA kernel choice (what Diffusers calls) every other op is mirrored exactly."""
    with attention_backend("sdpa"):
        expected, actual = models.outputs(dtype)
    assert torch.equal(actual, expected), f"max abs diff {(actual - expected).abs().max().item():.3e}"


def test_bf16_within_measured_floor(models: Models) -> None:
    expected, actual = models.outputs(torch.bfloat16)
    reference, _ = models.get(torch.bfloat16)
    with torch.no_grad(), reference_attention_backend("_native_math"):
        other_kernel = reference(**make_inputs(torch.bfloat16), return_dict=False)[0]
    floor, err = rel_l2(other_kernel, expected), rel_l2(actual, expected)
    max_abs = (actual.double() - expected.double()).abs().max().item()
    print(f"qwen-image DiT bf16: native rel L2 {err:.3e} (max abs {max_abs:.3e}); floor (reference sdpa vs math "
          f"kernel) {floor:.3e}")
    assert floor > 0, "the reference's two attention kernels agree bitwise: no floor measured"
    assert err <= BF16_FLOOR_FACTOR * floor, f"bf16 rel L2 {err:.3e} > {BF16_FLOOR_FACTOR} x floor {floor:.3e}"


def test_text_mask_changes_the_output(models: Models) -> None:
    """Padded text keys are masked: dropping the mask changes the image stream of the padded prompt only."""
    _, native = models.get()
    with torch.no_grad():
        masked = native(**make_inputs(torch.float32))
        unmasked = native(**make_inputs(torch.float32, masked=False))
    assert torch.equal(masked[0], unmasked[0])  # the full prompt has nothing to mask
    assert rel_l2(masked[1], unmasked[1]) > 1e-3


def test_rotary_tables_match_diffusers(models: Models) -> None:
    """Centred image positions and text positions after them, bit for bit, for an odd and an even grid."""
    reference, native = models.get()
    for grid in ((1, 3, 5), (1, 4, 2), (2, 5, 4)):
        ref_img, ref_txt = reference.pos_embed([[grid]], max_txt_seq_len=TEXT_LEN, device=torch.device("cpu"))
        assert torch.equal(native.pos_embed(grid), ref_img), grid
        assert torch.equal(native.pos_embed.text_table(grid, TEXT_LEN), ref_txt), grid


def test_uncentred_rotary_is_detected(models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows and columns counted from 0 (scale_rope=False) instead of centred must show."""
    import native_models.models.qwenimage_transformer as module

    expected, _ = models.outputs()
    monkeypatch.setattr(module, "centred", lambda n: torch.arange(n))
    _, wrong = models.outputs()
    assert rel_l2(wrong, expected) > 1e-3


def test_rotary_range_is_the_reference_range() -> None:
    rope = QwenRotary((4, 6, 6))
    with pytest.raises(ValueError, match="exceeds the reference's rotary range of 4096"):
        rope((1, 8194, 2))
    with pytest.raises(ValueError, match="5000 text tokens after image position 1"):
        rope.text_table((1, 3, 2), 5000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"guidance_embeds": True}, "guidance_embeds=True is not supported"),
        ({"zero_cond_t": True}, "zero_cond_t=True"),
        ({"use_layer3d_rope": True}, "use_layer3d_rope=True"),
        ({"axes_dims_rope": (4, 6, 8)}, r"sums to 18, but attention_head_dim=16"),
        ({"pooled_projection_dim": 8}, r"unsupported Qwen-Image transformer config keys \['pooled_projection_dim'\]"),
    ],
)
def test_unsupported_config_raises(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QwenImageTransformer2DModel.from_config({**TINY, "_class_name": "QwenImageTransformer2DModel", **change})


def test_loader_reports_unsupported_config(models: Models, tmp_path: Path) -> None:
    bad = tmp_path / "transformer"
    bad.mkdir()
    for file in models.folder.iterdir():
        (bad / file.name).write_bytes(file.read_bytes())
    config = (bad / "config.json").read_text().replace('"zero_cond_t": false', '"zero_cond_t": true')
    (bad / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="zero_cond_t=True"):
        load_component(QwenImageTransformer2DModel, bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"img_shapes": [[(1, 3, 4)]] * BATCH}, r"has 15 tokens but img_shapes \(1, 3, 4\) gives 12"),
        ({"img_shapes": [[(1, 3, 5)], [(1, 5, 3)]]}, "same image shape"),
        ({"timestep": torch.zeros(3)}, r"timestep must be \(B,\) = \(2,\), got \(3,\)"),
        ({"encoder_hidden_states_mask": torch.ones(BATCH, 3)}, r"encoder_hidden_states_mask must be \(2, 7\)"),
        ({"encoder_hidden_states": torch.zeros(BATCH, 7, 31)}, r"encoder_hidden_states must be \(2, L, 32\)"),
        ({"guidance": torch.ones(BATCH)}, "guidance must be None"),
    ],
)
def test_bad_inputs_raise(models: Models, change: dict, message: str) -> None:
    _, native = models.get()
    with pytest.raises(ValueError, match=message):
        native(**{**make_inputs(torch.float32), **change})
