"""Real-config check: folders built by Diffusers itself from the *published* component configs of FLUX.1-dev,
FLUX.1-schnell and Wan 2.1 T2V 1.3B (real widths, one or two layers, bf16 and sharded like the public
repositories: references/<family>/published.py) run through the command a user types, `diffparity run --model
DIR --dtype fp32`, at the family's own token length (512, 256, 512) and a small size.

Slow (about 1 GB of bf16 weights per folder, 4 GiB per side in fp32): marked `slow`, run in the CPU suite. Each
folder is built once into the checkpoint cache ($DIFFPARITY_CACHE/published/) and reused by later runs.
Each command is a process of its own, forked from a launcher that has torch, transformers and diffusers imported
and this project's run path (PROJECT_PRELOAD; tests/warm_commands.py; it runs `harness.cli.main` as the console
script does): three fresh interpreters would import them three times (~5 s each).
Larger builds (more layers, the real shard sizes): scripts/published_configs.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from warm_commands import PRELOAD, WarmCommands

from native_models.safetensors_header import read_safetensors_header

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

SMALL = ["--height", "32", "--width", "32", "--steps", "1"]


def _flux(variant: str) -> Callable[[], Path]:
    def build() -> Path:
        from references.common.published_build import cached_published
        from references.flux.published import build_published_flux

        sizes = {"double": 1, "single": 1, "t5_layers": 1, "clip_layers": 1}
        return cached_published(variant, sizes, lambda out: build_published_flux(out, variant, **sizes))
    return build


def _wan() -> Path:
    from references.common.published_build import cached_published
    from references.wan.published import build_published_wan

    sizes = {"dit_layers": 1, "umt5_layers": 1}
    return cached_published("wan-1.3b", sizes, lambda out: build_published_wan(out, **sizes))


# name -> (builder, extra flags, sharded component, expected tokens, expected guidance)
FOLDERS = {
    "flux-dev": (_flux("flux-dev"), SMALL, "transformer", 512, 3.5),
    "flux-schnell": (_flux("flux-schnell"), SMALL, "transformer", 256, 0.0),
    "wan-1.3b": (_wan, [*SMALL, "--frames", "5"], "text_encoder", 512, 5.0),
}


# The files do not change between these commands, so the launcher also imports what every one of them imports
# (this project's run path, the native modules, the model classes both sides load): ~3 s of CPU per command
PROJECT_PRELOAD = """
import harness.cli.main, harness.cli.commands.run, harness.run.parity
import references.flux.runner, references.wan.runner
from native_models.warm_start import warm_start
warm_start()
from transformers import CLIPTextModel, T5EncoderModel, UMT5EncoderModel
from diffusers import AutoencoderKL, AutoencoderKLWan, FluxTransformer2DModel, WanPipeline, WanTransformer3DModel
"""


@pytest.fixture(scope="module")
def warm() -> Iterator[WarmCommands]:
    with WarmCommands(ROOT, dict(os.environ, HF_HUB_OFFLINE="1"), preload=PRELOAD + PROJECT_PRELOAD) as launcher:
        yield launcher


@pytest.mark.parametrize("name", list(FOLDERS))
def test_published_config_folder_passes_the_users_command(name: str, tmp_path: Path, warm: WarmCommands) -> None:
    build, flags, sharded, tokens, guidance = FOLDERS[name]
    folder = build()  # built once into the checkpoint cache
    index = next((folder / sharded).glob("*.safetensors.index.json"))  # sharded as the public repositories are
    shards = sorted((folder / sharded).glob("*-of-*.safetensors"))
    assert len(shards) >= 2 and len(set(json.loads(index.read_text())["weight_map"].values())) == len(shards)
    assert {info.dtype for info in read_safetensors_header(shards[0]).values()} == {"BF16"}

    out = tmp_path / "run"
    proc = warm.run("harness.cli.main", ["run", "--model", str(folder), "--dtype", "fp32", *flags, "--out", str(out),
                                         "--no-progress"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "pass" and report["first_divergence"] is None
    request = report["request"]
    assert request["max_sequence_length"] == tokens
    assert (request["true_cfg_scale"] if name.startswith("wan") else request["guidance_scale"]) == guidance
    assert report["expect"]["expects"] == "noise"  # the build record says random weights
    embeds = next(r for r in report["records"] if (r["stage"], r["field"]) == ("encode", "prompt_embeds"))
    assert embeds["shape"][1] == tokens  # the far T5 buckets (distance >= 128) were exercised when tokens > 128
    worst = max(r["metrics"][r["tolerance"]["metric"]] / r["tolerance"]["threshold"] for r in report["records"]
                if r["tolerance"]["threshold"] > 0)
    assert worst < 1.0
