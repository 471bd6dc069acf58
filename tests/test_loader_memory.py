"""The loader holds one copy of the weights: loading a ~200 MB folder raises a fresh process's resident-set peak by
about the folder's size, not twice it (the loader it replaced built a random fp32 model, read every file into
memory and deserialised it: 2-3x). Measured in a subprocess from the kernel's high-water mark (VmHWM, reset
just before the load), which counts every allocator and the memory-mapped file pages alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from native_models.models.flux_transformer import FluxTransformer2DModel

ROOT = Path(__file__).resolve().parents[1]
# A FLUX transformer at hidden 512: ~49M parameters, 197 MB in fp32, in two shards with an index.
CONFIG = {"patch_size": 1, "in_channels": 64, "num_layers": 4, "num_single_layers": 3, "attention_head_dim": 128,
          "num_attention_heads": 4, "joint_attention_dim": 512, "pooled_projection_dim": 256,
          "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}

MEASURE = """
import json, sys, torch
from pathlib import Path
import native_models.materialise
from native_models.components import model_class
from native_models.loader import load_component

def status(field):
    return next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines()
                if l.startswith(field + ":"))

folder, dtype, cls = Path(sys.argv[1]), getattr(torch, sys.argv[2]), model_class(sys.argv[3])
native_models.materialise.CHUNK_BYTES = int(sys.argv[4])
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
model = load_component(cls, folder, dtype)
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"peak_above_start": status("VmHWM") - before, "weights": weights}))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("memory")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = FluxTransformer2DModel.from_config(CONFIG).state_dict()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in halves.items():
        save_file({k: state[k].contiguous() for k in keys}, str(out / file))
    weight_map = {k: file for file, keys in halves.items() for k in keys}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(CONFIG))
    return out


def measure(folder: Path, dtype: str, class_name: str = "FluxTransformer2DModel",
            chunk_bytes: int = 256 * 2**20) -> dict[str, int]:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", MEASURE, str(folder), dtype, class_name, str(chunk_bytes)],
                          cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.glob("*.safetensors"))


def test_an_fp32_load_peaks_at_one_copy_of_the_weights(folder: Path) -> None:
    size = folder_bytes(folder)
    assert 180e6 < size < 220e6
    result = measure(folder, "float32")
    assert abs(result["weights"] - size) < 0.01 * size  # the model holds the folder's weights, once
    assert result["peak_above_start"] < 1.6 * size, (result, size)


def test_a_bf16_load_of_fp32_files_peaks_near_the_bf16_weights(folder: Path) -> None:
    """Cast while copying: the fp32 bytes pass through page by page, never as a whole fp32 state dict."""
    size = folder_bytes(folder)
    result = measure(folder, "bfloat16")
    assert abs(result["weights"] - size / 2) < 0.01 * size
    assert result["peak_above_start"] < 0.8 * size, (result, size)


@pytest.fixture(scope="module")
def big_embedding(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer T5 encoder whose 134 MB vocabulary embedding is nearly all of its weights (UMT5-XXL's is 2.1 GB
    in bf16: one tensor larger than many whole models)."""
    from native_models.models.t5_encoder import T5EncoderModel

    config = {"model_type": "t5", "vocab_size": 32768, "d_model": 1024, "d_kv": 64, "d_ff": 256, "num_layers": 1,
              "num_heads": 2, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
              "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "is_gated_act": True,
              "dense_act_fn": "gelu_new"}
    out = tmp_path_factory.mktemp("embedding")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = T5EncoderModel.from_config(config).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_a_tensor_larger_than_a_chunk_is_never_resident_twice(big_embedding: Path) -> None:
    """Copied in 16 MB chunks, each chunk's mapped pages released once copied: the peak stays near the weights
    (copied whole, the mapped embedding and its copy would both be resident at the end: ~1.95x)."""
    size = folder_bytes(big_embedding)
    result = measure(big_embedding, "float32", "T5EncoderModel", chunk_bytes=16 * 2**20)
    assert abs(result["weights"] - size) < 0.01 * size
    assert result["peak_above_start"] < 1.3 * size, (result, size)
