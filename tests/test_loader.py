"""The one-copy loader (native_models/loader.py): meta build + memory-mapped materialisation gives the same
modules, bit for bit, as the path it replaced (fp32 build with random init, whole state dict read, load_state_dict,
`.to(dtype)`); sharded folders load; bf16-stored weights are upcast in an fp32 run; every refusal is one line
naming the tensor and its file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file, save_file

from native_models.components import MODEL_CLASSES, model_class
from native_models.errors import CheckpointError
from native_models.loader import (
    check_component,
    load_component,
    read_json,
    read_model_index,
    resident_bytes,
    weight_files,
)
from native_models.models.clip_text import CLIPTextModelWithProjection
from native_models.models.clip_vision import CLIPVisionModelWithProjection

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def tiny_wan() -> Path:
    from references.wan.tiny import tiny_wan_checkpoint

    return tiny_wan_checkpoint(seed=0)


@pytest.fixture(scope="module")
def tiny_wan_i2v() -> Path:
    """Wan 2.1 I2V layout: CLIP vision tower, DiT with the image path, the VAE with its encoder."""
    from references.wan.tiny import TinyWanConfig, tiny_wan_checkpoint

    return tiny_wan_checkpoint(seed=0, config=TinyWanConfig(image_to_video=True))


@pytest.fixture(scope="module")
def tiny_llm_families() -> tuple[Path, Path]:
    """Qwen-Image (Qwen2.5-VL text encoder, QwenImage DiT and VAE) and Z-Image (Qwen3, Z-Image DiT)."""
    from references.qwenimage.tiny import tiny_qwenimage_checkpoint
    from references.zimage.tiny import tiny_zimage_checkpoint

    return tiny_qwenimage_checkpoint(seed=0), tiny_zimage_checkpoint(seed=0)


def legacy_load(cls: type, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The loader this one replaced, reduced to its numerics: build in fp32 (random init), read every tensor
    into memory, load strictly, cast the whole model."""
    model = cls.from_config(read_json(folder / "config.json"))
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        state.update(safetensors_load(file.read_bytes()))
    convert = getattr(model, "convert_checkpoint_keys", None)
    model.load_state_dict(convert(state) if convert else state, strict=True)
    return model.to(dtype=dtype).eval()


def assert_same_modules(new: torch.nn.Module, old: torch.nn.Module) -> None:
    """Every parameter and buffer: same name, dtype, device, shape, strides, requires_grad and bits."""
    new_tensors = dict([*new.named_parameters(remove_duplicate=False), *new.named_buffers(remove_duplicate=False)])
    old_tensors = dict([*old.named_parameters(remove_duplicate=False), *old.named_buffers(remove_duplicate=False)])
    assert list(new_tensors) == list(old_tensors)
    for name, tensor in new_tensors.items():
        reference = old_tensors[name]
        assert (tensor.dtype, tensor.device, tensor.shape, tensor.stride(), tensor.requires_grad) == (
            reference.dtype, reference.device, reference.shape, reference.stride(), reference.requires_grad), name
        bits = tensor.detach().reshape(-1).view(torch.uint8)
        assert torch.equal(bits, reference.detach().reshape(-1).view(torch.uint8)), name
    assert new.training is False and old.training is False


def to_bf16_storage(folder: Path, target: Path) -> Path:
    """A copy of a component folder with every floating tensor stored in bf16, as public repositories ship."""
    shutil.copytree(folder, target)
    for file in weight_files(target):
        state = load_file(str(file))
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}, str(file))
    return target


def components(checkpoint: Path) -> list[tuple[str, type]]:
    return [(name, model_class(class_name)) for name, (_, class_name) in read_model_index(checkpoint).items()
            if class_name in MODEL_CLASSES]


