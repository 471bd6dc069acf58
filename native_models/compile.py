"""Regional `torch.compile`: each repeated block of a model compiled on its own, as Diffusers'
`ModelMixin.compile_repeated_blocks` does for its DiTs.

Why regional: a DiT is N copies of one or two block classes; compiling one block class compiles once and serves all
N copies (dynamo caches the graph per code object), so compile time stays that of one block while the blocks, where
the time goes, run compiled. The embeddings, final norm and projection stay eager, as they do in Diffusers.

Which blocks: the elements of every `nn.ModuleList` whose items are all of one class and that holds more than
one of them (the transformer blocks; a one-element `to_out` list is not a repeated block). A model can name its
classes instead with `_repeated_blocks` (class names, Diffusers' convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DEFAULT_BACKEND = "inductor"  # torch's default: C++/OpenMP kernels on the CPU, Triton on CUDA


@dataclass(frozen=True)
class CompileSettings:
    """How a side is compiled: torch.compile's backend and mode (None: torch's default mode)."""

    backend: str = DEFAULT_BACKEND
    mode: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"backend": self.backend} | ({"mode": self.mode} if self.mode else {})

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "mode": self.mode or "default", "scope": "repeated blocks (regional)"}


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules regional compilation compiles: `_repeated_blocks` classes when the model names them, else the
    items of every ModuleList holding more than one module, all of one class."""
    named = getattr(model, "_repeated_blocks", None)
    if named:
        return [m for m in model.modules() if type(m).__name__ in set(named)]
    found: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            found.extend(module)
    return found


def compile_repeated_blocks(model: nn.Module, settings: CompileSettings | None = None) -> int:
    """Compile every repeated block of `model` in place (`nn.Module.compile`); returns how many.

    Raises ValueError when the model has no repeated block (compiling nothing would be reported as compiled)."""
    blocks = repeated_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no repeated blocks to compile (no ModuleList of one class)")
    kwargs = (settings or CompileSettings()).kwargs()
    for block in blocks:
        block.compile(**kwargs)
    return len(blocks)


def reset_compiled_graphs() -> None:
    """Forget every compiled graph (dynamo's caches): a later compile starts cold, as in a fresh process."""
    torch._dynamo.reset()


def compile_pipeline_dit(pipeline: Any, settings: CompileSettings | None = None) -> None:
    """Regional compile of a native pipeline's DiT (its `transformer` module), in place."""
    compile_repeated_blocks(pipeline.get_module("transformer"), settings)
