"""The environment a launcher gives each child worker."""

from __future__ import annotations

import os
from collections.abc import Mapping

from safeinfer.errors import ConfigError
from safeinfer.gpu._plan import CPU, SAFEINFER_GPU_ENV, VISIBLE_DEVICES_ENV, parse_visible_devices
from safeinfer.gpu._threads import THREAD_ENV_VARS

__all__ = ["worker_env"]


def worker_env(
    *, gpu: str | None, threads: int | None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return the environment for a child worker that owns ``gpu`` and ``threads`` threads.

    ``gpu`` is a physical id (an index, ``GPU-`` UUID or ``MIG-`` id); ``None`` or
    ``"cpu"`` makes a CPU worker, whose ``CUDA_VISIBLE_DEVICES`` is empty. CUDA in the
    child can only use that GPU, as ``cuda:0``, and ``SAFEINFER_GPU`` gives the child's
    ``bind_gpu`` the physical id. ``threads=None`` leaves the thread variables as ``base``
    (default ``os.environ``) has them. Every other variable is copied unchanged.
    Raises :class:`~safeinfer.errors.ConfigError` naming an invalid ``gpu`` or ``threads``.

    >>> env = worker_env(gpu="3", threads=4, base={"PATH": "/usr/bin"})
    >>> env["CUDA_VISIBLE_DEVICES"], env["SAFEINFER_GPU"], env["OMP_NUM_THREADS"]
    ('3', '3', '4')
    """
    env = dict(os.environ if base is None else base)
    if gpu is None or (isinstance(gpu, str) and gpu.strip().lower() == CPU):
        env[VISIBLE_DEVICES_ENV] = ""
        env[SAFEINFER_GPU_ENV] = CPU
    else:
        parsed = parse_visible_devices(gpu.strip()) if isinstance(gpu, str) else None
        if parsed is None or len(parsed) != 1 or "," in gpu:
            raise ConfigError(
                f"invalid GPU id {gpu!r}: expected a string with one index, GPU- UUID "
                "or MIG- id, as CUDA_VISIBLE_DEVICES lists them (such as '0'), or 'cpu'"
            )
        gpu_id = parsed[0]
        env[VISIBLE_DEVICES_ENV] = gpu_id
        env[SAFEINFER_GPU_ENV] = gpu_id

    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"invalid thread count {threads!r}: expected an integer >= 1")
        for name in THREAD_ENV_VARS:
            env[name] = str(threads)
    return env
