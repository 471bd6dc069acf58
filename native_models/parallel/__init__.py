"""Tensor and sequence parallelism for native models over torch.distributed (gloo on CPU, NCCL on CUDA).

Launch with torchrun; on every rank:

    mesh = init_parallel(tp=2, sp=2, device="cuda")                      # WORLD_SIZE must equal tp * sp
    model = load_parallel_component(WanTransformer3DModel, folder, mesh, dtype, device)
    out = model(latents, timestep, text)                                 # full output on every rank
    full = gather_sequence(block_activation, parallel_context(model))    # canonical tensor for a trace

How a model is split is declared by the model (`_tp_plan`, `_sp_plan`) and applied by `parallelize`.
"""

from native_models.parallel.capture import gather_sequence, gather_tensor_parallel
from native_models.parallel.context import ParallelContext
from native_models.parallel.mesh import (
    SINGLE,
    ParallelError,
    ParallelMesh,
    build_mesh,
    destroy_parallel,
    init_parallel,
)
from native_models.parallel.plan import load_parallel_component, parallel_context, parallelize

__all__ = [
    "SINGLE",
    "ParallelContext",
    "ParallelError",
    "ParallelMesh",
    "build_mesh",
    "destroy_parallel",
    "gather_sequence",
    "gather_tensor_parallel",
    "init_parallel",
    "load_parallel_component",
    "parallel_context",
    "parallelize",
]
