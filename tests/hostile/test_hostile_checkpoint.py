"""Hostile checkpoints: every malformed folder, JSON file, config or weight file is one CheckpointError line.

Entry points: `plan_native_run` (what `diffparity run --model` checks before Diffusers touches the folder),
`load_component` / `load_state_dict` (the loader), `read_safetensors_header`, `resolve_checkpoint`, and the CLI.
Nothing is unpickled (conftest.py fails any test that tries), nothing huge is allocated (`fails_fast`).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hostile_helpers import (
    HOSTILE,
    assert_one_line_error,
    assert_one_line_message,
    assert_only_error_json,
    fails_fast,
    make_symlink_loop,
)
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file, save_file

from harness.run import cases
from harness.run.native_runner import plan_native_run
from harness.run.request import GenerationRequest
from native_models.components import model_class
from native_models.errors import CheckpointError, RequestError
from native_models.loader import load_component, load_state_dict, read_json, resolve_checkpoint
from native_models.safetensors_header import read_safetensors_header

REQUEST = GenerationRequest(prompt="a cat", steps=1, height=32, width=32, max_sequence_length=16)


def weights(folder: Path, component: str = "transformer") -> Path:
    return next((folder / component).glob("*.safetensors"))


def edit_json(relative: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / relative
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return apply


def replace_text(relative: str, old: str, new: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new))

    return apply


def write(relative: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / relative).write_bytes(data)


def symlink_loop(relative: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / relative
        path.unlink()
        make_symlink_loop(path)

    return apply


def replace_dir(relative: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        (folder / relative).unlink()
        (folder / relative).mkdir()

    return apply


def with_shard_index(weight_map: object) -> Callable[[Path], None]:
    return write("transformer/diffusion_pytorch_model.safetensors.index.json",
                 json.dumps({"metadata": {}, "weight_map": weight_map}).encode())


def deep_json(depth: int) -> bytes:
    return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"


# ---- the plan: folder, model_index.json, configs, safetensors headers ----------------------------------------------

PLAN_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "index-list": (write("model_index.json", b"[1, 2]"), "does not hold a JSON object"),
    "index-null": (write("model_index.json", b"null"), "does not hold a JSON object"),
    "index-zero-bytes": (write("model_index.json", b""), "is not valid JSON"),
    "index-truncated": (write("model_index.json", b'{"_class_name": "FluxPip'), "is not valid JSON"),
    "index-non-utf8": (write("model_index.json", b'{"_class_name": "Flux\xff\xfe"}'), "is not valid JSON"),
    "index-utf16": (write("model_index.json", '{"_class_name": "FluxPipeline"}'.encode("utf-16")),
                    "is not valid JSON"),
    "index-nan": (write("model_index.json", b'{"_class_name": NaN}'), "NaN is not JSON"),
    "index-deep": (write("model_index.json", deep_json(100_000)), "is not valid JSON"),
    "index-huge-int": (write("model_index.json", b'{"a": 1' + b"0" * 5000 + b"}"), "is not valid JSON"),
    "index-symlink-loop": (symlink_loop("model_index.json"), "is not a regular file"),
    "index-is-a-folder": (replace_dir("model_index.json"), "is not a regular file"),
    "class-null": (edit_json("model_index.json", lambda d: {**d, "_class_name": None}), "has no _class_name"),
    "class-int": (edit_json("model_index.json", lambda d: {**d, "_class_name": 7}), "has no _class_name"),
    "class-list": (edit_json("model_index.json", lambda d: {**d, "_class_name": ["FluxPipeline"]}),
                   "has no _class_name"),
    "class-unknown": (edit_json("model_index.json", lambda d: {**d, "_class_name": "../../etc/passwd"}),
                      "no native pipeline for '../../etc/passwd'"),
    "component-null": (edit_json("model_index.json", lambda d: {**d, "vae": None}), "lacks required component(s) vae"),
    "component-null-pair": (edit_json("model_index.json", lambda d: {**d, "vae": [None, None]}),
                            "lacks required component(s) vae"),
    "component-null-class": (edit_json("model_index.json", lambda d: {**d, "vae": ["diffusers", None]}),
                             "lacks required component(s) vae"),
    "component-string": (edit_json("model_index.json", lambda d: {**d, "vae": "AutoencoderKL"}),
                         "lacks required component(s) vae"),
    "component-unknown-class": (edit_json("model_index.json", lambda d: {**d, "vae": ["diffusers", "Evil"]}),
                                "unknown class 'Evil' for component 'vae'"),
    "component-folder-gone": (lambda f: shutil.rmtree(f / "vae"), "missing file"),
    "config-list": (write("transformer/config.json", b"[]"), "does not hold a JSON object"),
    "config-zero-bytes": (write("transformer/config.json", b""), "is not valid JSON"),
    "config-non-utf8": (write("transformer/config.json", b'{"num_layers": "\xc3\x28"}'), "is not valid JSON"),
    "config-unknown-key": (edit_json("transformer/config.json", lambda d: {**d, "frobnicate": 1}),
                           "unsupported FLUX transformer config keys ['frobnicate']"),
    "config-layers-string": (edit_json("transformer/config.json", lambda d: {**d, "num_layers": "2"}),
                             "cannot build FluxTransformer2DModel"),
    "config-layers-null": (edit_json("transformer/config.json", lambda d: {**d, "num_layers": None}),
                           "cannot build FluxTransformer2DModel"),
    "config-layers-float": (edit_json("transformer/config.json", lambda d: {**d, "num_layers": 2.5}),
                            "cannot build FluxTransformer2DModel"),
    "config-layers-nan": (replace_text("transformer/config.json", '"num_layers": 2', '"num_layers": NaN'),
                          "NaN is not JSON"),
    "config-1e400": (replace_text("scheduler/scheduler_config.json", '"shift": 3.0', '"shift": 1e400'),
                     "1e400 is not a finite number"),
    "config-heads-zero": (edit_json("transformer/config.json", lambda d: {**d, "num_attention_heads": 0}),
                          "num_attention_heads=0 must be positive"),
    "config-heads-negative": (edit_json("transformer/config.json", lambda d: {**d, "num_attention_heads": -4}),
                              "must be positive"),
    "vae-unknown-key": (edit_json("vae/config.json", lambda d: {**d, "frobnicate": 1}),
                        "unknown AutoencoderKL config key 'frobnicate'"),
    "vae-blocks-string": (edit_json("vae/config.json", lambda d: {**d, "block_out_channels": "abc"}),
                          "cannot build AutoencoderKL"),
    "vae-scaling-string": (edit_json("vae/config.json", lambda d: {**d, "scaling_factor": "x"}),
                           "scaling_factor must be a finite number"),
    "vae-scaling-zero": (edit_json("vae/config.json", lambda d: {**d, "scaling_factor": 0}),
                         "scaling_factor must be a finite number other than 0"),
    "vae-shift-infinity": (replace_text("vae/config.json", '"shift_factor": 0.1159', '"shift_factor": Infinity'),
                           "Infinity is not JSON"),
    "scheduler-list": (write("scheduler/scheduler_config.json", b"[]"), "does not hold a JSON object"),
    "scheduler-unknown-key": (edit_json("scheduler/scheduler_config.json", lambda d: {**d, "frob": 1}),
                              "unknown FlowMatchEulerDiscreteScheduler config key 'frob'"),
    "scheduler-shift-string": (edit_json("scheduler/scheduler_config.json", lambda d: {**d, "shift": "x"}),
                               "shift must be a finite number"),
    "scheduler-shift-negative": (edit_json("scheduler/scheduler_config.json", lambda d: {**d, "shift": -1.0}),
                                 "shift must be > 0"),
    "scheduler-steps-huge": (edit_json("scheduler/scheduler_config.json",
                                       lambda d: {**d, "num_train_timesteps": 10**12}),
                             "num_train_timesteps must be an integer in 1..100000"),
    "scheduler-seq-len-equal": (edit_json("scheduler/scheduler_config.json",
                                          lambda d: {**d, "base_image_seq_len": 4096}), "divide by zero"),
    "scheduler-dynamic-string": (edit_json("scheduler/scheduler_config.json",
                                           lambda d: {**d, "use_dynamic_shifting": "yes"}),
                                 "use_dynamic_shifting must be true or false"),
    "weights-zero-bytes": (write("transformer/diffusion_pytorch_model.safetensors", b""),
                           "shorter than the 8-byte header length"),
    "weights-truncated": (lambda f: weights(f).write_bytes(weights(f).read_bytes()[:-100]), "header declares"),
    "weights-trailing-bytes": (lambda f: weights(f).write_bytes(weights(f).read_bytes() + b"\0" * 8),
                               "header declares"),
    "weights-pickle": (lambda f: weights(f).write_bytes(pickle.dumps({"proj_out.weight": [1.0]}, protocol=4)),
                       "is a Python pickle"),
    "weights-pickle-protocol-2": (lambda f: weights(f).write_bytes(pickle.dumps([1], protocol=2)),
                                  "is a Python pickle"),
    "weights-torch-save": (lambda f: torch.save({"w": torch.zeros(2)}, str(weights(f))), "is a zip archive"),
    "weights-bin-only": (lambda f: weights(f).rename(f / "transformer" / "diffusion_pytorch_model.bin"),
                         "no .safetensors weights"),
    "weights-symlink-loop": (symlink_loop("transformer/diffusion_pytorch_model.safetensors"),
                             "missing weight shard"),
    "weights-header-not-object": (lambda f: weights(f).write_bytes(struct.pack("<Q", 2) + b"[]"),
                                  "the header does not start with '{'"),
    "shard-index-escapes": (with_shard_index({"a": "../vae/diffusion_pytorch_model.safetensors"}),
                            "is not a .safetensors file name in the component folder"),
    "shard-index-absolute": (with_shard_index({"a": "/etc/passwd"}), "is not a .safetensors file name"),
    "shard-index-hidden": (with_shard_index({"a": ".x.safetensors"}), "is not a .safetensors file name"),
    "shard-index-int": (with_shard_index({"a": 5}), "is not a .safetensors file name"),
    "shard-index-list": (with_shard_index([1, 2]), "'weight_map' is not a non-empty object"),
    "shard-index-empty": (with_shard_index({}), "'weight_map' is not a non-empty object"),
    "shard-missing": (with_shard_index({"a": "model-00001-of-00002.safetensors"}), "missing weight shard"),
}


@pytest.mark.parametrize("name", list(PLAN_CASES))
def test_plan_refuses_a_malformed_checkpoint(name: str, tiny_flux_copy: Path) -> None:
    damage, needle = PLAN_CASES[name]
    damage(tiny_flux_copy)
    with fails_fast(), pytest.raises(CheckpointError) as info:
        plan_native_run(tiny_flux_copy, REQUEST)
    assert_one_line_message(info.value, needle, max_length=400)


# ---- sizes: a config or a header declaring something absurd fails at once, allocating nothing -------------------

HUGE_CASES = {
    "flux-layers": ("transformer", "num_layers", 10**9),
    "flux-single-layers": ("transformer", "num_single_layers", 10**9),
    "flux-heads": ("transformer", "num_attention_heads", 10**9),
    "flux-text-width": ("transformer", "joint_attention_dim", 2**40),
    "t5-layers": ("text_encoder_2", "num_layers", 10**9),
    "t5-width": ("text_encoder_2", "d_model", 10**12),
    "clip-layers": ("text_encoder", "num_hidden_layers", 10**9),
    "clip-vocab": ("text_encoder", "vocab_size", 10**12),
    "vae-layers": ("vae", "layers_per_block", 10**9),
}


@pytest.mark.parametrize("name", list(HUGE_CASES))
def test_absurd_config_fails_fast_without_allocating(name: str, tiny_flux_copy: Path) -> None:
    component, key, value = HUGE_CASES[name]
    edit_json(f"{component}/config.json", lambda d: {**d, key: value})(tiny_flux_copy)
    with fails_fast(seconds=20.0), pytest.raises(CheckpointError, match="would hold over .* elements, its weights"):
        plan_native_run(tiny_flux_copy, REQUEST)


def raw_safetensors(header: dict, data: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


ABSURD_HEADERS = {
    "numel-overflows": ({"w": {"dtype": "F32", "shape": [10**12, 10**12], "data_offsets": [0, 4]}}, b"\0" * 4,
                        "declares 1000000000000000000000000 elements"),
    "zero-times-huge": ({"w": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}}, b"",
                        "has an invalid shape"),
    "negative-dim": ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
    "bool-dim": ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
    "100-dims": ({"w": {"dtype": "F32", "shape": [1] * 100, "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
    "unknown-dtype": ({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16, "unknown dtype"),
    "size-mismatch": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8"),
    "overlap": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "overlapping or gapped"),
    "offsets-reversed": ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4,
                         "no valid data_offsets"),
    "metadata-not-strings": ({"__metadata__": {"a": 1}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                             b"\0" * 4, "__metadata__ is not an object of strings"),
    "entry-not-object": ({"w": [1, 2]}, b"", "has no valid entry"),
}


@pytest.mark.parametrize("name", list(ABSURD_HEADERS))
def test_absurd_safetensors_header_is_refused_before_any_data(name: str, tmp_path: Path) -> None:
    header, data, needle = ABSURD_HEADERS[name]
    file = tmp_path / "model.safetensors"
    file.write_bytes(raw_safetensors(header, data))
    with fails_fast(), pytest.raises(CheckpointError, match="is not a readable safetensors file") as info:
        read_safetensors_header(file)
    assert needle in str(info.value)
    component = tmp_path  # the loader says the same through its own path
    with fails_fast(), pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        load_state_dict(component)


# ---- weights that parse but do not fit the model --------------------------------------------------------------


def retensor(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        file = weights(folder)
        state = load_file(str(file))
        change(state)
        save_file(state, str(file))

    return apply


def _set(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda state: state.__setitem__(name, make(state[name]))


def _poison(value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def make(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        tensor.view(-1)[3] = value
        return tensor

    return make


WEIGHT_CASES = {
    "wrong-shape": (_set("proj_out.weight", lambda t: torch.zeros(3, 3)), "has shape [3, 3], the model"),
    "transposed": (_set("proj_out.weight", lambda t: t.t().contiguous()), "has shape [32, 64]"),
    "int64": (_set("proj_out.weight", lambda t: t.to(torch.int64)), "is torch.int64, a weight must be"),
    "bool": (_set("proj_out.weight", lambda t: t > 0), "is torch.bool"),
    "float8": (_set("proj_out.weight", lambda t: t.to(torch.float8_e4m3fn)), "is torch.float8_e4m3fn"),
    "nan": (_set("proj_out.weight", _poison(float("nan"))), "holds 1 non-finite value(s)"),
    "inf": (_set("proj_out.bias", _poison(float("inf"))), "holds 1 non-finite value(s)"),
    "missing": (lambda state: state.pop("proj_out.weight"), "1 missing, e.g. [proj_out.weight]"),
    "unexpected": (lambda state: state.__setitem__("evil", torch.zeros(1)), "1 unexpected, e.g. [evil]"),
}


@pytest.mark.parametrize("name", list(WEIGHT_CASES))
def test_loader_refuses_weights_that_do_not_fit(name: str, tiny_flux_copy: Path) -> None:
    change, needle = WEIGHT_CASES[name]
    retensor(change)(tiny_flux_copy)
    with fails_fast(), pytest.raises(CheckpointError) as info:
        load_component(model_class("FluxTransformer2DModel"), tiny_flux_copy / "transformer")
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_intact_checkpoint_still_loads(tiny_flux: Path) -> None:
    """The guards refuse nothing real: the tiny checkpoint plans and its transformer loads."""
    plan_native_run(tiny_flux, REQUEST)
    model = load_component(model_class("FluxTransformer2DModel"), tiny_flux / "transformer")
    assert sum(p.numel() for p in model.parameters()) > 0


# ---- names and paths -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["~nosuchuser-diffparity/x", "a\0b", "../nope", "/nonexistent/flux", "",
                                  "x" * 5000, "org/name\0"])
def test_resolve_checkpoint_hostile_names(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # '' and '../nope' resolve against a folder holding no checkpoint
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(text)
    assert "\n" not in str(info.value)


def test_read_json_refuses_a_huge_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import native_models.loader as loader

    monkeypatch.setattr(loader, "JSON_FILE_LIMIT", 1000)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pad": "x" * 2000}))
    with pytest.raises(CheckpointError, match="not a config file"):
        read_json(path)


# ---- property-based: random bytes and mutated headers ------------------------------------------------------------

def _valid_file() -> bytes:
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    from safetensors.torch import save

    return save(tensors)


@HOSTILE
@given(data=st.one_of(st.binary(max_size=256), st.builds(lambda n, tail: struct.pack("<Q", n) + tail,
                                                            st.integers(0, 2**64 - 1), st.binary(max_size=64))))
def test_random_bytes_never_crash_the_header_reader(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    file = tmp_path_factory.mktemp("random") / "model.safetensors"
    file.write_bytes(data)
    _header_agrees_with_safetensors(file)


def _header_agrees_with_safetensors(file: Path) -> None:
    """Either our header check refuses the file with CheckpointError, or safetensors itself loads it: we never
    pass a file the real reader would choke on, and no other exception type escapes."""
    try:
        tensors = read_safetensors_header(file)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    loaded = safetensors_load(file.read_bytes())
    assert {name: tuple(t.shape) for name, t in loaded.items()} == {n: i.shape for n, i in tensors.items()}


def _mutated_header(original: bytes, path: list, value: object) -> bytes:
    header_len = int.from_bytes(original[:8], "little")
    header = json.loads(original[8:8 + header_len])
    target = header
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + original[8 + header_len:]


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
_FIELD = st.sampled_from([["a", "dtype"], ["a", "shape"], ["a", "data_offsets"], ["b", "shape"], ["b", "dtype"],
                          ["a", "shape", 0], ["a", "data_offsets", 1], ["b", "data_offsets", 0], ["a"],
                          ["__metadata__"], ["c"]])
_VALUE = st.one_of(_JSON, st.sampled_from(["F32", "BF16", "I64", "F8_E4M3", "U64", "BOOL"]),
                   st.lists(st.integers(0, 2**64), max_size=4), st.integers(-2, 2**64))


@HOSTILE
@given(path=_FIELD, value=_VALUE)
def test_mutated_headers_never_crash_the_loader(path: list, value: object,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("mutated")
    file = folder / "model.safetensors"
    try:
        file.write_bytes(_mutated_header(_valid_file(), path, value))
    except (KeyError, TypeError, IndexError):
        return  # the path does not exist in this header: nothing to test
    _header_agrees_with_safetensors(file)
    try:
        load_state_dict(folder)
    except CheckpointError as exc:
        assert "\n" not in str(exc)


# ---- through the CLI: one line, exit 2, only error.json, and Diffusers never touched the folder ------------------

@pytest.mark.parametrize("name", ["weights-pickle", "index-deep", "scheduler-steps-huge", "shard-index-escapes"])
def test_run_model_refuses_before_the_reference(name: str, tiny_flux_copy: Path, tmp_path: Path, cli,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    damage, needle = PLAN_CASES[name]
    damage(tiny_flux_copy)

    def must_not_run(*args: object) -> None:
        raise AssertionError("the reference ran on a checkpoint the native plan must refuse")

    monkeypatch.setitem(cases.CASES, "flux-tiny", dataclasses.replace(cases.CASES["flux-tiny"],
                                                                      run_reference=must_not_run))
    out = tmp_path / "out"
    with fails_fast(seconds=30.0):
        code, _, err = cli(["run", "flux-tiny", "--model", str(tiny_flux_copy), "--out", str(out), "--no-progress"])
    assert_one_line_error(code, err, needle)
    assert_only_error_json(out, needle)


@pytest.mark.parametrize("header_len", [0x280, 0x380, 0x480, 0x580])
def test_header_length_that_starts_like_a_pickle_is_read(header_len: int, tmp_path: Path) -> None:
    """A safetensors header of 896 bytes starts the file with 80 03, a pickle's first two bytes: still read."""
    original = _valid_file()
    length = int.from_bytes(original[:8], "little")
    encoded = original[8:8 + length].rstrip()
    assert len(encoded) <= header_len
    file = tmp_path / "model.safetensors"
    file.write_bytes(struct.pack("<Q", header_len) + encoded + b" " * (header_len - len(encoded))
                     + original[8 + length:])
    assert file.read_bytes()[:1] == b"\x80"
    assert set(read_safetensors_header(file)) == {"a", "b"}
    assert set(load_state_dict(tmp_path)) == {"a", "b"}


