"""Shared fixtures: offline mode and the tiny FLUX checkpoint (built once per machine, cached on disk)."""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread per pytest worker: the tiny models are latency-bound, and two OpenMP pools per worker on a
# 2-core machine (pytest -n 2) make each tiny matmul ~1000x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402 - after the environment is set

torch.set_num_threads(1)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what the collection left (every imported module, function and test item: ~0.5 M objects) out of
    the garbage collector's reach. A run releases its pipeline with a full `gc.collect()` (a reference cycle
    would otherwise keep its weights alive while the next side loads); in a pytest worker that walked this whole
    heap each time, ~0.3-0.5 s per run and ~100 s of the CPU suite. Frozen objects stay alive, as they would."""
    gc.freeze()


@pytest.fixture(scope="session")
def tiny_flux() -> Path:
    from references.flux.tiny import tiny_flux_checkpoint

    return tiny_flux_checkpoint(seed=0)


@pytest.fixture()
def tiny_flux_copy(tiny_flux: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint that a test may corrupt."""
    target = tmp_path / "flux-copy"
    shutil.copytree(tiny_flux, target)
    return target
