"""Comparing traces: pure functions over what the runners produced; results are plain data that serialise to JSON.

- metrics.py: `tensor_metrics` (max_abs, mean_abs, rel_l2, cos, ...);
- tolerances.py: `Tolerance`, `ToleranceSpec`, the floor rule (threshold = 3x floor) and stored calibrations;
- records.py: `compare_traces`, `compare_record`, `Comparison`, `RecordResult`, `threshold_multiple`;
- drift.py: `drift`, the per-step growth of the error through the denoising loop.
Measuring floors runs the reference, so it lives with the stored results: harness/golden/calibrate.py.
"""
