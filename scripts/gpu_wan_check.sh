#!/usr/bin/env bash
# GPU acceptance of the native Wan 2.1 pipeline (issue 6), on one CUDA GPU, from the repository root:
#
#   scripts/gpu_wan_check.sh [OUT_DIR]          # default out/gpu-wan-check; PYTHON=... to use another interpreter
#
# 1. builds the wide random checkpoint (references/wan/tiny.py: TinyWanConfig.wide(): 8 DiT layers at the real
#    Wan 2.1 1.3B width, 1536 = 12 heads x 128, ffn 8960; a 2-layer UMT5 at UMT5-XXL width; the tiny VAE), about
#    3 GB of fp32 safetensors, once, under OUT_DIR;
# 2. runs `diffparity run wan-tiny --model <it>` in bf16 on CUDA at 17 frames, 256x256, 10 steps, true CFG 5.0
#    (free and teacher-forced, default bf16 tolerances: no calibration exists for this checkpoint);
# 3. times one denoising step (two DiT passes under CFG plus the UniPC step) on each side without any recording
#    hooks: (time of a 12-step run - time of a 2-step run) / 10, the median of 3 repeats, CUDA synchronised, so
#    text encoding, latent set-up and decoding cancel out.
# Writes OUT_DIR/parity/report.json (+ traces, images) and OUT_DIR/timing.json; prints both summaries.
# Exit status: that of the parity run (0 pass, 1 fail, 2 could not run).
set -euo pipefail

OUT=${1:-out/gpu-wan-check}
PY=${PYTHON:-.venv/bin/python}
CKPT="$OUT/wan-wide-seed0"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error
mkdir -p "$OUT"

"$PY" - "$CKPT" <<'EOF'
import sys, time
from pathlib import Path
import torch
from references.wan.tiny import TinyWanConfig, build_tiny_wan
if not torch.cuda.is_available():
    sys.exit("gpu_wan_check: no CUDA device visible to torch")
target = Path(sys.argv[1])
if not (target / "model_index.json").is_file():
    start = time.perf_counter()
    build_tiny_wan(target, seed=0, config=TinyWanConfig.wide())
    print(f"built {target} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
print(f"checkpoint: {target} on {torch.cuda.get_device_name()}", file=sys.stderr)
EOF

set +e
"$PY" -m harness.cli run wan-tiny --model "$CKPT" --device cuda --dtype bf16 --frames 17 --height 256 --width 256 \
    --steps 10 --true-cfg 5.0 --negative-prompt "blurry, low quality" --no-progress --out "$OUT/parity"
PARITY=$?
set -e

"$PY" - "$CKPT" "$OUT/timing.json" <<'EOF'
"""Seconds per denoising step, native vs Diffusers, same request, bf16, no hooks."""
import json, statistics, sys, time
from dataclasses import replace
from pathlib import Path
import torch
from harness.run.native_runner import plan_native_run
from harness.run.request import GenerationRequest
from native_models.attention import get_attention_backend

CKPT, OUT = Path(sys.argv[1]), Path(sys.argv[2])
LOW, HIGH, REPEATS = 2, 12, 3
REQUEST = GenerationRequest(prompt="a cat walks through the misty forest", negative_prompt="blurry, low quality",
                            true_cfg_scale=5.0, frames=17, height=256, width=256, max_sequence_length=64,
                            dtype="bf16", device="cuda")


def timed(run, steps):
    run(steps)  # warm-up (kernels, allocator)
    times = []
    for _ in range(REPEATS):
        torch.cuda.synchronize()
        start = time.perf_counter()
        run(steps)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_step(run):
    low, high = timed(run, LOW), timed(run, HIGH)
    return (high - low) / (HIGH - LOW), {"steps": [LOW, HIGH], "seconds": [low, high]}


def native():
    plan = plan_native_run(CKPT, REQUEST)
    pipeline = plan.pipeline_cls(CKPT, plan.config, dtype=plan.batch.dtype, device=plan.batch.device)

    def run(steps):
        with torch.no_grad():
            pipeline.forward(replace(plan.batch, num_inference_steps=steps, extra={}, recorder=None))

    try:
        return per_step(run)
    finally:
        del pipeline
        torch.cuda.empty_cache()


def diffusers():
    from diffusers import WanPipeline
    from references.common.reference_pipeline import quiet_libraries
    quiet_libraries()
    pipe = WanPipeline.from_pretrained(str(CKPT), dtype=torch.bfloat16).to("cuda")
    pipe.set_progress_bar_config(disable=True)

    def run(steps):
        pipe(prompt=REQUEST.prompt, negative_prompt=REQUEST.negative_prompt, height=REQUEST.height,
             width=REQUEST.width, num_frames=REQUEST.frames, num_inference_steps=steps,
             guidance_scale=REQUEST.true_cfg_scale, max_sequence_length=REQUEST.max_sequence_length,
             generator=torch.Generator("cpu").manual_seed(0), output_type="latent")

    try:
        return per_step(run)
    finally:
        del pipe
        torch.cuda.empty_cache()


native_s, native_raw = native()
diffusers_s, diffusers_raw = diffusers()
result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "request": REQUEST.to_dict(),
          "native_attention_backend": get_attention_backend(),
          "native_s_per_step": native_s, "diffusers_s_per_step": diffusers_s,
          "native_over_diffusers": native_s / diffusers_s, "raw": {"native": native_raw, "diffusers": diffusers_raw}}
OUT.write_text(json.dumps(result, indent=2) + "\n")
print(f"per denoising step (CFG: 2 DiT passes + UniPC), {result['gpu']}: native {native_s * 1e3:.1f} ms, "
      f"Diffusers {diffusers_s * 1e3:.1f} ms, ratio {native_s / diffusers_s:.2f} ({OUT})")
EOF

echo "parity exit status: $PARITY (report: $OUT/parity/report.json)"
exit $PARITY
