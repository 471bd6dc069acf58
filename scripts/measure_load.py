"""Load time and peak host memory of the native loader against Diffusers/transformers, on real-width folders.

Folders are built here by Diffusers and transformers themselves from the *published* component configs (real
widths, few layers, random weights, saved in bf16 and sharded with `max_shard_size` like the public repositories):

- flux-dev: FLUX.1-dev's transformer (hidden 3072 = 24 x 128, --double / --single blocks), CLIP-L (the full 12
  layers), T5-XXL's width (d_model 4096, d_ff 10240, 64 heads, vocabulary 32128, --t5-layers), FLUX's VAE.
- wan-1.3b: Wan 2.1 T2V 1.3B's transformer (1536 = 12 x 128, ffn 8960, --dit-layers), UMT5-XXL's width with its
  vocabulary of 256384 (--umt5-layers), Wan 2.1's VAE.

Every measurement runs in a fresh Python process (imports done first) and reads the kernel's resident-set
high-water mark (VmHWM, reset through /proc/self/clear_refs just before the measured work), so a figure is "peak
RSS while loading", file-backed pages of memory maps included. Diffusers maps the files and keeps parameters that
need no cast as views of the map, so its load reads almost nothing: `touch` then sums every parameter once, which
faults the pages in as a first forward pass would, and reports the time and peak of load + touch. Both sides
import their libraries, torch._dynamo included, before the timer starts (see `measure_load`).

    python scripts/measure_load.py build flux-dev DIR [--double 1 --single 1 --t5-layers 2]
    python scripts/measure_load.py build wan-1.3b DIR [--dit-layers 2 --umt5-layers 2]
    python scripts/measure_load.py load DIR --side native|diffusers --dtype fp32|bf16 [--threads N]
    python scripts/measure_load.py run DIR --case flux-tiny|wan-tiny [--free-reference] -- RUN_FLAGS
    python scripts/measure_load.py all --work WORKDIR [--before-tree TREE] [--threads N] [--repeat 3]
                                       [--loads-only] [--out-json FILE]

`--before-tree TREE` also loads with the native_models package of another checkout (e.g. an older commit's
`git archive` unpacked: the loader before this change), once per folder and dtype; `load` and `run` use another
checkout's code when it comes first on PYTHONPATH. `run` is one whole `diffparity run CASE --model DIR RUN_FLAGS`
(reference side first, then the native side) with each side's peak and the RSS it leaves behind after freeing;
`--free-reference` adds, between the sides, a `gc.collect()` and glibc's `malloc_trim(0)` (each measured), to
show what the reference side would give back if it dropped every reference to its pipeline and returned freed
heap pages.
`all` builds both folders (once), runs the matrix (loads interleaved side by side, `--repeat` times; the tables give
medians) and prints the tables, the machine load of each row and the extrapolation to FLUX.1-dev and Wan 2.1 14B.
On a shared machine, `--threads 1` gives steadier times: two OpenMP threads per op wait on each other whenever
another process holds a core, and the native load runs two ops per tensor where Diffusers' bf16 load runs none.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
DTYPES = ("fp32", "bf16")

# ---- published configs ---------------------------------------------------------------------------------------

# black-forest-labs/FLUX.1-dev: transformer/config.json (layers set by the builder)
FLUX_DEV_TRANSFORMER = {"patch_size": 1, "in_channels": 64, "attention_head_dim": 128, "num_attention_heads": 24,
                        "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
                        "axes_dims_rope": (16, 56, 56)}
# text_encoder/config.json (openai/clip-vit-large-patch14's text tower, legacy eos id 2)
FLUX_DEV_CLIP = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768,
                 "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
                 "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2,
                 "pad_token_id": 1}
# text_encoder_2/config.json (google/t5-v1_1-xxl encoder; layers set by the builder)
FLUX_DEV_T5 = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64,
               "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
               "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
               "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
# vae/config.json
FLUX_DEV_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
                "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512),
                "layers_per_block": 2, "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 32,
                "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": False,
                "use_post_quant_conv": False, "mid_block_add_attention": True}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers: transformer/config.json (layers set by the builder)
WAN_13B_TRANSFORMER = {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128,
                       "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960,
                       "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
                       "rope_max_seq_len": 1024}
# text_encoder/config.json (google/umt5-xxl encoder; layers set by the builder)
WAN_UMT5 = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
            "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}

# Published sizes used for the extrapolation: parameters per component, and the folder built here that stands in.
REAL_MODELS = {
    "FLUX.1-dev": ("flux-dev", {"transformer": 11.90e9, "text_encoder_2 (T5-XXL)": 4.76e9,
                                "text_encoder (CLIP-L)": 0.123e9, "vae": 0.084e9}),
    "Wan 2.1 T2V 14B": ("wan-1.3b", {"transformer": 14.29e9, "text_encoder (UMT5-XXL)": 5.68e9, "vae": 0.127e9}),
}


# ---- building the folders --------------------------------------------------------------------------------------


class _DefaultDtype:
    """Construct modules directly in bf16: the random init then never holds an fp32 copy (the folders are
    saved in bf16 anyway)."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        import torch

        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *_: object) -> None:
        import torch

        torch.set_default_dtype(self.previous)