def test_every_native_model_class_is_covered(tiny_flux: Path, tiny_wan: Path, tiny_wan_i2v: Path,
                                             tiny_llm_families: tuple[Path, Path]) -> None:
    """Two classes are in no tiny checkpoint and load elsewhere: CLIPVisionModelWithProjection in
    test_clip_vision_with_projection_loads_as_before, Qwen3ForCausalLM (a Z-Image text-encoder layout) in
    tests/test_qwen3_text_encoder.py through load_component."""
    checkpoints = (tiny_flux, tiny_wan, tiny_wan_i2v, *tiny_llm_families)
    covered = {cls for checkpoint in checkpoints for _, cls in components(checkpoint)}
    elsewhere = {CLIPVisionModelWithProjection, model_class("Qwen3ForCausalLM")}
    assert covered | elsewhere == {model_class(name) for name in MODEL_CLASSES}


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("family", ["flux", "wan", "wan_i2v", "qwenimage", "zimage"])
def test_meta_build_and_mmap_give_the_old_modules_bit_for_bit(family: str, dtype: str, storage: str,
                                                              tiny_flux: Path, tiny_wan: Path, tiny_wan_i2v: Path,
                                                              tiny_llm_families: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    """fp16 is no run dtype, but it is where T5 keeps `wo` in fp32: each class's own cast rules plan the dtypes."""
    qwenimage, zimage = tiny_llm_families
    checkpoint = {"flux": tiny_flux, "wan": tiny_wan, "wan_i2v": tiny_wan_i2v, "qwenimage": qwenimage,
                  "zimage": zimage}[family]
    run_dtype = {**DTYPES, "fp16": torch.float16}[dtype]
    for name, cls in components(checkpoint):
        folder = checkpoint / name
        if storage == "bf16":
            folder = to_bf16_storage(folder, tmp_path / name)
        assert_same_modules(load_component(cls, folder, run_dtype), legacy_load(cls, folder, run_dtype))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_resident_bytes_are_known_before_loading(dtype: str, tiny_flux: Path, tiny_wan: Path,
                                                 tiny_wan_i2v: Path) -> None:
    for checkpoint in (tiny_flux, tiny_wan, tiny_wan_i2v):
        for name, cls in components(checkpoint):
            model = load_component(cls, checkpoint / name, DTYPES[dtype])
            held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
            assert resident_bytes(cls, checkpoint / name, DTYPES[dtype]) == held, name


def test_clip_with_projection_loads_as_before(tmp_path: Path) -> None:
    from transformers import CLIPTextConfig
    from transformers import CLIPTextModelWithProjection as Reference

    torch.manual_seed(0)
    Reference(CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, projection_dim=16,
                             num_hidden_layers=2, num_attention_heads=4)).save_pretrained(tmp_path)
    for dtype in DTYPES.values():
        assert_same_modules(load_component(CLIPTextModelWithProjection, tmp_path, dtype),
                            legacy_load(CLIPTextModelWithProjection, tmp_path, dtype))


