"""Everything a GPU has to show for issue 17, in one run, into one JSON (driven by scripts/gpu_acceptance.sh).

Per family (FLUX, Wan), at `--size full` on checkpoints at the real DiT widths with reduced depth (FLUX.1-dev:
3072 = 24 heads x 128, RoPE axes (16, 56, 56), 2 double + 4 single blocks; Wan 2.1 1.3B: 1536 = 12 heads x 128,
ffn 8960, 4 layers; tiny text encoders and VAEs, random weights built here), or at `--size small` on the cases'
own tiny checkpoints (the CPU check of this script):
1. bf16 parity (`diffparity run ... --dtype bf16`, free and teacher-forced);
2. `diffparity bench`, eager and with both sides' repeated blocks compiled (`--compile both`);
3. compile parity: `diffparity run ... --compile native` (the native DiT compiled, Diffusers eager);
4. capture overhead: the native pipeline end to end with every intermediate recorded (a Trace attached) against
   no recorder, median of 3, synchronised on CUDA.
Exit status: 0 when every parity run passes, 1 when one fails, 2 when a step could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# case -> (size -> request flags); full: the resolutions a GPU user runs, small: seconds on a CPU
REQUESTS = {
    "flux-tiny": {"full": ["--height", "1024", "--width", "1024", "--steps", "4"],
                  "small": ["--steps", "2"]},
    "wan-tiny": {"full": ["--height", "480", "--width", "832", "--frames", "81", "--steps", "4"],
                 "small": ["--steps", "2"]},
}


def build_wide(case: str, out: Path) -> Path:
    """The reduced-depth, real-width checkpoint of `case`'s family under `out` (built once)."""
    from references.flux.tiny import TinyFluxConfig, build_tiny_flux
    from references.wan.tiny import TinyWanConfig, build_tiny_wan

    target = out / f"{case}-wide"
    if (target / "model_index.json").is_file():
        return target
    if case == "flux-tiny":
        build_tiny_flux(target, 0, TinyFluxConfig(dit_heads=24, dit_head_dim=128, dit_axes_dims_rope=(16, 56, 56),
                                                  dit_layers=2, dit_single_layers=4))
    else:
        build_tiny_wan(target, 0, TinyWanConfig(dit_layers=4, dit_heads=12, dit_head_dim=128, dit_ffn_dim=8960,
                                                dit_freq_dim=256))
    return target


def cli(argv: list[str], log: Path) -> int:
    """`diffparity ARGV` in a subprocess (a fresh process per step: no compiled graph or allocator state is
    shared), its output into `log`; the exit code."""
    with log.open("w") as stream:
        return subprocess.run([sys.executable, "-m", "harness.cli", *argv], cwd=ROOT, stdout=stream,
                              stderr=subprocess.STDOUT, env={**os.environ, "DIFFPARITY_HEARTBEAT_S": "60"}).returncode


def parity_summary(report_path: Path) -> dict[str, Any]:
    report = json.loads(report_path.read_text())
    scored = [r for r in report["records"] if isinstance(r.get("threshold_multiple"), int | float)]
    worst = max(scored, key=lambda r: r["threshold_multiple"], default=None)
    return {"verdict": report["verdict"], "first_divergence": report["first_divergence"],
            "compile": report.get("compile"),
            "worst": None if worst is None else {k: worst.get(k) for k in ("stage", "field", "step", "mode",
                                                                           "threshold_multiple", "floor_multiple")}}


