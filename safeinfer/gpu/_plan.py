"""The GPU choice as a pure function of the environment and the GPU count."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from safeinfer.errors import GpuBindingError, InvalidTypeError

__all__ = [
    "CPU",
    "LOCAL_RANK_VARIABLES",
    "SAFEINFER_GPU_ENV",
    "VISIBLE_DEVICES_ENV",
    "GpuBinding",
    "parse_visible_devices",
    "plan_gpu",
    "visible_gpu_ids",
]

logger = logging.getLogger(__name__)

#: The variable CUDA reads once, at driver initialisation, to pick the GPUs a process can use.
VISIBLE_DEVICES_ENV: Final = "CUDA_VISIBLE_DEVICES"

#: Set by this project's launcher (and by ``bind_gpu``) to the physical id a worker owns.
SAFEINFER_GPU_ENV: Final = "SAFEINFER_GPU"

#: The device string, and the value of ``SAFEINFER_GPU``, for a process without a GPU.
CPU: Final = "cpu"

#: Local-rank variables in priority order, each with the variable that contains the number
#: of processes on this node (``None`` where the launcher sets none reliably).
#: The global ``RANK`` is deliberately absent: it counts processes across all nodes.
LOCAL_RANK_VARIABLES: Final[tuple[tuple[str, str | None], ...]] = (
    ("LOCAL_RANK", "LOCAL_WORLD_SIZE"),  # torchrun, Accelerate, DeepSpeed
    ("SLURM_LOCALID", None),  # srun
    ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),  # Open MPI
    ("MPI_LOCALRANKID", "MPI_LOCALNRANKS"),  # MPICH Hydra, Intel MPI
    ("MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),  # MVAPICH2
)

#: Set in every Ray worker process (the raylet that started it). Ray narrows
#: ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned to a task or actor.
RAY_WORKER_ENV: Final = "RAY_RAYLET_PID"

#: Set to stop Ray from narrowing ``CUDA_VISIBLE_DEVICES``; the list is then not the worker's own.
RAY_NOSET_ENV: Final = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"

#: Set by ``srun --gpus-per-task``, which gives each task a list of only its own GPUs.
SLURM_GPUS_PER_TASK_ENV: Final = "SLURM_GPUS_PER_TASK"

#: Global-rank variables, only used to warn when no local rank is set.
_GLOBAL_RANK_VARIABLES: Final = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


@dataclass(frozen=True)
class GpuBinding:
    """The GPU (or CPU) one process uses, and where the choice came from.

    ``device`` is the torch device (``"cuda:0"`` or ``"cpu"``). ``ordinal`` is the torch
    device index after ``CUDA_VISIBLE_DEVICES`` was narrowed to ``visible_devices``.
    ``physical_id`` is the id as ``CUDA_VISIBLE_DEVICES`` or NVML list it (an index, a
    ``GPU-`` UUID or a ``MIG-`` id). ``source`` names the rule that decided.
    """

    device: str
    ordinal: int | None
    physical_id: str | None
    source: str
    visible_devices: str | None

    @property
    def is_cpu(self) -> bool:
        """Whether this process runs without a GPU."""
        return self.device == CPU


def parse_visible_devices(
    value: str | None, *, device_count: int | None = None
) -> list[str] | None:
    """Parse ``CUDA_VISIBLE_DEVICES`` the way the CUDA driver does; ``None`` when unset.

    Entries are indices, ``GPU-`` UUIDs or ``MIG-`` ids. CUDA ignores the first invalid
    entry and everything after it, so ``"0,-1,1"`` means ``["0"]`` and ``"-1"`` means no
    GPU. With ``device_count`` (physical GPUs), an index at or past it is invalid too.

    >>> parse_visible_devices("3, GPU-8f6e,bogus,1")
    ['3', 'GPU-8f6e']
    """
    if value is None:
        return None
    ids: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry.isdigit() and entry.isascii():
            index = int(entry)
            if device_count is not None and index >= device_count:
                break
            entry = str(index)
        elif not (entry.startswith(("GPU-", "MIG-")) and len(entry) > len("GPU-")):
            break
        if entry in ids:
            break
        ids.append(entry)
    return ids


def visible_gpu_ids(env: Mapping[str, str], *, device_count: int | None = None) -> list[str]:
    """List the GPU ids this process may use: ``CUDA_VISIBLE_DEVICES``, else ``0..count-1``."""
    listed = parse_visible_devices(env.get(VISIBLE_DEVICES_ENV), device_count=device_count)
    if listed is not None:
        return listed
    return [str(index) for index in range(device_count or 0)]


def plan_gpu(
    env: Mapping[str, str],
    *,
    gpu: int | str | None = None,
    device_count: int | None = None,
    strict: bool = True,
) -> GpuBinding:
    """Choose this process's GPU from ``env`` and the GPU count, without side effects.

       Sources in order:

       1. ``gpu``: an ``int`` indexes the visible GPUs, a ``str`` is an id as
          ``CUDA_VISIBLE_DEVICES`` lists it, and ``"cpu"`` forces the CPU.
       2. ``SAFEINFER_GPU``.
       3. The first local-rank variable of :data:`LOCAL_RANK_VARIABLES` that is set.
       4. A Ray worker's narrowed ``CUDA_VISIBLE_DEVICES``.
       5. The first visible GPU, or the CPU when there is none.
    ``device_count`` is the number of physical GPUs on
       the host; ``None`` trusts ``CUDA_VISIBLE_DEVICES`` and counts 0 GPUs when it is
       unset. The binding narrows ``CUDA_VISIBLE_DEVICES`` to the chosen id, so its device
       is always ``cuda:0`` or ``cpu``.

       With ``strict=True`` an impossible choice (more local ranks than GPUs, an id that is
       not visible) raises :class:`~safeinfer.errors.GpuBindingError`; with ``strict=False``
       it logs a warning and returns the best choice (ranks wrap around the GPUs).

       >>> binding = plan_gpu({"CUDA_VISIBLE_DEVICES": "3,5", "LOCAL_RANK": "1"})
       >>> binding.device, binding.physical_id, binding.source
       ('cuda:0', '5', 'LOCAL_RANK')
    """
    visible = visible_gpu_ids(env, device_count=device_count)
    physical_id, source = _choose(env, visible, gpu=gpu, strict=strict)
    if physical_id is None:
        return GpuBinding(CPU, None, None, source, "")
    return GpuBinding("cuda:0", 0, physical_id, source, physical_id)


def _choose(
    env: Mapping[str, str], visible: list[str], *, gpu: int | str | None, strict: bool
) -> tuple[str | None, str]:
    if gpu is not None:
        return _from_request(gpu, visible, env, source="argument", strict=strict), "argument"

    assigned = env.get(SAFEINFER_GPU_ENV, "").strip()
    if assigned:
        chosen = _from_request(assigned, visible, env, source=SAFEINFER_GPU_ENV, strict=strict)
        return chosen, SAFEINFER_GPU_ENV

    for rank_variable, size_variable in LOCAL_RANK_VARIABLES:
        if env.get(rank_variable, "").strip():
            chosen = _from_local_rank(env, visible, rank_variable, size_variable, strict=strict)
            return chosen, rank_variable if chosen is not None else "no-gpu"

    if _ray_narrowed(env):
        # Ray lists only the GPUs it assigned to this worker, so its first one is ours.
        return (visible[0], "ray") if visible else (None, "no-gpu")

    if not visible:
        return None, "no-gpu"
    _warn_if_global_rank_only(env, visible)
    return visible[0], "default"


def _from_request(
    request: int | str, visible: list[str], env: Mapping[str, str], *, source: str, strict: bool
) -> str | None:
    if isinstance(request, bool):
        raise InvalidTypeError(
            f"invalid gpu {request!r}: expected an int index, an id string or 'cpu'"
        )
    if isinstance(request, str) and request.strip().lower() == CPU:
        return None
    if not visible:
        message = f"GPU {request!r} ({source}) was requested but no GPU is visible{_shown(env)}"
        _fail(message, strict)
        return None
    if isinstance(request, int):
        if request < 0:
            raise GpuBindingError(f"invalid GPU index {request} ({source}): expected >= 0")
        if request >= len(visible):
            _fail(
                f"GPU index {request} ({source}) is out of range: only {len(visible)} "
                f"GPU(s) are visible{_shown(env)}; pass an index below {len(visible)}",
                strict,
            )
            return visible[request % len(visible)]
        return visible[request]
    wanted = request.strip()
    if wanted.isdigit() and wanted.isascii():
        wanted = str(int(wanted))
    if env.get(VISIBLE_DEVICES_ENV) is None and wanted.startswith(("GPU-", "MIG-")):
        # With no list every GPU is visible, but only by index; a UUID cannot be checked
        # here and CUDA resolves it when the list is narrowed to it.
        return wanted
    if wanted not in visible:
        _fail(
            f"GPU {request!r} ({source}) is not among the visible GPUs {visible}{_shown(env)}; "
            f"pass one of those ids, or widen {VISIBLE_DEVICES_ENV} before CUDA starts",
            strict,
        )
        return visible[0]
    return wanted


def _from_local_rank(
    env: Mapping[str, str],
    visible: list[str],
    rank_variable: str,
    size_variable: str | None,
    *,
    strict: bool,
) -> str | None:
    rank = _parse_count(env, rank_variable)
    if not visible:
        logger.info("%s=%s is set but no GPU is visible; binding to the CPU", rank_variable, rank)
        return None

    if size_variable is not None and env.get(size_variable, "").strip():
        local_size = _parse_count(env, size_variable)
        if local_size > len(visible):
            _fail(
                f"{size_variable}={local_size} processes run on this node but only "
                f"{len(visible)} GPU(s) are visible{_shown(env)}; start at most "
                f"{len(visible)} processes per node, or make more GPUs visible",
                strict,
            )

    if rank >= len(visible) and _slurm_lists_own_gpus(env, rank_variable, visible):
        # srun --gpus-per-task gives each task a CUDA_VISIBLE_DEVICES of its own GPUs only.
        return visible[0]
    if rank >= len(visible):
        _fail(
            f"{rank_variable}={rank} but only {len(visible)} GPU(s) are visible{_shown(env)}: "
            f"local ranks 0..{len(visible) - 1} fit; start at most {len(visible)} processes "
            "per node, or make more GPUs visible",
            strict,
        )
        return visible[rank % len(visible)]
    return visible[rank]


def _ray_narrowed(env: Mapping[str, str]) -> bool:
    return (
        RAY_WORKER_ENV in env
        and env.get(VISIBLE_DEVICES_ENV) is not None
        and not env.get(RAY_NOSET_ENV, "").strip()
    )


def _slurm_lists_own_gpus(env: Mapping[str, str], rank_variable: str, visible: list[str]) -> bool:
    # NOTE: follows srun's documented --gpus-per-task behaviour; not run on a real cluster.
    per_task = env.get(SLURM_GPUS_PER_TASK_ENV, "").strip()
    if rank_variable != "SLURM_LOCALID" or not per_task.isdigit():
        return False
    return len(visible) <= int(per_task)


def _parse_count(env: Mapping[str, str], variable: str) -> int:
    text = env.get(variable, "").strip()
    if not (text.isdigit() and text.isascii()):
        raise GpuBindingError(f"invalid {variable}={text!r}: expected a non-negative integer")
    return int(text)


def _warn_if_global_rank_only(env: Mapping[str, str], visible: list[str]) -> None:
    global_rank = next((name for name in _GLOBAL_RANK_VARIABLES if name in env), None)
    if global_rank is not None and len(visible) > 1:
        logger.warning(
            "%s=%s is set but no local-rank variable is; binding GPU %s (the default). "
            "A global rank is not a device index: set LOCAL_RANK or SAFEINFER_GPU",
            global_rank,
            env[global_rank],
            visible[0],
        )


def _shown(env: Mapping[str, str]) -> str:
    value = env.get(VISIBLE_DEVICES_ENV)
    return f" ({VISIBLE_DEVICES_ENV}={value})" if value is not None else ""


def _fail(message: str, strict: bool) -> None:
    if strict:
        raise GpuBindingError(message)
    logger.warning("%s; continuing because strict=False", message)
