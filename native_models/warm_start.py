"""What every native run imports, imported once: the forkserver that forks multi-rank ranks and fault workers
preloads this module (harness/run/multirank.py PRELOAD), so each forked process starts warm.

Without it each rank imported the native model modules on its own. torch's meta-device path (torch._refs,
torch._dynamo, sympy: ~1.4 s) is not imported: the size check builds small tensors on the CPU
(native_models/meta_build.py SkipInitOnMeta), so no native build takes that path.
"""

from __future__ import annotations

import importlib

from native_models.components import MODEL_CLASSES, PROCESSOR_CLASSES, SCHEDULER_CLASSES
from native_models.pipeline import discover_pipelines


def warm_start() -> None:
    """Import every native pipeline and component module."""
    discover_pipelines()
    for target in sorted({*MODEL_CLASSES.values(), *SCHEDULER_CLASSES.values(), *PROCESSOR_CLASSES.values()}):
        importlib.import_module(target.split(":")[0])


warm_start()
