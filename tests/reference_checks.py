"""Checks that the reference-side tests of every model family share: tiny checkpoint builds and recorded traces.

test_reference_flux.py and test_reference_wan.py hold each family's own expectations (which files a checkpoint
has, which records a run makes, in which shapes); what a sound build or a sound reference trace is does not
depend on the family, so it is said once here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from harness.run.request import GenerationRequest
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace


def safetensors_bytes(folder: Path) -> dict[str, bytes]:
    """Every .safetensors file below `folder`, by relative path: what two builds must agree on byte for byte."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def assert_build_is_deterministic(
    build: Callable[..., Path], checkpoint: Path, tmp_path: Path, weight_files: set[str]
) -> None:
    """`checkpoint` (seed 0) holds exactly `weight_files`; building seed 0 again gives the same bytes and leaves
    the global RNG alone; seed 1 changes every file."""
    reference = safetensors_bytes(checkpoint)
    assert set(reference) == weight_files
    state = torch.random.get_rng_state()
    assert safetensors_bytes(build(tmp_path / "again", seed=0)) == reference
    assert torch.equal(torch.random.get_rng_state(), state)  # the build leaves the global RNG alone
    other = safetensors_bytes(build(tmp_path / "seed1", seed=1))
    assert all(other[name] != reference[name] for name in reference)


def assert_cached_build_once(cached: Callable[..., Path], cache: Path, folder_name: str) -> Path:
    """`cached(seed=0)` builds into CACHE/checkpoints/FOLDER_NAME once; a second call reuses it untouched and no
    temporary folder is left beside it. Returns the checkpoint folder."""
    first = cached(seed=0)
    assert first == cache / "checkpoints" / folder_name
    stamp = (first / "model_index.json").stat().st_mtime_ns
    assert cached(seed=0) == first
    assert (first / "model_index.json").stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary folders left behind
    return first


def assert_no_all_zero_weights(models: Iterable[torch.nn.Module]) -> None:
    """Every matrix or kernel (ndim >= 2) of every model holds a non-zero value: no weight was left unset."""
    for model in models:
        for name, param in model.named_parameters():
            assert param.ndim < 2 or param.any(), f"{name} is all zeros"


def record(trace: Trace, name: str) -> torch.Tensor:
    """The tensor recorded under a key's printed name, e.g. "denoise/latents/0"."""
    return trace[RecordKey.parse(name)]


def model_dtype(req: GenerationRequest) -> torch.dtype:
    """The torch dtype a reference run of `req` computes in (the tests' cases are fp32 or bf16)."""
    return torch.bfloat16 if req.dtype == "bf16" else torch.float32


def assert_reference_records(
    trace: Trace, req: GenerationRequest, expected_shapes: dict[str, tuple[int, ...]], pipeline_class: str
) -> None:
    """The trace holds exactly the expected records in their canonical shapes, and says it is a CPU reference
    run of `pipeline_class` in the request's dtype."""
    recorded = {key.name(): tuple(tensor.shape) for key, tensor in trace.items()}
    assert recorded == expected_shapes
    assert trace.meta["side"] == "reference" and trace.meta["pipeline_class"] == pipeline_class
    assert trace.meta["dtype"] == req.dtype and trace.meta["device"] == "cpu"


def assert_records_finite_with_signal(trace: Trace) -> None:
    """Every record is finite and not (near) constant: a stage that output NaNs or zeros would show here."""
    for key, tensor in trace.items():
        values = tensor.double()
        assert torch.isfinite(values).all(), key.name()
        assert values.std() > 1e-3, key.name()
