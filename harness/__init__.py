"""The parity harness: a request runs on both sides into traces, the traces are compared, the comparison reported.

The subpackages, in the order data flows through them:
- run/       the request (`GenerationRequest`), the case registry (`Case`, `get_case`), the runners of the two sides
             (`ReferenceRunner`, `NativeRunner`, `MultiRankRunner`), teacher forcing, and the parity run itself
             (`run_parity`: plan -> reference runner -> native runner -> compare -> report);
- trace/     what a run recorded (`Trace`, `TraceWriter`, `TraceReader`, `RecordKey`) and its file format;
- compare/   pure comparisons of traces (`compare_traces`, `Comparison`), metrics, tolerances, drift;
- report/    report.json (`build_report`), report.html, report.md, images, and writing a run's artifacts;
- noise/     the noise detector (`detect_noise`, `noise_section`) and the image statistics it reads;
beside them:
- golden/    stored reference results: golden files (format, store, record, promote, verify), checkpoint
             identity, and the calibration of tolerances (`calibrate`);
- verdicts/  checks of the harness and of models: the fault catalog and matrix, the false-alarm campaign, the
             grid, the model-addition gate;
- cli/       the `diffparity` command, one module per subcommand.
Shared leaves: files.py (atomic writes, file modes), environment.py (the environment fingerprint), families.py
(where family code comes in: the harness holds no model knowledge; each family registers its cases and faults),
release.py (freeing one side's models before the other side loads).
"""
