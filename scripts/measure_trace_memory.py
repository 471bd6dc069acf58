"""Peak memory of trace capture: a streaming `TraceWriter` against an in-memory `Trace` and against no capture.

Every measurement runs in a fresh Python process and reads the kernel's resident-set high-water mark
(VmHWM in /proc/self/status, Linux). The mark is reset (`echo 5 > /proc/self/clear_refs`) just before the
measured work, so a figure is "peak RSS during the run", next to the whole process's peak (imports included).
RSS counts every byte a process holds, whichever allocator made it (torch's, Python's, numpy's); the page
cache behind the spool file is the kernel's and is not counted, which is the point of spooling.

    python scripts/measure_trace_memory.py pipeline [--steps 50] [--size 64] [--sides native reference]
                                                    [--modes none stream memory]
    python scripts/measure_trace_memory.py scaling [--mb 4] [--counts 0 25 50 100]
    python scripts/measure_trace_memory.py parity [--steps 50] [--size 64]
    add --json for machine-readable output.

`pipeline`: one side of flux-tiny (native or Diffusers reference) run without capture, with a streaming
trace, and with an in-memory trace (both saved to a file, as a run does). `scaling`: N records of a fixed
size recorded, saved and read back, to show the writer's memory stays flat while an in-memory trace grows
with N. `parity`: a whole `run_parity` (both sides, comparison, artifacts) with streaming vs in-memory traces.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("none", "stream", "memory")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class PeakWindow:
    """Peak RSS (MiB) of the work done inside the `with` block, and the process peak before it."""

    def __enter__(self) -> PeakWindow:
        self.process_peak_before = _status_kb("VmHWM") / 1024
        self.rss_before = _status_kb("VmRSS") / 1024
        _reset_peak()
        return self

    def __exit__(self, *_: object) -> None:
        self.peak = _status_kb("VmHWM") / 1024
        self.rss_after = _status_kb("VmRSS") / 1024

    def result(self) -> dict[str, float]:
        return {
            "rss_before_mib": round(self.rss_before, 1),
            "peak_mib": round(self.peak, 1),
            "growth_mib": round(self.peak - self.rss_before, 1),
            "process_peak_mib": round(max(self.peak, self.process_peak_before), 1),
            "rss_after_mib": round(self.rss_after, 1),
        }


# --- children: each runs in its own process ---------------------------------------------------------------


def _new_trace(mode: str, meta: dict, spool_dir: Path):
    from harness.trace.memory import Trace
    from harness.trace.streaming import TraceWriter

    return TraceWriter(meta, spool_dir, environment={}) if mode == "stream" else Trace(meta, environment={})


def child_pipeline(work: Path, side: str, mode: str, steps: int, size: int) -> dict:
    import torch

    from harness.run.cases import get_case

    case = get_case("flux-tiny")
    request = case.request(steps=steps, height=size, width=size)
    checkpoint = case.build_checkpoint()
    trace = None if mode == "none" else _new_trace(mode, {"case": case.name, "request": request.to_dict()}, work)
    if side == "native":
        from harness.run.native_runner import plan_native_run, run_native

        plan = plan_native_run(checkpoint, request)
        with PeakWindow() as window:
            if trace is None:  # what run_native does, minus the recorder
                pipeline = plan.pipeline_cls(checkpoint, plan.config, dtype=plan.batch.dtype, device=plan.batch.device)
                pipeline.forward(plan.batch)
                del pipeline
            else:
                run_native(checkpoint, request, trace, plan=plan)
                trace.save(work / "trace.safetensors")
    else:
        import references.flux.runner as flux_runner

        if trace is None:  # the same Diffusers call the runner makes, without its recording hooks
            from diffusers import FluxPipeline

            flux_runner.quiet_libraries()
            with PeakWindow() as window:
                pipe = FluxPipeline.from_pretrained(str(checkpoint), dtype=torch.float32, use_safetensors=True)
                pipe.set_progress_bar_config(disable=True)
                pipe(prompt=request.prompt, guidance_scale=request.guidance_scale, height=size, width=size,
                     num_inference_steps=steps, max_sequence_length=request.max_sequence_length,
                     generator=flux_runner.make_generator(request), output_type="pt", return_dict=False)
                del pipe
        else:
            with PeakWindow() as window:
                flux_runner.run_flux_reference(checkpoint, request, trace)
                trace.save(work / "trace.safetensors")
    result = window.result()
    if trace is not None:
        result["records"] = len(trace)
        result["trace_mib"] = round((work / "trace.safetensors").stat().st_size / 2**20, 2)
    return result


def child_scaling(work: Path, mode: str, count: int, mib: float) -> dict:
    import torch

    from harness.trace.keys import RecordKey
    from harness.trace.streaming import TraceReader

    tensor = torch.randn(int(mib * 2**20) // 4)  # one float32 record of `mib` MiB, re-recorded `count` times
    trace = _new_trace(mode, {"case": "synthetic"}, work)
    with PeakWindow() as window:
        for step in range(count):
            tensor.add_(1.0)  # each record differs, as a run's latents do
            trace.record("denoise", "latents", tensor, step=step)
        trace.save(work / "trace.safetensors")
    result = window.result()
    # reading back: a lazy reader holds one record at a time
    with PeakWindow() as read_window, TraceReader(work / "trace.safetensors") as reader:
        total = 0.0
        for _, loaded in reader.items():
            total += float(loaded[:1].sum())
        assert count == 0 or RecordKey("denoise", "latents", count - 1) in reader
    result["read_back_growth_mib"] = read_window.result()["growth_mib"]
    result["recorded_mib"] = round(count * mib, 1)
    return result


def child_parity(work: Path, mode: str, steps: int, size: int) -> dict:
    import harness.run.parity as parity
    import harness.run.runners as runners
    from harness.run.cases import get_case
    from harness.trace.memory import Trace

    case = get_case("flux-tiny")
    request = case.request(steps=steps, height=size, width=size)
    case.build_checkpoint()
    if mode == "memory":  # what the parity flow did before streaming: both traces held whole until saved
        runners.open_trace = lambda meta, spool_dir=None: Trace(meta)
    out = work
    with PeakWindow() as window:
        result = parity.run_parity(case, request, out_dir=out)
    measured = window.result()
    measured["verdict"] = "pass" if result.passed else "fail"
    measured["traces_mib"] = round(sum((out / n).stat().st_size for n in ("native.safetensors",
                                                                         "reference.safetensors")) / 2**20, 2)
    return measured


# --- parent ----------------------------------------------------------------------------------------------


def run_child(kind: str, **kwargs: object) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "_child", kind, json.dumps(kwargs)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} {kwargs} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_pipeline(sides: list[str], steps: int, size: int, modes: list[str]) -> list[dict]:
    rows = []
    for side in sides:
        for mode in modes:
            rows.append({"side": side, "mode": mode, "steps": steps, "size": size,
                         **run_child("pipeline", side=side, mode=mode, steps=steps, size=size)})
    return rows


def measure_scaling(counts: list[int], mib: float) -> list[dict]:
    return [{"mode": mode, "count": count, "record_mib": mib, **run_child("scaling", mode=mode, count=count, mib=mib)}
            for count in counts for mode in ("stream", "memory")]


def measure_parity(steps: int, size: int) -> list[dict]:
    return [{"mode": mode, "steps": steps, "size": size, **run_child("parity", mode=mode, steps=steps, size=size)}
            for mode in ("stream", "memory")]


def print_pipeline(rows: list[dict]) -> None:
    print(f"{'side':<10}{'mode':<8}{'records':>8}{'trace MiB':>10}{'run peak':>10}{'growth':>8}{'proc peak':>10}"
          f"{'x none':>8}")
    base = {row["side"]: row["process_peak_mib"] for row in rows if row["mode"] == "none"}
    for row in rows:
        ratio = f"{row['process_peak_mib'] / base[row['side']]:.3f}" if row["side"] in base else "-"
        print(f"{row['side']:<10}{row['mode']:<8}{row.get('records', '-'):>8}{row.get('trace_mib', '-'):>10}"
              f"{row['peak_mib']:>10}{row['growth_mib']:>8}{row['process_peak_mib']:>10}{ratio:>8}")


def print_scaling(rows: list[dict]) -> None:
    print(f"{'mode':<8}{'records':>8}{'recorded MiB':>13}{'growth MiB':>11}{'read-back growth':>17}")
    for row in rows:
        print(f"{row['mode']:<8}{row['count']:>8}{row['recorded_mib']:>13}{row['growth_mib']:>11}"
              f"{row['read_back_growth_mib']:>17}")


def print_parity(rows: list[dict]) -> None:
    print(f"{'mode':<8}{'traces MiB':>11}{'run peak':>10}{'growth':>8}{'proc peak':>10}  verdict")
    for row in rows:
        print(f"{row['mode']:<8}{row['traces_mib']:>11}{row['peak_mib']:>10}{row['growth_mib']:>8}"
              f"{row['process_peak_mib']:>10}  {row['verdict']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        kind, kwargs = argv[1], json.loads(argv[2])
        import torch

        torch.set_num_threads(1)
        child = {"pipeline": child_pipeline, "scaling": child_scaling, "parity": child_parity}[kind]
        with tempfile.TemporaryDirectory(prefix="trace-mem-") as work:
            print(json.dumps(child(Path(work), **kwargs)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("pipeline", "scaling", "parity"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sides", nargs="+", choices=("native", "reference"), default=["native", "reference"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="capture modes (pipeline)")
    parser.add_argument("--mb", type=float, default=4.0, help="size of one record in MiB (scaling)")
    parser.add_argument("--counts", type=int, nargs="+", default=[0, 25, 50, 100], help="record counts (scaling)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = parser.parse_args(argv)
    if args.what == "pipeline":
        rows, show = measure_pipeline(args.sides, args.steps, args.size, args.modes), print_pipeline
    elif args.what == "scaling":
        rows, show = measure_scaling(args.counts, args.mb), print_scaling
    else:
        rows, show = measure_parity(args.steps, args.size), print_parity
    if args.json:
        print(json.dumps(rows))
    else:
        show(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