def test_clip_vision_with_projection_loads_as_before(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig
    from transformers import CLIPVisionModelWithProjection as Reference

    torch.manual_seed(0)
    Reference(CLIPVisionConfig(hidden_size=32, intermediate_size=48, projection_dim=16, num_hidden_layers=2,
                               num_attention_heads=4, image_size=28, patch_size=7)).save_pretrained(tmp_path)
    for dtype in DTYPES.values():
        assert_same_modules(load_component(CLIPVisionModelWithProjection, tmp_path, dtype),
                            legacy_load(CLIPVisionModelWithProjection, tmp_path, dtype))


def test_bf16_stored_weights_are_upcast_in_an_fp32_run(tiny_wan: Path, tmp_path: Path) -> None:
    folder = to_bf16_storage(tiny_wan / "transformer", tmp_path / "transformer")
    stored = load_file(str(weight_files(folder)[0]))
    cls = model_class("WanTransformer3DModel")
    model = load_component(cls, folder, torch.float32)
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32 and torch.equal(param, stored[name].float()), name
    # a bf16 run keeps Diffusers' fp32 modules in float32, upcast from the stored bf16 (not rounded twice)
    model = load_component(cls, folder, torch.bfloat16)
    kept = dict(model.named_parameters())
    assert kept["scale_shift_table"].dtype == torch.float32
    assert kept["blocks.0.norm2.weight"].dtype == torch.float32
    assert kept["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    assert torch.equal(kept["scale_shift_table"], stored["scale_shift_table"].float())
    assert model.rope.freqs_cos.dtype == torch.float32  # non-persistent buffer, computed at build, kept fp32


# ---- sharded folders, as Diffusers and transformers write them ------------------------------------------------


@pytest.fixture(scope="module")
def sharded_flux(tiny_flux: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny FLUX transformer and T5 saved by Diffusers/transformers themselves in bf16, sharded small."""
    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    out = tmp_path_factory.mktemp("sharded")
    FluxTransformer2DModel.from_pretrained(tiny_flux / "transformer", torch_dtype=torch.bfloat16).save_pretrained(
        out / "transformer", max_shard_size="40KB")
    T5EncoderModel.from_pretrained(tiny_flux / "text_encoder_2", dtype=torch.bfloat16).save_pretrained(
        out / "text_encoder_2", max_shard_size="20KB")
    return out


@pytest.mark.parametrize("component, class_name", [("transformer", "FluxTransformer2DModel"),
                                                   ("text_encoder_2", "T5EncoderModel")])
def test_a_sharded_folder_with_an_index_loads(component: str, class_name: str, sharded_flux: Path) -> None:
    folder = sharded_flux / component
    assert len(weight_files(folder)) >= 3 and list(folder.glob("*.safetensors.index.json"))
    cls = model_class(class_name)
    check_component(cls, folder)
    for dtype in DTYPES.values():
        assert_same_modules(load_component(cls, folder, dtype), legacy_load(cls, folder, dtype))


def edit_index(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    index = next(folder.glob("*.safetensors.index.json"))
    data = json.loads(index.read_text())
    change(data["weight_map"])
    index.write_text(json.dumps(data))


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*-of-*.safetensors"))


def index_names_a_ghost(folder: Path) -> None:
    edit_index(folder, lambda weight_map: weight_map.__setitem__("ghost.weight", shards(folder)[0].name))


def index_names_the_wrong_shard(folder: Path) -> None:
    def move(weight_map: dict[str, str]) -> None:
        name = next(n for n, shard in sorted(weight_map.items()) if shard != shards(folder)[-1].name)
        weight_map[name] = shards(folder)[-1].name

    edit_index(folder, move)


def cut_two_bytes(folder: Path) -> None:
    shard = shards(folder)[1]
    shard.write_bytes(shard.read_bytes()[:-2])  # the last bf16 value loses its bytes


def store_twice(folder: Path) -> None:
    first, second = shards(folder)[:2]
    save_file({**load_file(str(second)), **load_file(str(first))}, str(second))


SHARD_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "index-names-a-tensor-no-shard-holds": (index_names_a_ghost,
                                            "names tensor 'ghost.weight' in diffusion_pytorch_model-00001-of-"),
    "index-names-the-wrong-shard": (index_names_the_wrong_shard, "which does not hold it"),
    "missing-shard": (lambda folder: shards(folder)[-1].unlink(), "missing weight shard"),
    "short-bf16-shard": (cut_two_bytes, "header declares"),
    "tensor-stored-twice": (store_twice, "is stored twice"),
}


@pytest.mark.parametrize("name", list(SHARD_DAMAGE))
def test_a_damaged_sharded_folder_is_one_line_before_any_data(name: str, sharded_flux: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder = shutil.copytree(sharded_flux / "transformer", tmp_path / "transformer")
    damage, needle = SHARD_DAMAGE[name]
    damage(folder)
    cls = model_class("FluxTransformer2DModel")
    with pytest.raises(CheckpointError) as info:
        check_component(cls, folder)  # what the plan runs before the reference side touches the folder
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)

    import native_models.loader as loader

    def no_data(*args: object) -> None:
        raise AssertionError("tensor data was mapped before every shard was validated")

    monkeypatch.setattr(loader, "MappedSafetensors", no_data)
    with pytest.raises(CheckpointError) as info:
        load_component(cls, folder)
    assert needle in str(info.value) and "\n" not in str(info.value)


# ---- NaN / infinity: found while copying, named with tensor and file --------------------------------------------


def plant(file: Path, name: str, value: float, dtype: torch.dtype | None = None) -> None:
    state = load_file(str(file))
    tensor = state[name].clone() if dtype is None else state[name].to(dtype)
    tensor.view(-1)[1] = value
    state[name] = tensor
    save_file(state, str(file))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_planted_non_finite_value_is_refused_naming_tensor_and_shard(value: float, sharded_flux: Path,
                                                                        tmp_path: Path) -> None:
    folder = shutil.copytree(sharded_flux / "transformer", tmp_path / "transformer")
    shard = sorted(folder.glob("*-of-*.safetensors"))[1]
    name = sorted(load_file(str(shard)))[-1]
    plant(shard, name, value)
    for dtype in DTYPES.values():
        with pytest.raises(CheckpointError) as info:
            load_component(model_class("FluxTransformer2DModel"), folder, dtype)
        message = str(info.value)
        assert message == f"{shard}: tensor '{name}' holds 1 non-finite value(s) (NaN or infinity)"


def test_a_value_beyond_bf16_range_is_refused_in_a_bf16_run_only(tiny_flux_copy: Path) -> None:
    file = weight_files(tiny_flux_copy / "transformer")[0]
    plant(file, "proj_out.weight", 3.4e38)  # finite in fp32, infinite once rounded to bf16
    cls = model_class("FluxTransformer2DModel")
    assert load_component(cls, tiny_flux_copy / "transformer", torch.float32).proj_out.weight.isfinite().all()
    with pytest.raises(CheckpointError, match=r"tensor 'proj_out.weight' has 1 value\(s\) beyond the range of "
                                              r"torch.bfloat16 \(stored as torch.float32"):
        load_component(cls, tiny_flux_copy / "transformer", torch.bfloat16)


def test_finite_weights_whose_sum_overflows_still_load(tiny_flux_copy: Path) -> None:
    """The sum is only a fast screen: finite values adding up past float32's range are checked exactly."""
    file = weight_files(tiny_flux_copy / "transformer")[0]
    state = load_file(str(file))
    state["proj_out.weight"] = torch.full_like(state["proj_out.weight"], 3e38)
    save_file(state, str(file))
    model = load_component(model_class("FluxTransformer2DModel"), tiny_flux_copy / "transformer")
    assert torch.equal(model.proj_out.weight, state["proj_out.weight"])


# ---- what a model class may do: tied weights, persistent buffers, buffers built from parameters ------------------


class Toy(torch.nn.Module):
    """Tied weights, a persistent buffer stored in the file, a non-persistent one computed at build."""

    def __init__(self, width: int, bad_buffer: bool = False) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, width)
        self.head = torch.nn.Linear(width, 10, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.ones(width))
        self.register_buffer("table", torch.arange(width, dtype=torch.float32) / width, persistent=False)
        if bad_buffer:  # a buffer derived from a parameter's device: on meta while the loader builds
            self.register_buffer("derived", torch.zeros(width, device=self.head.weight.device), persistent=False)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Toy:
        return cls(config["width"], config.get("bad_buffer", False))


def toy_folder(tmp_path: Path, **config: Any) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"width": 4, **config}))
    save_file({"embed.weight": torch.randn(10, 4), "head.weight": torch.randn(10, 4), "scale": torch.rand(4)},
              str(tmp_path / "model.safetensors"))
    return tmp_path


