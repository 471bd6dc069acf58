"""What every native run imports, imported once: the forkserver that forks multi-rank ranks and fault workers
preloads this module (harness/run/multirank.py PRELOAD, last), so each forked process starts warm.

Without it each rank imported the native model modules on its own, and what native runs import lazily: ftfy
(Wan's prompt cleaning; its import compiles one large regex, ~0.25 s in each rank of a Wan run). torch's
meta-device path (torch._refs, torch._dynamo, sympy: ~1.4 s) is not imported: the size check builds small tensors
on the CPU (native_models/meta_build.py SkipInitOnMeta), so no native build takes that path.

Last, the forkserver's heap is frozen (`gc.freeze`): every forked process inherits ~1 M objects from the imports,
and its first full collection walked them all, ~0.25 s in each rank (a tp2 x sp2 run: ~1 s of CPU). Frozen, they
are never walked, and their pages are not written by the collector, so they stay shared with the server. Only the
forkserver imports this module, so nothing else is frozen.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util

from native_models.components import MODEL_CLASSES, PROCESSOR_CLASSES, SCHEDULER_CLASSES
from native_models.pipeline import discover_pipelines

LAZY_IMPORTS = ("ftfy",)  # native_models/pipelines/wan.py clean_wan_prompt, when installed


def warm_start() -> None:
    """Import every native pipeline and component module, and the optional modules they import lazily."""
    discover_pipelines()
    for target in sorted({*MODEL_CLASSES.values(), *SCHEDULER_CLASSES.values(), *PROCESSOR_CLASSES.values()}):
        importlib.import_module(target.split(":")[0])
    for optional in LAZY_IMPORTS:
        if importlib.util.find_spec(optional) is not None:
            importlib.import_module(optional)


warm_start()
gc.freeze()
