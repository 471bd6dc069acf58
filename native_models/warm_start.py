"""What every native run imports, imported once: the forkserver that forks multi-rank ranks and fault workers
preloads this module (harness/run/multirank.py PRELOAD), so each forked process starts warm.

Without it each rank imported ~900 modules on its own (1.5-2 s per rank, 4 ranks sharing 2 cores here): the
native model modules, and torch's meta-device path (torch._refs, torch._prims, torch._dynamo, sympy) that
building a model on the meta device goes through the first time it computes a buffer (a rotary table's arange).
"""

from __future__ import annotations

import importlib

from native_models.components import MODEL_CLASSES, PROCESSOR_CLASSES, SCHEDULER_CLASSES
from native_models.pipeline import discover_pipelines


def warm_start() -> None:
    """Import every native pipeline and component module, and what torch's meta-device path imports."""
    discover_pipelines()
    for target in sorted({*MODEL_CLASSES.values(), *SCHEDULER_CLASSES.values(), *PROCESSOR_CLASSES.values()}):
        importlib.import_module(target.split(":")[0])
    importlib.import_module("torch._dynamo")  # what torch._refs imports on a meta-device float arange


warm_start()
