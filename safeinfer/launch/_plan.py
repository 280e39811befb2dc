"""The worker plan: which GPU, port, directories, environment and command each copy gets."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from safeinfer.errors import ConfigError, GpuBindingError
from safeinfer.gpu import (
    count_gpus,
    parse_visible_devices,
    thread_budget,
    visible_gpu_ids,
    worker_env,
)

#: First port; worker ``i`` listens on ``base_port + i``. Cog servers default to 5000.
DEFAULT_BASE_PORT: Final = 5000
#: Placeholders replaced in every argument of the command, per worker.
PLACEHOLDERS: Final = ("{port}", "{gpu}", "{worker}")
#: Mode of the run directory and every worker directory: other users cannot read the
#: outputs, nor plant files or symlinks in a worker's temp dir.
PRIVATE_MODE: Final = 0o700


@dataclass(frozen=True)
class WorkerInfo:
    """One planned copy of the server command.

    ``gpu`` is the device id given to ``CUDA_VISIBLE_DEVICES`` (None for a CPU worker);
    ``tmp_dir`` and ``output_dir`` become its ``TMPDIR`` and ``SAFEINFER_OUTPUT_DIR``.
    """

    index: int
    name: str
    gpu: str | None
    port: int
    command: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    tmp_dir: Path
    output_dir: Path

    def health_url(self, template: str) -> str:
        """Fill ``template`` (for example ``http://127.0.0.1:{port}/health-check``)."""
        return substitute(template, self)


def substitute(text: str, worker: WorkerInfo | _Slot) -> str:
    """Replace ``{port}``, ``{gpu}`` and ``{worker}`` in ``text``; other braces stay as they are."""
    # str.replace, not str.format: JSON and shell arguments contain braces of their own.
    return (
        text.replace("{port}", str(worker.port))
        .replace("{gpu}", worker.gpu if worker.gpu is not None else "")
        .replace("{worker}", str(worker.index))
    )


@dataclass(frozen=True)
class _Slot:
    index: int
    gpu: str | None
    port: int


def parse_gpus(gpus: str | Sequence[str | int]) -> list[str]:
    """Turn ``"0,1"``, ``"auto"`` or ``[0, 1]`` into a list of device ids.

    Ids are indices, ``GPU-`` UUIDs or ``MIG-`` ids, as ``CUDA_VISIBLE_DEVICES`` lists
    them. ``"auto"`` takes the devices in ``CUDA_VISIBLE_DEVICES`` when it is set, else
    every GPU of the host.
    """
    if isinstance(gpus, str):
        if gpus.strip().lower() == "auto":
            return detect_gpus()
        items = [item.strip() for item in gpus.split(",")]
    else:
        items = [str(item).strip() for item in gpus]
    if not items:
        raise ConfigError("invalid GPU list: it is empty; pass ids like '0,1' or 'auto'")
    for item in items:
        if parse_visible_devices(item) != [item]:
            raise ConfigError(
                f"invalid GPU id {item!r} in {gpus!r}: expected an index, a GPU- UUID or "
                "a MIG- id, as CUDA_VISIBLE_DEVICES lists them"
            )
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise ConfigError(
            f"invalid GPU list {gpus!r}: {', '.join(duplicates)} repeated; "
            "each GPU gets exactly one worker"
        )
    return items


def detect_gpus() -> list[str]:
    """List the GPUs this process may use, for ``gpus="auto"``, without starting CUDA."""
    inventory = count_gpus()
    devices = visible_gpu_ids(os.environ, device_count=inventory.count)
    if not devices:
        raise GpuBindingError(
            f"gpus='auto' found no GPU (counted by {inventory.source}); "
            "list GPU ids explicitly, or use workers=N for CPU workers"
        )
    return devices


def plan_workers(
    command: Sequence[str],
    *,
    gpus: str | Sequence[str | int] | None,
    workers: int | None,
    base_port: int,
    ports: Sequence[int] | None,
    run_dir: Path,
    env: Mapping[str, str] | None,
    threads: int | None,
) -> list[WorkerInfo]:
    """Build one :class:`WorkerInfo` per GPU, or ``workers`` CPU workers.

    ``threads`` is each worker's CPU thread budget; None splits this machine's cores
    evenly between the workers.
    """
    if not command:
        raise ConfigError("no command to launch; pass the server command after '--'")
    if (gpus is None) == (workers is None):
        raise ConfigError("pass exactly one of gpus (ids or 'auto') and workers (a count)")
    if workers is not None and workers < 1:
        raise ConfigError(f"invalid workers={workers}: must be 1 or more")
    devices: list[str | None] = (
        list(parse_gpus(gpus)) if gpus is not None else [None] * (workers or 0)
    )
    count = len(devices)
    if ports is None:
        ports = [base_port + index for index in range(count)]
    elif len(ports) != count:
        raise ConfigError(f"got {len(ports)} ports for {count} workers; pass one port each")
    for port in ports:
        if not 1 <= port <= 65535:
            raise ConfigError(f"invalid port {port}: must be between 1 and 65535")

    if threads is None:
        threads = thread_budget(count)
    elif threads < 1:
        raise ConfigError(f"invalid threads={threads}: must be 1 or more")
    base_env = dict(os.environ if env is None else env)
    plan = []
    for index, (gpu, port) in enumerate(zip(devices, ports, strict=True)):
        slot = _Slot(index, gpu, port)
        name = f"worker-{index}"
        worker_dir = run_dir / name
        tmp_dir = worker_dir / "tmp"
        output_dir = worker_dir / "outputs"
        plan.append(
            WorkerInfo(
                index=index,
                name=name,
                gpu=gpu,
                port=port,
                command=tuple(substitute(arg, slot) for arg in command),
                env=_worker_env(
                    base_env, slot, threads=threads, tmp_dir=tmp_dir, output_dir=output_dir
                ),
                tmp_dir=tmp_dir,
                output_dir=output_dir,
            )
        )
    return plan


def _worker_env(
    base: Mapping[str, str],
    slot: _Slot,
    *,
    threads: int | None,
    tmp_dir: Path,
    output_dir: Path,
) -> dict[str, str]:
    env = worker_env(gpu=slot.gpu, threads=threads, base=base)
    env["SAFEINFER_WORKER"] = str(slot.index)
    env["PORT"] = str(slot.port)
    env["TMPDIR"] = str(tmp_dir)
    env["SAFEINFER_OUTPUT_DIR"] = str(output_dir)
    env["PATH"] = _path_with_python_first(env.get("PATH", ""))
    return env


def _path_with_python_first(path: str) -> str:
    # Cog's runtime (coglet 0.23) starts its worker as a bare `python` from PATH. Outside
    # the launcher's own environment that may be another interpreter without the model's
    # packages, and the server then never becomes ready.
    python_dir = os.path.dirname(sys.executable)
    entries = [entry for entry in path.split(os.pathsep) if entry and entry != python_dir]
    return os.pathsep.join([python_dir, *entries])


def make_worker_dirs(plan: Sequence[WorkerInfo]) -> None:
    """Create every worker's temp and output directory with mode 0700."""
    for worker in plan:
        for directory in (worker.tmp_dir.parent, worker.tmp_dir, worker.output_dir):
            try:
                directory.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
                os.chmod(directory, PRIVATE_MODE)
            except OSError as error:
                raise ConfigError(
                    f"cannot create worker directory {directory}: {error.strerror}; give a "
                    "run directory that is a folder this user can write to, or none"
                ) from error
