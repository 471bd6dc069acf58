"""Parity of the native CLIP vision encoder and CLIP image preprocessing with transformers, on tiny random towers.

The path WanImageToVideoPipeline.encode_image takes: a PIL image -> `CLIPImageProcessor` -> `CLIPVisionModel(...,
output_hidden_states=True).hidden_states[-2]`. The tower has the real patch geometry (224 px, patch 14: 257
tokens) at a tiny width, every parameter random (`randomise_constant_parameters`: LayerNorm weights and biases
too), saved with `save_pretrained` and loaded natively. The processor is compared pixel value by pixel value with
transformers' (the PIL backend, which is what `CLIPImageProcessor` is without torchvision, as in this lock).

Bars: the preprocessing is bit-identical (same PIL calls, same float64-then-float32 rounding); the tower fp32
rel_l2 <= 1e-5 on the default CPU kernel (measured <= 1.9e-7) and bit-identical on torch's SDPA choice (what
transformers calls), in fp32 and bf16; bf16 on the default kernel within transformers' own difference between the
two kernels (two correct bf16 implementations), measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from numerics import rel_l2
from safetensors.torch import save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from native_models.attention import attention_backend
from native_models.clip_image_processor import CLIPImageProcessor, CLIPImageProcessorConfig
from native_models.components import MODEL_CLASSES, is_known_class, load_native_component
from native_models.errors import CheckpointError
from native_models.loader import load_component, load_state_dict
from native_models.models.clip_vision import CLIPVisionHParams, CLIPVisionModel, CLIPVisionModelWithProjection
from references.common.tiny_build import randomise_constant_parameters

FP32_REL_L2 = 1e-5
PENULTIMATE = -2  # WanImageToVideoPipeline.encode_image: hidden_states[-2]


def vision_config(hidden_act: str = "gelu") -> transformers.CLIPVisionConfig:
    """ViT-H/14's geometry (224 px, patch 14, 257 tokens; Wan 2.1 I2V uses gelu) at a tiny width."""
    return transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, image_size=224,
        patch_size=14, projection_dim=16, hidden_act=hidden_act, layer_norm_eps=1e-5,
    )


def random_image(mode: str, height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    rgb = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "RGBA":
        return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if mode == "P":  # a palette image with a transparent index: composited onto white like an alpha band
        image = rgb.convert("P")
        image.info["transparency"] = 3
        return image
    if mode == "I;16":
        return PIL.Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    return rgb.convert(mode)  # RGB, L, LA, CMYK


MODES = ("RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16")
# (height, width): exact, smaller, Wan's 480x832 both ways, tall and thin, off by one, a single pixel
SIZES = ((224, 224), (100, 101), (480, 832), (832, 480), (3000, 17), (225, 224), (1, 1))


@pytest.fixture(scope="module")
def reference_processor() -> transformers.BaseImageProcessor:
    return transformers.CLIPImageProcessor()


@pytest.mark.parametrize("mode", MODES)
def test_preprocessing_bit_identical_to_transformers(mode: str, reference_processor: object) -> None:
    native = CLIPImageProcessor(CLIPImageProcessorConfig())
    for height, width in SIZES:
        image = random_image(mode, height, width, seed=height + width)
        expected = reference_processor(images=image, return_tensors="pt")["pixel_values"]  # type: ignore[operator]
        actual = native(image)
        assert actual.shape == expected.shape == (1, 3, 224, 224) and actual.dtype == expected.dtype == torch.float32
        assert torch.equal(actual, expected), f"{mode} {height}x{width}: max abs {(actual - expected).abs().max():.3e}"


@pytest.mark.parametrize(
    "options",
    [
        {"size": {"height": 50, "width": 70}, "crop_size": {"height": 40, "width": 64}},
        {"size": {"shortest_edge": 30}, "crop_size": {"height": 48, "width": 36}},  # crop beyond the image: padding
        {"do_center_crop": False, "size": {"shortest_edge": 64}, "resample": 2},
        {"rescale_factor": 1 / 127.5, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4], "resample": 1},
        {"do_normalize": False},
    ],
    ids=["fixed-size", "padded-crop", "no-crop-bilinear", "custom-stats-lanczos", "no-normalize"],
)
def test_preprocessing_options_from_the_saved_config(tmp_path: Path, options: dict) -> None:
    """A processor saved by transformers reads back natively (the component loader, by either class name) and
    computes the same pixels under each option."""
    reference = transformers.CLIPImageProcessor(**options)
    reference.save_pretrained(tmp_path)
    for class_name in ("CLIPImageProcessor", "CLIPImageProcessorPil"):
        assert is_known_class(class_name)
        native = load_native_component(".", class_name, tmp_path, torch.float32, torch.device("cpu"))
        for mode, (height, width) in (("RGB", (90, 61)), ("RGBA", (33, 120))):
            image = random_image(mode, height, width)
            expected = reference(images=image, return_tensors="pt")["pixel_values"]
            assert torch.equal(native(image), expected), f"{options} {mode}"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"size": {"longest_edge": 224}}, "size {'longest_edge': 224} is not supported"),
        ({"resample": 9}, "resample 9 is not a PIL filter"),
        ({"image_mean": [0.5, 0.5]}, r"image_mean must be three numbers"),
        ({"do_pad": True}, "unknown CLIPImageProcessor config key 'do_pad'"),
        ({"crop_size": {"height": 0, "width": 3}}, r"crop_size\['height'\] must be a positive integer"),
    ],
)
def test_preprocessing_rejects_what_it_does_not_reproduce(tmp_path: Path, config: dict, message: str) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        CLIPImageProcessor.from_pretrained(tmp_path)