def build_flux_dev(out: Path, double: int, single: int, t5_layers: int, shard: str) -> None:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from references.common.tokenizers import CLIP_MERGES, build_clip_tokenizer, build_t5_tokenizer
    from references.flux.components import FLUX_DEV_SCHEDULER

    torch.manual_seed(0)
    with _DefaultDtype(torch.bfloat16):
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER),
            vae=AutoencoderKL(**FLUX_DEV_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**FLUX_DEV_CLIP)),
            tokenizer=build_clip_tokenizer(CLIP_MERGES),
            text_encoder_2=T5EncoderModel(T5Config(**FLUX_DEV_T5, num_layers=t5_layers)),
            tokenizer_2=build_t5_tokenizer(),
            transformer=FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER, num_layers=double, num_single_layers=single),
        )
    pipe.save_pretrained(out, max_shard_size=shard)
    _write_build_record(out, "flux-dev", {"double": double, "single": single, "t5_layers": t5_layers, "shard": shard})


def build_wan_13b(out: Path, dit_layers: int, umt5_layers: int, shard: str) -> None:
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from references.common.tokenizers import build_umt5_tokenizer
    from references.wan.tiny import WAN_2_1_SCHEDULER

    torch.manual_seed(0)
    with _DefaultDtype(torch.bfloat16):
        pipe = WanPipeline(
            tokenizer=build_umt5_tokenizer(),
            text_encoder=UMT5EncoderModel(UMT5Config(**WAN_UMT5, num_layers=umt5_layers)),
            transformer=WanTransformer3DModel(**WAN_13B_TRANSFORMER, num_layers=dit_layers),
            vae=AutoencoderKLWan(),  # Diffusers' defaults are Wan 2.1's VAE
            scheduler=UniPCMultistepScheduler(**WAN_2_1_SCHEDULER),
        )
    pipe.save_pretrained(out, max_shard_size=shard)
    _write_build_record(out, "wan-1.3b", {"dit_layers": dit_layers, "umt5_layers": umt5_layers, "shard": shard})


def _write_build_record(out: Path, family: str, sizes: dict[str, Any]) -> None:
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*.safetensors"))}
    record = {"family": family, "random_weights": True, "stored_dtype": "bf16", "sizes": sizes,
              "weight_bytes": sum(files.values()), "files": files}
    (out / "diffparity_build.json").write_text(json.dumps(record, indent=1))


# ---- memory ----------------------------------------------------------------------------------------------------


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def malloc_trim() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---- one load (child process) ----------------------------------------------------------------------------------


