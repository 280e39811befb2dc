"""Leasing a free GPU with one lock per device, for processes started without a launcher."""

from __future__ import annotations

import logging
import os
import socket
import time
from types import TracebackType
from typing import TYPE_CHECKING, Final

from safeinfer.errors import LockTimeout
from safeinfer.gpu._bind import apply_binding
from safeinfer.gpu._enumerate import count_gpus
from safeinfer.gpu._plan import CPU, GpuBinding, visible_gpu_ids
from safeinfer.locks import Mutex

if TYPE_CHECKING:
    from typing import Self

__all__ = ["DEFAULT_CLAIM_TIMEOUT", "GpuClaim", "claim_gpu"]

logger = logging.getLogger(__name__)

#: Seconds to wait for a GPU when every visible one is claimed.
DEFAULT_CLAIM_TIMEOUT: Final = 60.0

#: Seconds between rounds over the GPUs while all are claimed.
_POLL_INTERVAL: Final = 0.05


class GpuClaim:
    """A leased GPU, named by ``binding``. The lease lasts until :meth:`release`.

    The lease is an flock on ``gpu-<host>-<id>.lock``, so the kernel ends it when the
    process dies, however it dies.
    """

    def __init__(self, binding: GpuBinding, lock: Mutex | None) -> None:
        self.binding = binding
        self._lock = lock

    @property
    def lock_file(self) -> str | None:
        """The lock file of the claimed GPU (``None`` for a CPU binding)."""
        return None if self._lock is None else str(self._lock.path)

    def release(self) -> None:
        """Give the GPU back to other processes. Calling it again does nothing."""
        if self._lock is not None and self._lock.is_locked:
            self._lock.release()
            logger.info("released GPU %s", self.binding.physical_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<GpuClaim {self.binding.device} physical={self.binding.physical_id}>"


def claim_gpu(
    *,
    lock_dir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_CLAIM_TIMEOUT,
    device_count: int | None = None,
    strict: bool = True,
) -> GpuClaim:
    """Lease a free GPU among the visible ones and bind this process to it.

    Independently started processes that share ``lock_dir`` spread over the GPUs, one
    per GPU: each takes the first GPU whose lock is free and waits up to ``timeout``
    seconds when all are taken. GPUs are counted without starting CUDA (NVML, else
    ``CUDA_VISIBLE_DEVICES``, else ``device_count``). With no GPU the claim holds no lock
    and binds the CPU. The binding then follows :func:`~safeinfer.gpu.bind_gpu`.

    NOTE: locks are named by the id as listed, so processes that spell one GPU as an
    index and others as its UUID do not exclude each other.

    >>> from safeinfer.gpu import claim_gpu
    >>> with claim_gpu(timeout=600) as claim:               # doctest: +SKIP
    ...     pipe.to(claim.binding.device)
    """
    driver: bool | None = None
    if device_count is None:
        inventory = count_gpus()
        device_count, driver = inventory.count, inventory.driver
    ids = visible_gpu_ids(os.environ, device_count=device_count)
    if not ids:
        cpu_binding = GpuBinding(CPU, None, None, "no-gpu", "")
        binding = apply_binding(cpu_binding, strict=strict, driver=driver)
        return GpuClaim(binding, None)

    host = socket.gethostname()
    locks = {gpu_id: Mutex(f"gpu-{host}-{gpu_id}", lock_dir=lock_dir, timeout=0) for gpu_id in ids}
    deadline = time.monotonic() + timeout
    while True:
        for gpu_id, lock in locks.items():
            try:
                lock.acquire(timeout=0)
            except LockTimeout:
                continue
            return _bind_claimed(gpu_id, lock, strict=strict, driver=driver)
        if time.monotonic() >= deadline:
            raise _all_taken_error(locks, timeout)
        time.sleep(_POLL_INTERVAL)


def _bind_claimed(gpu_id: str, lock: Mutex, *, strict: bool, driver: bool | None) -> GpuClaim:
    binding = GpuBinding("cuda:0", 0, gpu_id, "claim", gpu_id)
    try:
        binding = apply_binding(binding, strict=strict, driver=driver)
    except BaseException:
        lock.release()
        raise
    logger.info("claimed GPU %s (lock %s)", gpu_id, lock.path)
    return GpuClaim(binding, lock)


def _all_taken_error(locks: dict[str, Mutex], timeout: float) -> LockTimeout:
    holders = []
    for gpu_id, lock in locks.items():
        holder = lock.holder()
        holders.append(f"GPU {gpu_id}: {holder.describe() if holder else 'holder not recorded'}")
    directory = next(iter(locks.values())).path.parent
    return LockTimeout(
        f"timed out after {timeout:g} s: all {len(locks)} visible GPU(s) are claimed "
        f"({'; '.join(holders)}). Wait longer (timeout=...), stop a holder, or check the "
        f"locks in {directory}",
        lock_file=str(directory),
    )
