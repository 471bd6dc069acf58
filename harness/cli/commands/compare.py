"""`diffparity compare TRACE_A TRACE_B`: compare two stored traces, A the reference, B the candidate.

The traces may come from two machines or two versions of the code: each carries its environment
fingerprint, and the report keeps both. Both files are read lazily, one record at a time.
A pair that cannot be compared is an input error (exit 2), not a parity failure: an unreadable, truncated,
corrupt or other-version file, an empty trace, or a record whose shape differs between A and B (a different
resolution, step count or model is a different experiment, not a numerical divergence). A record missing
from B is a parity failure, as in `diffparity run`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.common import EXIT_FAIL, EXIT_PASS, UsageError, check_out_dir

if TYPE_CHECKING:  # keep `diffparity --help` free of torch imports
    from harness.compare.tolerances import ToleranceSpec
    from harness.trace.memory import Trace


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compare",
        help="compare two stored traces (A reference, B candidate) and write a report",
        description=(
            "Compare trace file TRACE_B (the candidate) against TRACE_A (the reference) record by record, under "
            "the tolerances a run of A's case would use (its stored calibration, else the defaults of the dtype), "
            "and write DIR/report.json in the schema of `diffparity run`."
        ),
        epilog="Exit codes: 0 parity holds, 1 parity fails (first divergence printed), 2 unreadable or "
               "mismatched traces, bad usage.",
    )
    parser.add_argument("trace_a", metavar="TRACE_A", type=Path, help="reference trace (.safetensors)")
    parser.add_argument("trace_b", metavar="TRACE_B", type=Path, help="candidate trace (.safetensors)")
    parser.add_argument("--out", type=Path, metavar="DIR", required=True, help="output folder for report.json")
    parser.add_argument("--dtype", choices=("fp32", "bf16"),
                        help="tolerances to apply (default: the dtype both traces were recorded in)")
    parser.set_defaults(handler=command_compare)


def trace_dtype(trace: Trace) -> str | None:
    request = trace.meta.get("request")
    dtype = trace.meta.get("dtype") or (request.get("dtype") if isinstance(request, dict) else None)
    return str(dtype) if dtype is not None else None


def choose_dtype(reference: Trace, candidate: Trace, requested: str | None) -> str:
    """--dtype, else the dtype both traces name; two different dtypes need an explicit choice."""
    if requested is not None:
        return requested
    dtypes = {trace_dtype(reference), trace_dtype(candidate)} - {None}
    if not dtypes:
        raise UsageError("neither trace records its dtype; pass --dtype fp32 or --dtype bf16")
    if len(dtypes) > 1:
        raise UsageError(f"the traces were recorded in {trace_dtype(reference)} (A) and {trace_dtype(candidate)} "
                         "(B); pass --dtype to choose the tolerances")
    dtype = dtypes.pop()
    if dtype not in ("fp32", "bf16"):
        raise UsageError(f"the traces name dtype '{dtype}', which has no tolerances; pass --dtype fp32|bf16")
    return dtype


def tolerance_spec(reference: Trace, dtype: str) -> ToleranceSpec:
    """The tolerances `diffparity run` would judge this case by: the stored calibration for the reference's
    case, checkpoint, dtype and device when the trace names them (traces written by a run do), else the
    dtype defaults."""
    import torch

    from harness.compare.tolerances import ToleranceError, ToleranceSpec, load_tolerance_spec
    from harness.run.cases import CASES

    meta = reference.meta
    request = meta.get("request") if isinstance(meta.get("request"), dict) else {}
    device = str(meta.get("device") or request.get("device") or "cpu")
    case, model = meta.get("case"), meta.get("model")
    # metadata is data from a file: a case or model that is not a plain name, or a device torch cannot parse,
    # means no stored calibration applies
    if not isinstance(case, str) or case not in CASES or "model" not in meta or not isinstance(model, str | None):
        return ToleranceSpec(dtype)
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        return ToleranceSpec(dtype)
    try:
        # the device type only: the recording machine's device index means nothing here
        return load_tolerance_spec(case, dtype, device_type if device_type in ("cpu", "cuda") else "cpu", model)
    except ToleranceError as exc:
        raise UsageError(str(exc)) from None


def check_comparable(reference: Trace, candidate: Trace, names: tuple[str, str]) -> None:
    """Raise TraceError when the pair is not one experiment: an empty trace or a shape that differs."""
    from harness.trace.keys import TraceError

    for trace, name in zip((reference, candidate), names, strict=True):
        if len(trace) == 0:
            raise TraceError(f"{name} holds no records")
    for key in reference:
        if key not in candidate:
            continue
        ref_shape, cand_shape = reference.spec(key)[1], candidate.spec(key)[1]
        if ref_shape != cand_shape:
            raise TraceError(f"mismatched traces: {key.name()} has shape {list(ref_shape)} in A and "
                             f"{list(cand_shape)} in B (another size, step count or model; not comparable)")


def command_compare(args: argparse.Namespace) -> int:
    from harness.compare.records import compare_traces
    from harness.files import write_json_atomic
    from harness.report.build import build_report, format_stage_table
    from harness.trace.streaming import TraceReader

    check_out_dir(args.out)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with TraceReader(args.trace_a) as reference, TraceReader(args.trace_b) as candidate:
        check_comparable(reference, candidate, (str(args.trace_a), str(args.trace_b)))
        dtype = choose_dtype(reference, candidate, args.dtype)
        print(f"compare: {len(candidate)} records of {args.trace_b} against {len(reference)} of {args.trace_a} "
              f"({dtype} tolerances)", file=sys.stderr)
        timings["open"] = time.perf_counter() - start
        start = time.perf_counter()
        spec = tolerance_spec(reference, dtype)
        comparison = compare_traces(reference, candidate, dtype, spec)
        timings["compare"] = time.perf_counter() - start
        request = reference.meta.get("request") if isinstance(reference.meta.get("request"), dict) else {}
        report = build_report(
            case=reference.meta.get("case"),
            seed=request.get("seed"),
            comparison=comparison,
            request=request,
            environment=reference.environment,
            timings=timings,
            checkpoint=reference.meta.get("checkpoint"),
            tolerances=spec.describe(),
        )
        report["dtype"] = dtype
        report["compared_traces"] = {
            role: {"path": str(path.resolve()), "side": trace.meta.get("side"), "case": trace.meta.get("case"),
                   "request": trace.meta.get("request"), "environment": trace.environment}
            for role, path, trace in (("reference", args.trace_a, reference), ("candidate", args.trace_b, candidate))
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "error.json").unlink(missing_ok=True)
    write_json_atomic(args.out / "report.json", report)
    print(format_stage_table(comparison, tolerances=report["tolerances"]))
    print(f"report: {args.out / 'report.json'}")
    return EXIT_PASS if comparison.passed else EXIT_FAIL
