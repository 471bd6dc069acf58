"""Speed of the native side against Diffusers: per stage and end to end (`diffparity bench`).

Public parts: run_bench, BenchResult, StageTiming, BenchError."""

from harness.bench.bench import BenchError, run_bench
from harness.bench.result import BenchResult, StageTiming

__all__ = ["BenchError", "BenchResult", "StageTiming", "run_bench"]
