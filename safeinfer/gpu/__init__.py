"""GPU binding decided before CUDA starts, GPU claims, and CPU thread budgets.

>>> from safeinfer.gpu import bind_gpu
>>> binding = bind_gpu()          # before any CUDA call           # doctest: +SKIP
>>> pipe.to(binding.device)                                        # doctest: +SKIP

The choice (:func:`plan_gpu`) is a pure function of the environment and the GPU count:
an explicit id, ``SAFEINFER_GPU``, a launcher's local rank (torchrun, Accelerate, SLURM,
Open MPI, MPICH, MVAPICH), Ray's narrowed list, else the first GPU or the CPU.
:func:`bind_gpu` then narrows ``CUDA_VISIBLE_DEVICES`` so the GPU is ``cuda:0``, and
:func:`claim_gpu` leases a free GPU with one lock per device when no launcher assigns one.
"""

from safeinfer.gpu._bind import CudaState, bind_gpu, cuda_state
from safeinfer.gpu._claim import DEFAULT_CLAIM_TIMEOUT, GpuClaim, claim_gpu
from safeinfer.gpu._enumerate import GpuInventory, count_gpus
from safeinfer.gpu._plan import (
    CPU,
    LOCAL_RANK_VARIABLES,
    SAFEINFER_GPU_ENV,
    VISIBLE_DEVICES_ENV,
    GpuBinding,
    parse_visible_devices,
    plan_gpu,
    visible_gpu_ids,
)
from safeinfer.gpu._threads import (
    THREAD_ENV_VARS,
    THREADS_ENV,
    apply_thread_budget,
    available_cores,
    thread_budget,
)
from safeinfer.gpu._worker_env import worker_env

__all__ = [
    "CPU",
    "DEFAULT_CLAIM_TIMEOUT",
    "LOCAL_RANK_VARIABLES",
    "SAFEINFER_GPU_ENV",
    "THREADS_ENV",
    "THREAD_ENV_VARS",
    "VISIBLE_DEVICES_ENV",
    "CudaState",
    "GpuBinding",
    "GpuClaim",
    "GpuInventory",
    "apply_thread_budget",
    "available_cores",
    "bind_gpu",
    "claim_gpu",
    "count_gpus",
    "cuda_state",
    "parse_visible_devices",
    "plan_gpu",
    "thread_budget",
    "visible_gpu_ids",
    "worker_env",
]
