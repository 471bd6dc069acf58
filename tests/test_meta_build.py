"""The size check's meta build (native_models/meta_build.py): small factories on the CPU, large ones on meta, and
no process that plans a native run imports torch._dynamo (about 1.4 s of CPU in each, forkservers included)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from native_models.meta_build import SMALL_FACTORY, SkipInitOnMeta

ROOT = Path(__file__).resolve().parents[1]


def test_small_factories_land_on_the_cpu_and_large_ones_stay_on_meta() -> None:
    with torch.device("meta"), SkipInitOnMeta():
        small = torch.randn(1, 6, 8) / 8**0.5
        table = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
        steps = torch.linspace(0, 1, 5)
        large = torch.empty(SMALL_FACTORY + 1)
        long_range = torch.arange(SMALL_FACTORY + 1)
        weight = torch.nn.Linear(512, 512).weight  # 262,144 elements: meta, and its init skipped
    assert (small.device.type, small.shape) == ("cpu", (1, 6, 8))
    assert table.device.type == "cpu" and table.dtype == torch.float64 and table.shape == (8,)
    assert steps.device.type == "cpu" and steps.shape == (5,)
    assert large.is_meta and long_range.is_meta and weight.is_meta
    assert long_range.dtype == torch.int64 and long_range.shape == (SMALL_FACTORY + 1,)


def test_an_explicit_device_and_plain_cpu_builds_are_left_alone() -> None:
    with torch.device("meta"), SkipInitOnMeta():
        on_meta = torch.zeros(4, device="meta")
    with SkipInitOnMeta():
        on_cpu = torch.arange(4)
    assert on_meta.is_meta and on_cpu.device.type == "cpu" and on_cpu.tolist() == [0, 1, 2, 3]


CASES = ("wan-tiny", "qwenimage-tiny", "zimage-tiny")


def test_planning_a_native_run_imports_no_torch_dynamo() -> None:
    """The plan checks every component with a meta build (as each rank's loader does), and a parallel run's
    topology check builds its parallel components on meta too. Before small factories moved to the CPU, wan's
    `torch.randn(1, 6, dim) / dim**0.5` and the rotary tables imported torch._dynamo."""
    from harness.run.cases import get_case

    for case in CASES:
        get_case(case).build_checkpoint()  # built (or found) here: the child only reads them
    code = ("import sys\nfrom harness.families import import_family_modules\nimport_family_modules('cases')\n"
            "from harness.run.cases import get_case\nfrom harness.run.memory_budget import check_memory\n"
            "from harness.run.native_runner import plan_native_run\n"
            "from harness.run.multirank import ParallelError, Topology, check_topology\n"
            f"for case in map(get_case, {CASES!r}):\n"
            "    checkpoint = case.build_checkpoint()\n"
            "    plan = plan_native_run(checkpoint, case.request())\n    check_memory(checkpoint, case.request())\n"
            "    try:\n        check_topology(Topology(2, 2), checkpoint, plan, 'cpu')\n"
            "    except ParallelError:\n        pass  # no parallel plan (zimage): checked up to there\n"
            "    print(case.name, 'DYNAMO', 'torch._dynamo' in sys.modules, 'DIFFUSERS', 'diffusers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    expected = [f"{case} DYNAMO False DIFFUSERS False" for case in CASES]
    assert proc.stdout.strip().splitlines()[-3:] == expected, proc.stdout + proc.stderr


def test_an_empty_tensor_is_built_without_a_warning() -> None:
    """A config with a zero size (tests/hostile: latent_channels 0) is refused with one line, not a torch warning:
    the empty tensor lands on the CPU and its init, a no-op, is skipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.device("meta"), SkipInitOnMeta():
            layer = torch.nn.Conv2d(0, 4, 3)
    assert layer.weight.numel() == 0


def test_sizes_given_by_keyword_are_read() -> None:
    with torch.device("meta"), SkipInitOnMeta():
        small = torch.full(size=(3,), fill_value=2.0)
        large = torch.zeros(size=(SMALL_FACTORY + 1,))
    assert small.device.type == "cpu" and small.tolist() == [2.0, 2.0, 2.0] and large.is_meta
