"""Speed of the native side against Diffusers: per stage and end to end (`diffparity bench`).

Public parts: run_bench, BenchResult, StageTiming, BenchError, COMPILE_CHOICES."""

from harness.bench.bench import COMPILE_CHOICES, BenchError, run_bench
from harness.bench.result import BenchResult, StageTiming

__all__ = ["COMPILE_CHOICES", "BenchError", "BenchResult", "StageTiming", "run_bench"]