PIPELINE_REQUESTS = {
    "height": {"height": 10_000_000},
    "width-zero": {"width": 0},
    "steps": {"num_inference_steps": 10**9},
    "frames": {"num_frames": 10**9},
    "seed-negative": {"seed": -1},
    "seed-too-large": {"seed": 2**64},
    "guidance-nan": {"guidance_scale": float("nan")},
    "true-cfg-inf": {"true_cfg_scale": float("inf")},
    "prompt-none": {"prompt": [None]},
    "prompt-huge": {"prompt": ["x" * 200_000]},
    "batch-huge": {"prompt": ["a cat"] * 1000},
    "sequence-length": {"max_sequence_length": 10**9},
}


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_flux: Path) -> tuple[object, object]:
    """One loaded tiny FLUX pipeline and its planned batch, for the whole module (loading is the slow part)."""
    plan = plan_native_run(tiny_flux, REQUEST)
    return plan.pipeline_cls(tiny_flux, plan.config), plan.batch


@pytest.mark.parametrize("name", list(PIPELINE_REQUESTS))
def test_native_pipeline_refuses_an_absurd_request_before_any_stage(name: str, tiny_pipeline) -> None:
    """The native runtime bounds a `Req` itself (library callers skip GenerationRequest): RequestError, at once."""
    pipeline, planned = tiny_pipeline
    batch = dataclasses.replace(planned, **PIPELINE_REQUESTS[name])
    with fails_fast(), pytest.raises(RequestError) as info:
        pipeline.forward(batch)
    assert "\n" not in str(info.value)
