"""Every model of the native registry, through its cases and their goldens: no list to edit.

Parameters come from the registry (native_models/registry.py: every `native_models/pipelines/<family>.py`
registers its family at import), the cases that name each family (`Case.family`, harness/run/cases.py) and the
goldens found under golden/: a new model appears here, and in `pytest cases/ -k <family>`, as soon as it is
registered. Per case: the native side against its fp32 CPU golden (and any other CPU golden it has, e.g. bf16),
without running Diffusers (`diffparity golden verify`); a family without a case fails, named.

A missing golden fails on the CPU (every model must have one: the gate) and skips on a GPU (GPU goldens are
optional, keyed by device class: a cuda-sm90 golden is never used on another class). With
DIFFPARITY_GOLDEN_REGEN=1 each test records a fresh draft beside the golden and still fails, as
pytest-regressions' --force-regen does: review it with `diffparity golden verify CASE --draft`, then promote.
"""

from __future__ import annotations

import os

import pytest
import torch

from harness.compare.tolerances import device_class
from harness.golden.errors import GoldenMissing
from harness.golden.record import record_golden
from harness.golden.store import golden_path, scan_goldens
from harness.golden.verify import load_golden_for, verify_golden
from harness.report.build import describe_failure
from harness.run.cases import cases_for_family, get_case
from harness.verdicts.gate import GATE_DTYPE, registry_entries

REGEN_ENV = "DIFFPARITY_GOLDEN_REGEN"


def registered_params() -> list:
    """(family, case, dtype, device) for every registered family: its cases x the dtypes of their CPU goldens
    (fp32 always), plus an fp32 GPU check per case; (family, None, ...) for a family without a case."""
    found, _ = scan_goldens()
    params = []
    for entry in registry_entries():
        cases = cases_for_family(entry.family)
        if not cases:
            params.append(pytest.param(entry.family, None, GATE_DTYPE, "cpu", id=f"{entry.family}/no-case"))
        for case in cases:
            dtypes = {GATE_DTYPE} | {f.dtype for f in found
                                     if f.case == case.name and f.kind == "golden" and f.device_class == "cpu"}
            for dtype in sorted(dtypes):
                params.append(pytest.param(entry.family, case.name, dtype, "cpu",
                                           id=f"{entry.family}/{case.name}/{dtype}/cpu"))
            params.append(pytest.param(entry.family, case.name, GATE_DTYPE, "cuda", marks=pytest.mark.gpu(1),
                                       id=f"{entry.family}/{case.name}/{GATE_DTYPE}/cuda"))
    return params


@pytest.mark.parametrize(("family", "case_name", "dtype", "device"), registered_params())
def test_registered_case_matches_its_golden(family: str, case_name: str | None, dtype: str, device: str) -> None:
    if case_name is None:
        pytest.fail(f"model family '{family}' is registered in the native registry but no Case declares it "
                    f"(references/{family}/cases.py); `diffparity gate {family}` lists everything it still needs")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    case = get_case(case_name)
    if os.environ.get(REGEN_ENV):
        golden = record_golden(case, dtype, device, command=f"{REGEN_ENV}=1 pytest cases/ -k {case.name}")
        pytest.fail(f"{REGEN_ENV}: draft written to {golden.path}; review it (diffparity golden verify {case.name} "
                    f"--dtype {dtype} --draft) and promote it (diffparity golden promote {case.name} --dtype {dtype} "
                    "--force); this test fails until then")
    try:
        golden = load_golden_for(case, dtype, device)
    except GoldenMissing as exc:
        if device_class(device) == "cpu":
            pytest.fail(str(exc))  # every model needs its CPU golden
        pytest.skip(str(exc))  # GPU goldens are optional; never one of another device class
    expected = case.request(dtype=dtype, device=golden.request().device)
    assert golden.request() == expected, (
        f"{golden.path} was recorded for {golden.request()}, but the case's default request is now {expected}: "
        f"record it again ({REGEN_ENV}=1 pytest cases/ -k {case.name}, then promote)")
    result = verify_golden(case, dtype, device)
    first = result.comparison.first_divergence
    obtained = f" (native trace: {result.obtained})" if result.obtained else ""
    assert result.comparison.passed, (describe_failure(first) if first else "no records compared") + obtained
    assert not result.noise_fails, f"{case.name}: {result.report['noise']['note']}"
    if not golden.compact:  # every denoising step and the decode were also checked teacher-forced
        forced = {(r.stage, r.step) for r in result.comparison.forced_records}
        assert forced == {(r.stage, r.step) for r in result.comparison.records if r.stage in ("denoise", "decode")}


def test_every_golden_belongs_to_a_case() -> None:
    """Unused goldens are reported: a golden of a case that no longer exists, or a stray file under golden/."""
    from harness.run.cases import CASES

    found, strays = scan_goldens()
    unused = [str(f.path) for f in found if f.case not in CASES] + [str(p) for p in strays]
    assert not unused, f"unused files under golden/ (delete them or restore their case): {unused}"
    for entry in found:  # and each sits where its name says, for its own case
        if entry.kind == "golden":
            assert entry.path == golden_path(entry.case, entry.dtype, entry.device_class)