class Towers:
    """One random tower per (class, activation), saved once; both sides loaded per dtype."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders: dict[tuple[str, str], Path] = {}

    def folder(self, with_projection: bool, hidden_act: str = "gelu") -> Path:
        key = ("projection" if with_projection else "plain", hidden_act)
        if key not in self.folders:
            torch.manual_seed(0)
            cls = transformers.CLIPVisionModelWithProjection if with_projection else transformers.CLIPVisionModel
            model = cls(vision_config(hidden_act)).eval()
            changed = randomise_constant_parameters(model, seed=0, index=3)
            assert any("pre_layrnorm" in name for name in changed)
            self.folders[key] = self.root / f"{key[0]}-{hidden_act}"
            model.save_pretrained(self.folders[key])
        return self.folders[key]


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> Towers:
    return Towers(tmp_path_factory.mktemp("clip-vision"))


def pixels(seed: int = 0) -> torch.Tensor:
    """Two images through the native processor (bit-identical to transformers', tested above): (2, 3, 224, 224)."""
    processor = CLIPImageProcessor(CLIPImageProcessorConfig())
    return torch.cat([processor(random_image("RGB", 480, 832, seed)), processor(random_image("RGBA", 300, 200))])


def load_pair(folder: Path, with_projection: bool, dtype: torch.dtype) -> tuple[torch.nn.Module, CLIPVisionModel]:
    cls = transformers.CLIPVisionModelWithProjection if with_projection else transformers.CLIPVisionModel
    native_cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
    reference = cls.from_pretrained(folder, dtype=dtype, use_safetensors=True).eval()
    return reference, load_component(native_cls, folder, dtype=dtype)


@pytest.mark.parametrize(
    ("with_projection", "hidden_act"), [(False, "gelu"), (False, "quick_gelu"), (True, "gelu")],
    ids=["plain-gelu", "plain-quick_gelu", "projection-gelu"],
)
def test_fp32_matches_transformers(towers: Towers, with_projection: bool, hidden_act: str) -> None:
    reference, native = load_pair(towers.folder(with_projection, hidden_act), with_projection, torch.float32)
    x = pixels()
    with torch.no_grad():
        expected = reference(pixel_values=x, output_hidden_states=True)
        actual = native(x, output_hidden_states=True)
        penultimate = native.hidden_state(x, PENULTIMATE)
    assert actual.hidden_states is not None and len(actual.hidden_states) == len(expected.hidden_states) == 4
    pairs = {f"hidden_states[{i}]": (a, b) for i, (a, b) in enumerate(zip(actual.hidden_states,
                                                                            expected.hidden_states, strict=True))}
    pairs["last_hidden_state"] = (actual.last_hidden_state, expected.last_hidden_state)
    pairs["penultimate"] = (penultimate, expected.hidden_states[PENULTIMATE])
    if with_projection:
        pairs["image_embeds"] = (actual.image_embeds, expected.image_embeds)
    else:
        pairs["pooler_output"] = (actual.pooler_output, expected.pooler_output)
    for name, (a, b) in pairs.items():
        assert a.shape == b.shape, f"{name}: {tuple(a.shape)} != {tuple(b.shape)}"
        err = rel_l2(a, b)
        print(f"CLIP vision fp32 {hidden_act} {name}: rel L2 {err:.3e}")
        assert err <= FP32_REL_L2, f"{name}: rel L2 {err:.3e}"
    assert penultimate.shape == (2, 257, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bitwise_equal_on_the_same_attention_kernel(towers: Towers, dtype: torch.dtype) -> None:
    reference, native = load_pair(towers.folder(False), False, dtype)
    x = pixels(1)
    with torch.no_grad(), attention_backend("sdpa"):
        expected = reference(pixel_values=x, output_hidden_states=True)
        actual = native(x, output_hidden_states=True)
        penultimate = native.hidden_state(x, PENULTIMATE)
    assert all(torch.equal(a, b) for a, b in zip(actual.hidden_states, expected.hidden_states, strict=True))
    assert torch.equal(actual.pooler_output, expected.pooler_output)
    assert torch.equal(penultimate, expected.hidden_states[PENULTIMATE]) and penultimate.dtype == dtype


def test_bf16_within_the_two_kernel_floor(towers: Towers) -> None:
    reference, native = load_pair(towers.folder(False), False, torch.bfloat16)
    x = pixels(2)
    with torch.no_grad():
        expected = reference(pixel_values=x, output_hidden_states=True).hidden_states[PENULTIMATE]
        with sdpa_kernel(SDPBackend.MATH):
            other_kernel = reference(pixel_values=x, output_hidden_states=True).hidden_states[PENULTIMATE]
        actual = native.hidden_state(x, PENULTIMATE)
    floor, err = rel_l2(other_kernel, expected), rel_l2(actual, expected)
    print(f"CLIP vision bf16 penultimate: rel L2 {err:.3e}, two-kernel floor {floor:.3e}")
    assert err <= floor


def test_penultimate_is_not_the_last(towers: Towers) -> None:
    """hidden_state(-2) runs one layer less than the last hidden state: the two differ (a fault would swap them)."""
    _, native = load_pair(towers.folder(False), False, torch.float32)
    x = pixels()
    with torch.no_grad():
        full = native(x, output_hidden_states=True)
        assert torch.equal(native.hidden_state(x, -1), full.last_hidden_state)
        assert torch.equal(native.hidden_state(x, 0), full.hidden_states[0])
        assert rel_l2(native.hidden_state(x, -2), full.last_hidden_state) > 1e-2
    with pytest.raises(ValueError, match=r"hidden state index 4 is outside -4..3 \(3 layers\)"):
        native.hidden_state(x, 4)


def test_loads_transformers4_layout(towers: Towers, tmp_path: Path) -> None:
    """Diffusers folders hold transformers 4.x files: `vision_model.`-prefixed keys, maybe a `position_ids` buffer.
    transformers 5 writes CLIPVisionModel without the prefix (the fixture's folders): both load."""
    folder = towers.folder(False)
    state = load_state_dict(folder)
    assert not any(key.startswith("vision_model.") for key in state)
    legacy = {f"vision_model.{k}": v.contiguous() for k, v in state.items()}
    legacy["vision_model.embeddings.position_ids"] = torch.arange(257)[None]
    target = tmp_path / "image_encoder"
    target.mkdir()
    (target / "config.json").write_text((folder / "config.json").read_text())
    save_file(legacy, target / "model.safetensors")
    reference, native = load_pair(folder, False, torch.float32)
    legacy_native = load_component(CLIPVisionModel, target)
    x = pixels()
    with torch.no_grad():
        assert torch.equal(legacy_native.hidden_state(x, -2), native.hidden_state(x, -2))
    assert MODEL_CLASSES["CLIPVisionModel"] == "native_models.models.clip_vision:CLIPVisionModel"


def test_rejects_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="'hidden_act' 'relu2'"):
        CLIPVisionHParams.from_config({"hidden_act": "relu2"})
    with pytest.raises(ValueError, match=r"'hidden_size' \(30\).*'num_attention_heads' \(4\)"):
        CLIPVisionHParams.from_config({"hidden_size": 30, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="model_type"):
        CLIPVisionHParams.from_config({"model_type": "clip_text_model"})
    native = CLIPVisionModel.from_config(vision_config().to_dict())
    with pytest.raises(ValueError, match=r"pixel_values must be \(B, 3, 224, 224\), got \(1, 3, 223, 224\)"):
        native.hidden_state(torch.zeros(1, 3, 223, 224), -2)
    with pytest.raises(ValueError, match="floating point"):
        native(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
