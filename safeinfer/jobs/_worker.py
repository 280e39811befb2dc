"""The worker process of the local engine: bind a device, load the model once, run items.

The parent talks to each worker over its own pipe. A killed worker can tear at most its
own pipe, which dies with it: a queue shared by all workers would stay locked, or hold
half a message, after one of them was killed mid-write.

Messages from the worker, as tuples: ``("ready", device)``, ``("done", item_id,
entry)``, ``("failed", item_id, error, attempts)`` and ``("fatal", message)`` when the
model cannot load. Messages to the worker: a list of items to run, or None to exit.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, Final

from safeinfer.errors import ConfigError
from safeinfer.jobs._run import ItemOutcome, ItemRunner

__all__ = ["EXIT_FATAL", "EXIT_STOPPED", "WorkerConfig", "WorkerSlot", "worker_main"]

logger = logging.getLogger(__name__)

#: Exit code of a worker that could not bind its GPU or load the model; restarting it
#: cannot help.
EXIT_FATAL: Final = 3
#: Exit code of a worker stopped by SIGTERM. Non-zero, so a worker stopped from outside
#: the job (not by the parent) is restarted.
EXIT_STOPPED: Final = 4
#: OpenMP threads that wait for work sleep instead of spinning. Spinning threads on cores
#: shared with other workers or programs slowed the tiny models by 4-8x (2 threads on 2
#: busy cores), and sleeping costs little when the cores are free. A value set in the
#: environment wins.
OMP_WAIT_POLICY: Final = "PASSIVE"
OMP_WAIT_POLICY_ENV: Final = "OMP_WAIT_POLICY"
#: Seconds between checks of the stop flag while the worker waits for work.
IDLE_POLL_SECONDS: Final = 0.2


@dataclass(frozen=True)
class WorkerSlot:
    """One worker: its name (also its manifest's suffix), its GPU or None, its threads."""

    name: str
    gpu: str | None
    threads: int | None


@dataclass(frozen=True)
class WorkerConfig:
    """The settings every worker of a job needs, sent (pickled) to each worker at start."""

    model: str
    root: Path
    torch_dtype: str | None = None
    scheduler: str | None = None
    local_files_only: bool = False
    batch_size: int = 1
    retries: int = 2
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    log_level: int = logging.WARNING


class _StopHandler:
    """SIGTERM handler: exit at once while idle or loading, else finish the batch first."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.busy = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if not self.busy:
            raise SystemExit(EXIT_STOPPED)


def worker_main(config: WorkerConfig, slot: WorkerSlot, conn: Connection) -> None:
    """Run one worker until the parent sends None, the pipe closes, or SIGTERM arrives."""
    # Ctrl-C reaches every process of the terminal's foreground group; the parent
    # decides how to stop, so the worker ignores SIGINT and waits for SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = _StopHandler()
    signal.signal(signal.SIGTERM, stop)
    _log_to_stderr(config.log_level, slot.name)
    try:
        device = _bind(slot)
        pipeline = _load(config, device)
    except Exception as error:
        # A wrong GPU id or a model that cannot load fails the same way on every
        # restart, so the worker reports it and the parent stops the job.
        logger.error("worker %s: cannot start with model %s: %s", slot.name, config.model, error)
        conn.send(("fatal", f"{type(error).__name__}: {error}"))
        conn.close()
        # os._exit skips the interpreter's teardown, where torch's library finalisers
        # run and the parent's SIGTERM would raise SystemExit inside them and print
        # "Exception ignored in ... _del_library". The worker has nothing to save.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(EXIT_FATAL)
    conn.send(("ready", device))

    from safeinfer.manifest import Manifest

    def report(outcome: ItemOutcome) -> None:
        if outcome.ok:
            conn.send(("done", outcome.item_id, outcome.entry))
        else:
            conn.send(("failed", outcome.item_id, outcome.error, outcome.attempts))

    with pipeline, Manifest(config.root / f"manifest-{slot.name}.jsonl") as manifest:
        runner = ItemRunner(
            pipeline,
            manifest=manifest,
            worker=slot.name,
            device=device,
            retries=config.retries,
            pipeline_kwargs=config.pipeline_kwargs,
            on_outcome=report,
        )
        try:
            _serve(conn, runner, stop)
        finally:
            stop.busy = True
            runner.flush()
    if stop.signum is not None:
        logger.info("worker %s: stopped by signal %d", slot.name, stop.signum)
        sys.exit(EXIT_STOPPED)


def _serve(conn: Connection, runner: ItemRunner, stop: _StopHandler) -> None:
    while stop.signum is None:
        if not conn.poll():
            # No batch is waiting: publish and record the last one before idling, so
            # the parent hears about every item before it decides the job is done.
            stop.busy = True
            runner.flush()
            stop.busy = False
            if stop.signum is not None or not conn.poll(IDLE_POLL_SECONDS):
                continue
        try:
            message = conn.recv()
        except (EOFError, OSError):
            logger.warning("the parent process is gone; exiting")
            return
        if message is None:
            return
        stop.busy = True
        runner.run(message)
        stop.busy = False


def _log_to_stderr(level: int, name: str) -> None:
    # A spawned process starts with no handlers. Only the package's own logger is set
    # up, at the parent's level, so the root logger stays the application's.
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s")
    )
    package_logger = logging.getLogger("safeinfer")
    package_logger.addHandler(handler)
    package_logger.setLevel(level)
    package_logger.propagate = False


def _bind(slot: WorkerSlot) -> str:
    # Runs before anything imports torch, so CUDA_VISIBLE_DEVICES and the thread
    # variables are in place when torch and its OpenMP runtime start.
    from safeinfer.gpu import apply_thread_budget, bind_gpu, worker_env

    # worker_env narrows CUDA_VISIBLE_DEVICES to the slot's GPU and names it in
    # SAFEINFER_GPU, which bind_gpu() then follows.
    os.environ.update(worker_env(gpu=slot.gpu, threads=slot.threads))
    os.environ.setdefault(OMP_WAIT_POLICY_ENV, OMP_WAIT_POLICY)
    binding = bind_gpu()
    if slot.threads is not None:
        apply_thread_budget(slot.threads)
    device = str(binding.device)
    if slot.gpu is not None:
        _require_cuda(slot.gpu, device)
    return device


def _require_cuda(gpu: str, device: str) -> None:
    # Without this check a CPU build of torch fails later with "Torch not compiled
    # with CUDA enabled", and a host without a driver quietly runs on the CPU.
    import torch

    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is built without CUDA"
    elif device == "cpu" or not torch.cuda.is_available():
        reason = "no NVIDIA driver or GPU is available to torch"
    else:
        return
    raise ConfigError(
        f"GPU {gpu} is not usable: {reason}; use --gpus cpu (gpus='cpu') to run on the CPU"
    )


def _load(config: WorkerConfig, device: str) -> Any:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from safeinfer.pipeline import SafePipeline

    # The job shows one progress bar for all workers; per-step and loading bars from
    # every worker would interleave with it on the same terminal.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    pipeline = SafePipeline.from_pretrained(
        config.model,
        output_dir=config.root,
        device=device,
        torch_dtype=config.torch_dtype,
        local_files_only=config.local_files_only,
        scheduler=config.scheduler,
        # Item names are fixed, so a file at the name is an earlier attempt of the same
        # item that died before its manifest line. Replacing it keeps one file per item.
        if_exists="replace",
    )
    pipeline.pipe.set_progress_bar_config(disable=True)
    return pipeline
