"""A fault matrix shares one reference run per distinct request and gives the same verdicts in worker processes
(harness/verdicts/fault_matrix.py, harness/verdicts/fault_pool.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

import harness.verdicts.fault_matrix as fault_matrix
from harness.run.cases import get_case
from harness.verdicts.fault_matrix import fault_request, request_key, run_fault_matrix
from harness.verdicts.fault_pool import threads_per_worker
from harness.verdicts.faults import FAULTS

# two faults on the case's default request (one shared reference) and one that asks another request
NAMES = ("sigma_shift_not_applied", "decode_shift_missing", "raw_latent_shape_missing")


def comparable(outcome: Any) -> dict[str, Any]:
    data = outcome.to_dict()
    data.pop("seconds")  # timings differ run to run; the verdicts must not
    data.pop("drill_seconds", None)
    return data


@pytest.fixture(scope="module")
def in_one_process() -> tuple[list[Any], list[str]]:
    """The matrix of NAMES run in this process (jobs=1), and the requests its reference runs were asked for:
    both tests below read this one run."""
    case = get_case("flux-tiny")
    calls: list[str] = []
    original = fault_matrix.run_reference_side

    def counting(case_, request, model=None):  # noqa: ANN001, ANN202 - the signature it stands in for
        calls.append(request_key(request))
        return original(case_, request, model)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fault_matrix, "run_reference_side", counting)
        outcomes = run_fault_matrix(case, [FAULTS[name] for name in NAMES], ["fp32"], jobs=1)
    return outcomes, calls


def test_faults_of_one_request_share_one_reference_run(in_one_process: tuple[list[Any], list[str]]) -> None:
    case = get_case("flux-tiny")
    keys = {request_key(fault_request(case, FAULTS[name], "fp32")) for name in NAMES}
    outcomes, calls = in_one_process
    assert [o.fault for o in outcomes] == list(NAMES)  # returned in (dtype, fault) order
    assert all(o.ok for o in outcomes), [o.to_dict() for o in outcomes]
    assert sorted(calls) == sorted(keys)  # once per distinct request, not once per fault


def test_a_shared_reference_of_another_request_is_refused() -> None:
    from harness.run.parity import run_parity, run_reference_side

    case = get_case("flux-tiny")
    request = case.request(dtype="fp32")
    reference = run_reference_side(case, request)
    with pytest.raises(ValueError, match="shared reference side ran"):
        run_parity(case, replace(request, seed=request.seed + 1), reference=reference)


def test_worker_processes_give_the_same_verdicts_as_one_process(in_one_process: tuple[list[Any], list[str]]
                                                                ) -> None:
    case = get_case("flux-tiny")
    faults = [FAULTS[name] for name in NAMES]
    finished: list[int] = []
    in_pool = run_fault_matrix(case, faults, ["fp32"], lambda done, total, _: finished.append(done), jobs=2)
    alone, _ = in_one_process
    assert [comparable(o) for o in in_pool] == [comparable(o) for o in alone]
    assert finished == [1, 2, 3]


def test_threads_are_shared_out_among_workers() -> None:
    assert threads_per_worker(1) >= 1 and threads_per_worker(10**6) == 1
