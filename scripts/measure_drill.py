"""Measure the drill (harness/drill/): false alarms on correct pipelines, and its time and memory cost.

    python scripts/measure_drill.py false-alarms [--cases flux-tiny wan-tiny] [--seeds 3 4 5]
                                                 [--dtypes fp32 bf16] [--json FILE]
    python scripts/measure_drill.py cost [--case flux-tiny] [--config tiny|wide|dev-width] [--dtype fp32]
                                         [--steps N --height H --width W] [--json FILE]

`false-alarms`: per case, seed and dtype, every model component call the module calibration covers (each text
encoder's prompt and negative-prompt call, the DiT's conditional pass at the first and last step and its
unconditional pass at the first, the VAE decode) drilled on a correct pipeline; a false alarm is any module
whose local or inherited error exceeds its threshold. Seeds default to 3-5, which the module calibration
(seeds 0-2) never saw.

`cost`: each phase in a fresh process, wall time and the kernel's resident high-water mark (VmHWM): the plain
parity run (`diffparity run --no-drill`), the same run with a catalog fault and the drill off and on (the drill
of a failing run), `diffparity drill --stage denoise` and `diffparity drill` (every component); then, in one
process with both DiT components loaded, the peak resident memory above the loaded models of a plain forward of
each side against the drill's two passes, beside the largest module output. `--config` picks the checkpoint:
the case's own, TinyFluxConfig.wide() (hidden 1024), or FLUX.1-dev's width (hidden 3072 = 24 heads x 128,
1 double + 2 single blocks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


# ---------------------------------------------------------------------------------------------- false alarms
def false_alarms(cases: list[str], seeds: list[int], dtypes: list[str]) -> list[dict[str, Any]]:
    from harness.drill.session import run_drill
    from harness.golden.module_floors import calibration_targets
    from harness.run.cases import get_case
    from harness.run.native_runner import plan_native_run

    rows = []
    for name in cases:
        case = get_case(name)
        checkpoint = case.build_checkpoint()
        for dtype in dtypes:
            for seed in seeds:
                request = case.request(seed=seed, dtype=dtype)
                plan = plan_native_run(checkpoint, request)
                targets = calibration_targets(plan.config, request)
                for result in run_drill(case, request, checkpoint, targets):
                    data = result.to_dict()
                    flagged = [m["module"] for m in data["modules"]
                               if m["passed"] is False or m["inherited_passed"] is False]
                    multiples = {"local": 0.0, "inherited": 0.0}
                    for m in data["modules"]:
                        for kind, key in (("local", "threshold"), ("inherited", "inherited_threshold")):
                            if m[kind] and isinstance(m[kind].get("rel_l2"), float) and m[key]:
                                multiples[kind] = max(multiples[kind], m[kind]["rel_l2"] / m[key])
                    row = {"case": name, "dtype": dtype, "seed": seed, "call": result.target,
                           "modules": data["summary"]["modules"], "compared": data["summary"]["compared"],
                           "forced": data["summary"]["forced"], "flagged": flagged,
                           "worst_local_x_threshold": multiples["local"],
                           "worst_inherited_x_threshold": multiples["inherited"],
                           "floors": data["floors"]["source"]}
                    rows.append(row)
                    target = result.target
                    where = f"{target['component']} {target['stage']}" + (
                        "" if target["step"] is None else f" step {target['step']}") + f" call {target['call']}"
                    print(f"{name:<10} {dtype} seed {seed} {where:<36} {row['compared']:>3}/{row['modules']:<3} "
                          f"flagged {len(flagged)}  worst x threshold local {multiples['local']:.3f} "
                          f"inherited {multiples['inherited']:.3f}", flush=True)
    total = sum(r["compared"] for r in rows)
    flags = sum(len(r["flagged"]) for r in rows)
    print(f"{len(rows)} component calls, {total} module comparisons, {flags} false alarms; worst local "
          f"{max(r['worst_local_x_threshold'] for r in rows):.3f}x threshold, inherited "
          f"{max(r['worst_inherited_x_threshold'] for r in rows):.3f}x")
    return rows


# ------------------------------------------------------------------------------------------------------- cost
def checkpoint_for(config: str) -> str | None:
    if config == "tiny":
        return None
    from references.flux.tiny import TinyFluxConfig, tiny_flux_checkpoint

    settings = {
        "wide": TinyFluxConfig.wide(),
        "dev-width": TinyFluxConfig(dit_heads=24, dit_head_dim=128, dit_axes_dims_rope=(16, 56, 56), dit_layers=1,
                                    dit_single_layers=2),
    }[config]
    return str(tiny_flux_checkpoint(seed=0, config=settings))


def _phase(args: argparse.Namespace) -> None:
    """One measured phase in this (fresh) process: prints {wall_s, peak_mib, ...} as JSON on the last line."""
    from harness.cli.main import main
    from harness.drill.parity_hook import drill_on_failure
    from harness.run.cases import get_case
    from harness.run.parity import run_parity
    from harness.verdicts.faults import FAULTS

    request_args = ["--dtype", args.dtype]
    for flag in ("steps", "height", "width"):
        if getattr(args, flag):
            request_args += [f"--{flag}", str(getattr(args, flag))]
    if args.model:
        request_args += ["--model", args.model]
    extra: dict[str, Any] = {}
    start = time.perf_counter()
    if args.phase == "run":
        main(["run", args.case, "--no-drill", "--no-progress", "--out", args.out, *request_args])
    elif args.phase in ("faulted", "faulted-drill"):
        case = get_case(args.case)
        fault = FAULTS[args.fault]
        overrides = {k: getattr(args, k) for k in ("steps", "height", "width") if getattr(args, k)}
        request = fault.request_for(case.request(dtype=args.dtype, **overrides))
        result = run_parity(case, request, model=args.model, mutate_native=fault.apply, out_dir=Path(args.out),
                            extensions=[drill_on_failure] if args.phase == "faulted-drill" else ())
        drill = result.report.get("drill") or {}
        extra = {"module": drill.get("module"), "drill_s": (result.report.get("timings_s") or {}).get("drill"),
                 "spooled_mib": (drill.get("memory") or {}).get("spooled_mib")}
    elif args.phase == "drill-denoise":
        main(["drill", args.case, "--stage", "denoise", *request_args])
    elif args.phase == "drill-all":
        main(["drill", args.case, *request_args])
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU seconds: what a loaded machine's wall time hides
    print(json.dumps({"phase": args.phase, "wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                      "peak_mib": round(_status_kb("VmHWM") / 1024, 1), **extra}))


def _activation_memory(args: argparse.Namespace) -> None:
    """Both DiT components loaded; peak RSS above them of plain forwards against the drill's passes."""
    import torch

    from harness.drill.alignment import alignment_for
    from harness.drill.engine import DrillPasses, Variant
    from harness.drill.session import capture_reference, native_components
    from harness.drill.store import OutputStore
    from harness.drill.target import resolve_target
    from harness.run.cases import get_case
    from harness.run.native_runner import plan_native_run
    from native_models.loader import resolve_checkpoint

    case = get_case(args.case)
    overrides = {k: getattr(args, k) for k in ("steps", "height", "width") if getattr(args, k)}
    request = case.request(dtype=args.dtype, **overrides)
    checkpoint = resolve_checkpoint(args.model) if args.model else case.build_checkpoint()
    plan = plan_native_run(checkpoint, request, model_name=args.model)
    target = resolve_target(plan.config, request.do_true_cfg, request.steps, "denoise", "transformer_output", 0)
    captured = capture_reference(case, checkpoint, request, [target])[target]
    native = native_components(checkpoint, request, {"transformer"}, args.model)["transformer"]
    reference = captured.module
    import gc

    gc.collect()
    loaded = _status_kb("VmRSS") / 1024
    _reset_peak()
    with torch.no_grad():
        reference(*captured.args, **captured.kwargs)
    reference_forward = _status_kb("VmHWM") / 1024 - loaded
    _reset_peak()
    with torch.no_grad():
        native(**{k: v for k, v in captured.kwargs.items() if k not in ("joint_attention_kwargs", "return_dict")})
    native_forward = _status_kb("VmHWM") / 1024 - loaded
    alignment = alignment_for(native)
    passes = DrillPasses("transformer", reference, "forward", captured.args, captured.kwargs, alignment,
                         OutputStore("denoise", args.out))
    _reset_peak()
    passes.forced_pass([Variant("native", native, alignment)])
    forced = _status_kb("VmHWM") / 1024 - loaded
    _reset_peak()
    run = passes.free_pass(native, [passes.baseline()], alignment)
    free = _status_kb("VmHWM") / 1024 - loaded
    element = torch.empty((), dtype=next(native.parameters()).dtype).element_size()
    largest = max((torch.Size(shape).numel() * element for shape in run.shapes.values()), default=0) / 2**20
    print(json.dumps({"phase": "activations", "loaded_mib": round(loaded, 1),
                      "reference_forward_peak_above_loaded_mib": round(reference_forward, 1),
                      "native_forward_peak_above_loaded_mib": round(native_forward, 1),
                      "forced_pass_peak_above_loaded_mib": round(forced, 1),
                      "free_pass_peak_above_loaded_mib": round(free, 1),
                      "largest_module_output_mib": round(largest, 2),
                      "spooled_mib": round(passes.store.whole_bytes / 2**20, 1),
                      "sampled_outputs": passes.store.sampled_count}))