def model_components(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (library, class) of the model components in model_index.json (tokenizers, schedulers aside)."""
    index = json.loads((folder / "model_index.json").read_text())
    return {name: (value[0], value[1]) for name, value in index.items()
            if isinstance(value, list) and len(value) == 2 and value[0] in ("diffusers", "transformers")
            and not any(word in value[1] for word in ("Tokenizer", "Scheduler"))}


def measure_load(folder: Path, side: str, dtype_name: str, threads: int | None) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    if side == "native":
        # Diffusers imports torch._dynamo with itself (outside the timed load); the native loader's config budget
        # check imports it too when a model computes buffers on the meta device (Wan's rotary tables: 1.5-3 s,
        # once per process). In a parity run the reference side has imported it already: so here too.
        import torch._dynamo  # noqa: F401

        import native_models
        from native_models.components import model_class
        from native_models.loader import load_component

        def load(name: str, class_name: str) -> torch.nn.Module:
            return load_component(model_class(class_name), folder / name, dtype)
        where = str(Path(native_models.__file__).parent.parent)
    else:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()

        def load(name: str, class_name: str) -> torch.nn.Module:
            library = diffusers if model_components(folder)[name][0] == "diffusers" else transformers
            return getattr(library, class_name).from_pretrained(str(folder / name), dtype=dtype)
        where = f"diffusers {diffusers.__version__}, transformers {transformers.__version__}"

    rss_before = status_bytes("VmRSS")
    reset_peak()
    start = time.perf_counter()
    models = {name: load(name, class_name) for name, (_, class_name) in model_components(folder).items()}
    load_s = time.perf_counter() - start
    peak_load = status_bytes("VmHWM")
    rss_loaded = status_bytes("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        for model in models.values():  # reads every byte once (faulting in mapped pages), in the tensor's dtype
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.sum()
    touch_s = time.perf_counter() - start
    resident = sum(t.numel() * t.element_size() for model in models.values()
                   for t in [*model.parameters(), *model.buffers()])
    return {"side": side, "dtype": dtype_name, "code": where, "threads": torch.get_num_threads(),
            "load_s": load_s, "touch_s": touch_s,
            "rss_before": rss_before, "peak_load": peak_load, "peak_touch": status_bytes("VmHWM"),
            "rss_loaded": rss_loaded, "resident_weights": resident,
            "load_avg": os.getloadavg()[0]}


# ---- one whole run (child process) -----------------------------------------------------------------------------


def measure_run(folder: Path, case: str, argv: list[str], free_reference: bool) -> dict[str, Any]:
    """`diffparity run CASE --model FOLDER ARGV`, marking RSS (anonymous and file-backed) at the start, after the
    reference side has freed its pipeline, and after the native side has freed its own; each mark also holds the
    peak since the previous one. `free_reference`: between the sides, one more `gc.collect()` and glibc's
    `malloc_trim(0)`, each measured: what the reference side would free if it dropped every reference to its
    pipeline before collecting, and what returning freed heap pages would add."""
    import gc

    from harness.cli.main import main
    from harness.run.runners import NativeRunner, ReferenceRunner

    marks: list[dict[str, Any]] = []

    def mark(label: str, free: bool = False) -> None:
        entry = {"at": label, "rss": status_bytes("VmRSS"), "rss_anon": status_bytes("RssAnon"),
                 "rss_file": status_bytes("RssFile"), "peak_since_last": status_bytes("VmHWM")}
        if free:
            gc.collect()
            entry["rss_after_collect"] = status_bytes("VmRSS")
            malloc_trim()
            entry["rss_after_trim"] = status_bytes("VmRSS")
        marks.append(entry)
        reset_peak()

    reference_run, native_run = ReferenceRunner.run, NativeRunner.run

    def run_reference(self: ReferenceRunner, *args: Any, **kwargs: Any) -> Any:
        mark("start")
        return reference_run(self, *args, **kwargs)

    def run_native(self: NativeRunner, *args: Any, **kwargs: Any) -> Any:
        mark("reference side done and freed", free=free_reference)
        try:
            return native_run(self, *args, **kwargs)
        finally:
            mark("native side done and freed")

    ReferenceRunner.run, NativeRunner.run = run_reference, run_native  # type: ignore[method-assign]
    start = time.perf_counter()
    code = main(["run", case, "--model", str(folder), "--no-progress", *argv])
    wall = time.perf_counter() - start
    mark("end")
    return {"case": case, "argv": argv, "exit_code": code, "wall_s": wall, "marks": marks,
            "free_reference": free_reference, "process_peak": max(m["peak_since_last"] for m in marks),
            "load_avg": os.getloadavg()[0]}


# ---- the matrix (parent process) -------------------------------------------------------------------------------


def child(args: list[str], tree: Path | None = None) -> dict[str, Any]:
    """Run this script's subcommand in a fresh process (with `tree`'s native_models first on the path)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in ([tree] if tree else []) + [ROOT])
    command = [sys.executable, str(Path(__file__).resolve()), args[0], "--json", *args[1:]]
    done = subprocess.run(command, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measure_load: {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def load_table(rows: list[dict[str, Any]]) -> str:
    """One line per (folder, code, dtype): medians over the repetitions (times vary far more than peaks on a
    shared machine). The native lines give their load time as a multiple of Diffusers' load, and of Diffusers'
    load + touch: the fair one, since only then has Diffusers read the weights once, as the native load has."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["folder"], r["label"], r["dtype"]), []).append(r)

    def median(group: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(key(r) for r in group)

    lines = ["| folder | code | run dtype | n | threads | load s (median) | load+touch s | load / Diffusers load | "
             "load / Diffusers load+touch | peak load GiB (above start) | peak load+touch GiB | resident weights GiB "
             "| load avg |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (folder, label, dtype), group in groups.items():
        load = median(group, lambda r: r["load_s"])
        touched = median(group, lambda r: r["load_s"] + r["touch_s"])
        reference = groups.get((folder, "diffusers", dtype))
        ratios = ["-", "-"]
        if reference and label != "diffusers":
            ratios = [f"{load / median(reference, lambda r: r['load_s']):.2f}",
                      f"{load / median(reference, lambda r: r['load_s'] + r['touch_s']):.2f}"]
        lines.append(
            f"| {folder} | {label} | {dtype} | {len(group)} | {group[0]['threads']} | {load:.1f} | {touched:.1f} "
            f"| {ratios[0]} | {ratios[1]} | {gib(median(group, lambda r: r['peak_load'] - r['rss_before']))} "
            f"| {gib(median(group, lambda r: r['peak_touch'] - r['rss_before']))} "
            f"| {gib(group[0]['resident_weights'])} | {median(group, lambda r: r['load_avg']):.1f} |")
    return "\n".join(lines)


def run_table(rows: list[dict[str, Any]], loads: list[dict[str, Any]]) -> str:
    """Per whole run: what each side peaks at and leaves behind (GiB, above the RSS at the start of the run), and
    the whole run's peak against the larger side's resident weights (from the load rows of the same folder)."""
    lines = ["| folder | flags | exit | wall s | reference peak | left by reference | after gc.collect | "
             "after malloc_trim | native peak | left by native | whole-run peak | x larger side's weights |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = {mark["at"].split()[0]: mark for mark in r["marks"]}
        start = m["start"]["rss"]
        ref = m["reference"]
        native_start = ref.get("rss_after_trim", ref["rss"])
        weights = max(row["resident_weights"] for row in loads
                      if row["folder"].startswith(r["folder"]) and row["dtype"] == r["dtype"])
        free = r["free_reference"]
        lines.append(
            f"| {r['folder']} | {' '.join(r['argv'])}{' --free-reference' if free else ''} | {r['exit_code']} "
            f"| {r['wall_s']:.0f} | {gib(ref['peak_since_last'] - start)} | {gib(ref['rss'] - start)} "
            f"| {gib(ref['rss_after_collect'] - start) if free else '-'} "
            f"| {gib(ref['rss_after_trim'] - start) if free else '-'} "
            f"| {gib(m['native']['peak_since_last'] - start)} | {gib(m['native']['rss'] - native_start)} "
            f"| {gib(r['process_peak'] - start)} | {(r['process_peak'] - start) / weights:.2f} |")
    return "\n".join(lines)


def extrapolate(rows: list[dict[str, Any]]) -> str:
    """Host peak of loading the real models on the CPU, scaled from the stand-in folder's measured ratio of peak
    (load + touch) to resident weights, per code and dtype (the largest over repetitions): conservative, as a
    fixed cost (one chunk) does not grow with the model."""
    lines = ["Extrapolated host peak of a CPU load (measured peak / resident weights on the stand-in folder x real "
             "weights):"]
    for model, (stand_in, parts) in REAL_MODELS.items():
        ratios: dict[tuple[str, str], float] = {}
        for r in rows:
            if r["folder"].startswith(stand_in):
                key = (r["label"], r["dtype"])
                ratios[key] = max(ratios.get(key, 0.0), (r["peak_touch"] - r["rss_before"]) / r["resident_weights"])
        params = sum(parts.values())
        for dtype, itemsize in (("bf16", 2), ("fp32", 4)):
            weights = itemsize * params
            figures = [f"{label} {gib(weights * ratios[(label, dtype)])} ({ratios[(label, dtype)]:.2f}x)"
                       for label in ("native after", "native before", "diffusers") if (label, dtype) in ratios]
            lines.append(f"- {model} ({params / 1e9:.1f}B parameters) {dtype}: weights {gib(weights)} GiB; "
                         f"peak GiB: {', '.join(figures)}")
    return "\n".join(lines)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    folders = {"flux-dev": work / "flux-dev", "wan-1.3b": work / "wan-1.3b"}
    for family, folder in folders.items():
        if not (folder / "diffparity_build.json").is_file():
            print(f"building {family} in {folder} ...", file=sys.stderr)
            child(["build", family, str(folder)])
    trees = [("after", None)] + ([("before", Path(args.before_tree))] if args.before_tree else [])
    loads = []
    threads = ["--threads", str(args.threads)] if args.threads else []
    for family, folder in folders.items():
        for dtype in DTYPES:
            for repetition in range(args.repeat):  # interleaved, so both sides see the same machine load
                codes = [("diffusers", None)] + [(f"native {name}", tree) for name, tree in trees
                                                 if name == "after" or repetition == 0]  # the old loader: once
                for label, tree in codes:
                    side = "diffusers" if label == "diffusers" else "native"
                    print(f"load {family} {label} {dtype} ({repetition + 1}/{args.repeat}) ...", file=sys.stderr)
                    row = child(["load", str(folder), "--side", side, "--dtype", dtype, *threads], tree)
                    loads.append({**row, "folder": f"{family} ({gib(folder_bytes(folder))} GiB)", "label": label})
    runs: list[dict[str, Any]] = []
    if args.loads_only:
        return {"loads": loads, "runs": runs}
    requests = {"flux-dev": ("flux-tiny", ["--height", "64", "--width", "64", "--steps", "2"]),
                "wan-1.3b": ("wan-tiny", ["--height", "64", "--width", "64", "--frames", "5", "--steps", "2"])}
    for family, (case, argv) in requests.items():
        for free in (False, True):
            print(f"run {family} {' '.join(argv)} free_reference={free} ...", file=sys.stderr)
            flags = ["--free-reference"] if free else []
            out = work / f"run-{family}"
            row = child(["run", str(folders[family]), "--case", case, *flags, "--", "--dtype", "fp32", *argv,
                         "--out", str(out)])
            runs.append({**row, "folder": family, "dtype": "fp32"})
    return {"loads": loads, "runs": runs}


# ---- command line ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a real-width folder with Diffusers/transformers")
    build.add_argument("family", choices=["flux-dev", "wan-1.3b"])
    build.add_argument("out")
    build.add_argument("--double", type=int, default=1, help="FLUX double-stream blocks (FLUX.1-dev: 19)")
    build.add_argument("--single", type=int, default=1, help="FLUX single-stream blocks (FLUX.1-dev: 38)")
    build.add_argument("--t5-layers", type=int, default=2, help="T5-XXL encoder layers (real: 24)")
    build.add_argument("--dit-layers", type=int, default=2, help="Wan DiT layers (Wan 2.1 1.3B: 30)")
    build.add_argument("--umt5-layers", type=int, default=2, help="UMT5-XXL encoder layers (real: 24)")
    build.add_argument("--shard", default="400MB", help="max_shard_size (the public repositories: 5-10GB)")
    load = sub.add_parser("load", help="measure one load in this process")
    load.add_argument("folder")
    load.add_argument("--side", choices=["native", "diffusers"], required=True)
    load.add_argument("--dtype", choices=DTYPES, default="fp32")
    load.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    run = sub.add_parser("run", help="measure one whole `diffparity run CASE --model FOLDER -- FLAGS` here")
    run.add_argument("folder")
    run.add_argument("--case", required=True)
    run.add_argument("--free-reference", action="store_true",
                     help="gc.collect() and malloc_trim(0) between the sides (each measured)")
    every = sub.add_parser("all", help="build both folders and run the whole matrix")
    every.add_argument("--work", required=True, help="folder for the built checkpoints")
    every.add_argument("--before-tree", help="a checkout whose native_models is the 'before' loader")
    every.add_argument("--out-json", help="write every figure to this file")
    every.add_argument("--threads", type=int, help="torch threads of every load (default: torch's own choice)")
    every.add_argument("--loads-only", action="store_true", help="skip the whole runs")
    every.add_argument("--repeat", type=int, default=3, help="loads per side and dtype (the old loader: one)")
    for command in (build, load, run, every):
        command.add_argument("--json", action="store_true", help="print one JSON line (used between processes)")
    raw = sys.argv[1:]
    split = raw.index("--") if "--" in raw else len(raw)  # after `--`: flags for `diffparity run`
    args = parser.parse_args(raw[:split])
    args.argv = raw[split + 1:]

    if args.command == "build":
        out = Path(args.out)
        if args.family == "flux-dev":
            build_flux_dev(out, args.double, args.single, args.t5_layers, args.shard)
        else:
            build_wan_13b(out, args.dit_layers, args.umt5_layers, args.shard)
        result: dict[str, Any] = {"folder": str(out), "bytes": folder_bytes(out)}
    elif args.command == "load":
        result = measure_load(Path(args.folder), args.side, args.dtype, args.threads)
    elif args.command == "run":
        result = measure_run(Path(args.folder), args.case, args.argv, args.free_reference)
    else:
        result = run_all(args)
        text = "\n\n".join([f"machine: {os.cpu_count()} CPUs, load average now {os.getloadavg()}",
                            load_table(result["loads"]), run_table(result["runs"], result["loads"]),
                            extrapolate(result["loads"])])
        print(text)
        if args.out_json:
            Path(args.out_json).write_text(json.dumps(result, indent=1))
        return
    print(json.dumps(result))


if __name__ == "__main__":
    main()