def capture_overhead(case_name: str, model: Path | None, device: str, request_flags: list[str]) -> dict[str, Any]:
    """The native pipeline end to end with a recorder attached against none (median of 3 runs each)."""
    import torch

    from harness.run.cases import get_case
    from harness.run.native_runner import plan_native_run
    from harness.trace.memory import Trace

    case = get_case(case_name)
    flags = dict(zip(request_flags[::2], request_flags[1::2], strict=True))
    request = case.request(dtype="bf16", device=device, steps=int(flags.get("--steps", 0)) or None,
                           height=int(flags["--height"]) if "--height" in flags else None,
                           width=int(flags["--width"]) if "--width" in flags else None,
                           frames=int(flags["--frames"]) if "--frames" in flags else None)
    checkpoint = model or case.build_checkpoint()
    plan = plan_native_run(checkpoint, request)
    pipeline = plan.pipeline_cls(checkpoint, plan.config, dtype=plan.batch.dtype, device=plan.batch.device)

    def once(recorded: bool) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            pipeline.forward(replace(plan.batch, extra={}, recorder=Trace({}) if recorded else None))
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3

    once(False)  # warm-up
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(3):
        times["off"].append(once(False))
        times["on"].append(once(True))
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"off_ms": off, "on_ms": on, "overhead": on / off - 1, "samples_ms": times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=("full", "small"), default=None,
                        help="full: real widths at GPU resolutions (default on cuda); small: the tiny cases")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu-acceptance")))
    parser.add_argument("--repeats", type=int, default=None, help="bench repeats (default 5 full, 2 small)")
    parser.add_argument("--cases", nargs="+", default=list(REQUESTS), choices=list(REQUESTS))
    args = parser.parse_args()
    size = args.size or ("full" if args.device == "cuda" else "small")
    repeats = str(args.repeats or (5 if size == "full" else 2))
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"device": args.device, "size": size, "cases": {}}
    start = time.perf_counter()
    worst_exit = 0
    for case in args.cases:
        step_start = time.perf_counter()
        model = build_wide(case, out) if size == "full" else None
        common = [*REQUESTS[case][size], "--device", args.device] + (["--model", str(model)] if model else [])
        entry: dict[str, Any] = {"checkpoint": str(model) if model else "tiny", "request": REQUESTS[case][size],
                                 "build_s": round(time.perf_counter() - step_start, 1)}
        runs = {"parity_bf16": ["run", case, *common, "--dtype", "bf16", "--out", str(out / f"{case}-parity-bf16"),
                                "--no-progress"],
                "compile_parity": ["run", case, *common, "--dtype", "bf16", "--compile", "native",
                                   "--out", str(out / f"{case}-compile-parity"), "--no-progress"]}
        for name, argv in runs.items():
            began = time.perf_counter()
            code = cli(argv, out / f"{case}-{name}.log")
            report = Path(argv[argv.index("--out") + 1]) / "report.json"
            entry[name] = {"exit": code, "seconds": round(time.perf_counter() - began, 1)}
            if code in (0, 1) and report.is_file():
                entry[name].update(parity_summary(report))
            worst_exit = max(worst_exit, code if code in (0, 1) else 2)
        for label, compile_choice in (("bench_eager", "none"), ("bench_compiled", "both")):
            began = time.perf_counter()
            path = out / f"{case}-{label}.json"
            code = cli(["bench", case, *common, "--dtype", "bf16", "--compile", compile_choice, "--repeats", repeats,
                        "--json", str(path)], out / f"{case}-{label}.log")
            entry[label] = json.loads(path.read_text()) if code == 0 and path.is_file() else {"exit": code}
            entry[label]["seconds"] = round(time.perf_counter() - began, 1)
            worst_exit = max(worst_exit, 0 if code == 0 else 2)
        entry["capture_overhead"] = capture_overhead(case, model, args.device, REQUESTS[case][size])
        summary["cases"][case] = entry
        print(f"{case}: parity {entry['parity_bf16'].get('verdict')}, compile parity "
              f"{entry['compile_parity'].get('verdict')}, capture overhead "
              f"{entry['capture_overhead']['overhead']:+.1%}", file=sys.stderr)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["exit"] = worst_exit
    (out / "acceptance.json").write_text(json.dumps(summary, indent=1))
    print(f"{out / 'acceptance.json'} in {summary['seconds']} s, exit {worst_exit}", file=sys.stderr)
    return worst_exit


if __name__ == "__main__":
    sys.exit(main())