def cost(args: argparse.Namespace) -> list[dict[str, Any]]:
    import tempfile

    model = checkpoint_for(args.config)
    rows = []
    phases = ["run", "faulted", "faulted-drill", "drill-denoise", "drill-all", "activations"]
    with tempfile.TemporaryDirectory() as out:
        for phase in phases:
            command = [sys.executable, __file__, "_phase", phase, "--case", args.case, "--dtype", args.dtype,
                       "--out", str(Path(out) / phase), "--fault", args.fault]
            for flag in ("steps", "height", "width"):
                if getattr(args, flag):
                    command += [f"--{flag}", str(getattr(args, flag))]
            if model:
                command += ["--model", model]
            proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if not lines:
                sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
                raise SystemExit(f"phase {phase} failed")
            row = json.loads(lines[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]
    for row in rows[1:-1]:
        row["x_run_time"] = round(row["wall_s"] / base["wall_s"], 2)
        row["x_run_cpu"] = round(row["cpu_s"] / base["cpu_s"], 2)
        row["x_run_peak"] = round(row["peak_mib"] / base["peak_mib"], 2)
    faulted, drilled = rows[1], rows[2]
    print(f"plain run {base['wall_s']} s, {base['peak_mib']} MiB; failing run + drill: "
          f"{drilled['wall_s']} s ({drilled['wall_s'] / faulted['wall_s']:.2f}x the same run without; CPU "
          f"{drilled['cpu_s'] / faulted['cpu_s']:.2f}x), "
          f"{drilled['peak_mib']} MiB ({drilled['peak_mib'] / faulted['peak_mib']:.2f}x); drill --stage denoise "
          f"{rows[3]['wall_s']} s ({rows[3]['x_run_time']}x the plain run), {rows[3]['peak_mib']} MiB "
          f"({rows[3]['x_run_peak']}x); every component {rows[4]['wall_s']} s, {rows[4]['peak_mib']} MiB")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    alarms = sub.add_parser("false-alarms")
    alarms.add_argument("--cases", nargs="+", default=["flux-tiny", "wan-tiny"])
    alarms.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5])
    alarms.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    alarms.add_argument("--json", type=Path)
    for name in ("cost", "_phase"):
        p = sub.add_parser(name)
        if name == "_phase":
            p.add_argument("phase")
            p.add_argument("--out", required=True)
            p.add_argument("--model")
        else:
            p.add_argument("--config", choices=("tiny", "wide", "dev-width"), default="tiny")
            p.add_argument("--json", type=Path)
        p.add_argument("--case", default="flux-tiny")
        p.add_argument("--dtype", default="fp32")
        p.add_argument("--fault", default="norm_weight_dropped")
        for flag in ("steps", "height", "width"):
            p.add_argument(f"--{flag}", type=int)
    args = parser.parse_args()
    if args.command == "false-alarms":
        rows = false_alarms(args.cases, args.seeds, args.dtypes)
    elif args.command == "cost":
        rows = cost(args)
    else:
        (_activation_memory if args.phase == "activations" else _phase)(args)
        return 0
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