def test_tied_weights_stay_tied_and_buffers_load_or_build(tmp_path: Path) -> None:
    model = load_component(Toy, toy_folder(tmp_path), torch.bfloat16)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert model.head.weight is model.embed.weight
    assert torch.equal(model.embed.weight, stored["embed.weight"].to(torch.bfloat16))  # the first name wins
    assert torch.equal(model.scale, stored["scale"].to(torch.bfloat16))
    assert torch.equal(model.table, (torch.arange(4, dtype=torch.float32) / 4).to(torch.bfloat16))


def test_a_buffer_built_from_a_parameter_device_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"left 1 tensor\(s\) unloaded, e.g. \['derived'\]"):
        load_component(Toy, toy_folder(tmp_path, bad_buffer=True))


# ---- large tensors: copied in chunks, each chunk's pages released -------------------------------------------


def test_a_chunked_copy_tiles_the_tensor_and_screens_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    import native_models.materialise as materialise

    monkeypatch.setattr(materialise, "CHUNK_BYTES", 4096)
    source = torch.randn(10_000)  # 40000 bytes: nine full chunks and a short one
    released: list[tuple[int, int]] = []
    value, total = materialise.copy_screened(source, torch.bfloat16, torch.device("cpu"),
                                             lambda start, stop: released.append((start, stop)))
    assert released == [(start, min(start + 4096, 40_000)) for start in range(0, 40_000, 4096)]
    assert torch.equal(value, source.to(torch.bfloat16)) and bool(torch.isfinite(total))
    source[9_000] = float("nan")  # in the last chunk
    assert not bool(torch.isfinite(materialise.copy_screened(source, torch.float32, torch.device("cpu"))[1]))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_chunked_loads_are_the_old_modules_and_still_find_a_nan(dtype: str, tiny_flux_copy: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import native_models.materialise as materialise

    monkeypatch.setattr(materialise, "CHUNK_BYTES", 1024)  # the tiny transformer's larger tensors are 4-16 KB
    cls, folder = model_class("FluxTransformer2DModel"), tiny_flux_copy / "transformer"
    assert_same_modules(load_component(cls, folder, DTYPES[dtype]), legacy_load(cls, folder, DTYPES[dtype]))
    file = weight_files(folder)[0]
    state = load_file(str(file))
    state["proj_out.weight"].view(-1)[-1] = float("inf")  # in the last chunk of a 4 KB tensor
    save_file(state, str(file))
    with pytest.raises(CheckpointError, match=r"tensor 'proj_out.weight' holds 1 non-finite value\(s\)"):
        load_component(cls, folder, DTYPES[dtype])
