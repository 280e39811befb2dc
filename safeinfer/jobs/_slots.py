"""How many workers a job starts, on which GPU each, with how many CPU threads."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Final

from safeinfer.errors import ConfigError
from safeinfer.jobs._worker import WorkerSlot

__all__ = ["AUTO", "plan_slots"]

logger = logging.getLogger(__name__)

#: ``gpus`` value that uses every GPU this process may see, or the CPU when there is none.
AUTO: Final = "auto"
#: ``gpus`` value that forces CPU workers.
CPU: Final = "cpu"


def plan_slots(
    gpus: str | Sequence[int | str] | None,
    workers: int | None,
    threads_per_worker: int | None,
) -> list[WorkerSlot]:
    """Return one slot per worker.

    With GPUs, the default is one worker per GPU; more workers than GPUs share them
    round-robin. Without GPUs, the default is one CPU worker. Threads default to an even
    share of this process's cores.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"invalid worker count {workers}: must be at least 1")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ConfigError(f"invalid threads per worker {threads_per_worker}: must be at least 1")
    gpu_ids = _gpu_ids(gpus)
    count = workers if workers is not None else max(1, len(gpu_ids))

    from safeinfer.gpu import thread_budget

    threads = threads_per_worker if threads_per_worker is not None else thread_budget(count)
    if not gpu_ids:
        return [WorkerSlot(f"cpu{index}", None, threads) for index in range(count)]
    per_gpu = -(-count // len(gpu_ids))
    slots = []
    for index in range(count):
        gpu = gpu_ids[index % len(gpu_ids)]
        name = f"gpu{gpu}" if per_gpu == 1 else f"gpu{gpu}-{index // len(gpu_ids)}"
        slots.append(WorkerSlot(name.replace("/", "_"), gpu, threads))
    return slots


def _gpu_ids(gpus: str | Sequence[int | str] | None) -> list[str]:
    if gpus is None or (isinstance(gpus, str) and gpus.strip().lower() == AUTO):
        return _visible_gpus()
    if isinstance(gpus, str):
        if gpus.strip().lower() == CPU:
            return []
        parts = [part.strip() for part in gpus.split(",")]
    else:
        parts = [str(part).strip() for part in gpus]
    if not parts or any(not part for part in parts):
        raise ConfigError(
            f"invalid GPU list {gpus!r}: expected ids separated by commas ('0,1'), 'auto' or 'cpu'"
        )
    for part in parts:
        if not _is_gpu_id(part):
            raise ConfigError(
                f"invalid GPU id {part!r}: expected indices like 0,1, UUIDs, 'auto' or 'cpu'"
            )
    if len(set(parts)) != len(parts):
        raise ConfigError(f"invalid GPU list {gpus!r}: a GPU is listed twice")
    _require_gpus(parts)
    return parts


def _is_gpu_id(part: str) -> bool:
    from safeinfer.gpu import parse_visible_devices

    # The same rule as CUDA_VISIBLE_DEVICES: an index, a GPU- UUID or a MIG- id.
    return parse_visible_devices(part) == [part]


def _require_gpus(parts: list[str]) -> None:
    from safeinfer.gpu import count_gpus

    inventory = count_gpus()
    # Only a count of 0 is certain: with CUDA_VISIBLE_DEVICES set and no NVML, the
    # workers find out when they bind their GPU.
    if inventory.count == 0:
        raise ConfigError(
            f"no GPU found on this host (checked: {inventory.source}) for --gpus "
            f"{','.join(parts)}: use --gpus cpu, or run on a machine with NVIDIA GPUs"
        )


def _visible_gpus() -> list[str]:
    from safeinfer.gpu import count_gpus, visible_gpu_ids

    inventory = count_gpus()
    if inventory.driver is False or inventory.count == 0:
        return []
    ids = visible_gpu_ids(os.environ, device_count=inventory.count)
    logger.info("GPUs found (%s): %s", inventory.source, ", ".join(ids) or "none")
    return ids
