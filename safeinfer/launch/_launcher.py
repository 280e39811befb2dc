"""The launcher: one supervised copy of a server command per GPU or CPU worker."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Final, TypedDict

from safeinfer._supervisor import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_RESTARTS,
    DEFAULT_STOP_TIMEOUT,
    ChildHandle,
    ChildSpec,
    Supervisor,
    popen_child,
)
from safeinfer.errors import ConfigError, LaunchError
from safeinfer.launch._health import Health, check_health_url, probe
from safeinfer.launch._plan import (
    DEFAULT_BASE_PORT,
    WorkerInfo,
    make_worker_dirs,
    plan_workers,
)

logger = logging.getLogger(__name__)

#: Seconds a worker gets, after each start, to pass its health check before it is killed
#: and restarted. Loading a large diffusion model, or downloading its weights, in
#: ``setup`` can take minutes.
DEFAULT_HEALTH_TIMEOUT: Final = 600.0
#: Seconds between two health probes of a worker that is not ready yet.
HEALTH_INTERVAL: Final = 0.5
#: Seconds between two rounds of the supervising loop.
POLL_INTERVAL: Final = 0.1


class LaunchOptions(TypedDict, total=False):
    """The keyword options of :class:`Launcher`, for :func:`launch` and :func:`run_launch`."""

    gpus: str | Sequence[str | int] | None
    workers: int | None
    base_port: int
    ports: Sequence[int] | None
    run_dir: str | os.PathLike[str] | None
    health: str | None
    health_timeout: float
    max_restarts: int
    backoff: tuple[float, float]
    stop_timeout: float
    threads: int | None
    env: Mapping[str, str] | None
    cwd: str | os.PathLike[str] | None
    log_stream: IO[str] | None


class _WorkerHealth:
    def __init__(self) -> None:
        self.pid: int | None = None
        self.started_at = 0.0
        self.next_probe = 0.0
        self.ready = False


class Launcher:
    """Run one copy of ``command`` per GPU (or ``workers`` CPU copies) and supervise them.

    Each copy gets its own ``CUDA_VISIBLE_DEVICES``, ``PORT`` (``base_port + index``),
    private ``TMPDIR`` and ``SAFEINFER_OUTPUT_DIR`` under ``run_dir``, ``SAFEINFER_GPU``
    and ``SAFEINFER_WORKER``. It also gets a CPU thread budget in ``OMP_NUM_THREADS`` and
    related variables: ``threads``, or by default the cores split evenly. ``{port}``,
    ``{gpu}`` and ``{worker}`` in the command's arguments are replaced per copy. The directory of
    the current Python comes first on ``PATH``, because Cog starts its model worker as a
    bare ``python``. Output lines are prefixed with ``[worker-N]``. A worker that exits
    with an error, or fails its health check, is restarted with exponential backoff, at
    most ``max_restarts`` times. After that, every worker is stopped.

    ``run_dir`` defaults to a new temp dir that is removed when supervision ends. Of a
    given ``run_dir``, only each worker's ``tmp`` and ``outputs`` are removed.

    Use :meth:`start` (returns once every worker is ready) and :meth:`stop`, or the
    blocking :meth:`run`, or the object as a context manager.

    >>> with Launcher(["python", "-m", "cog.server.http", "--host", "127.0.0.1"],
    ...               gpus="0,1",
    ...               health="http://127.0.0.1:{port}/health-check") as launcher:  # doctest: +SKIP
    ...     send_requests(launcher.urls())
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        gpus: str | Sequence[str | int] | None = None,
        workers: int | None = None,
        base_port: int = DEFAULT_BASE_PORT,
        ports: Sequence[int] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        health: str | None = None,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        threads: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_stream: IO[str] | None = None,
    ) -> None:
        self._owns_run_dir = run_dir is None
        self.run_dir = Path(
            tempfile.mkdtemp(prefix="safeinfer-launch-") if run_dir is None else run_dir
        )
        self.health = health
        self.health_timeout = health_timeout
        self._cwd = cwd
        self._log_stream = log_stream
        try:
            self.workers: list[WorkerInfo] = plan_workers(
                command,
                gpus=gpus,
                workers=workers,
                base_port=base_port,
                ports=ports,
                run_dir=self.run_dir,
                env=env,
                threads=threads,
            )
            if not health_timeout > 0:  # also rejects NaN
                raise ConfigError(f"invalid health_timeout={health_timeout}: must be above 0")
            if not stop_timeout >= 0:  # also rejects NaN
                raise ConfigError(f"invalid stop_timeout={stop_timeout}: must be 0 or more")
            if health is not None:
                for worker in self.workers:
                    check_health_url(worker.health_url(health))
            try:
                self._supervisor = Supervisor(
                    [ChildSpec(worker.name, self._starter(worker)) for worker in self.workers],
                    max_restarts=max_restarts,
                    backoff=backoff,
                    stop_timeout=stop_timeout,
                )
            except ValueError as error:
                raise ConfigError(f"invalid launcher option: {error}") from None
        except BaseException:
            self._remove_run_dir()
            raise

        self._by_name = {worker.name: worker for worker in self.workers}
        self._health = {worker.name: _WorkerHealth() for worker in self.workers}
        self._condition = threading.Condition()
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._exit_code: int | None = None

    # -- state ---------------------------------------------------------------------------

    def pids(self) -> dict[str, int | None]:
        """Return the pid of each worker's server process by name; None while it is down."""
        return {
            name: None if handle is None else handle.pid
            for name, handle in self._supervisor.children.items()
        }

    def urls(self) -> list[str]:
        """Return ``http://127.0.0.1:<port>`` for every worker, in order."""
        return [f"http://127.0.0.1:{worker.port}" for worker in self.workers]

    @property
    def restart_counts(self) -> dict[str, int]:
        """Number of restarts of each worker by name."""
        return self._supervisor.restart_counts

    @property
    def failed(self) -> list[str]:
        """Names of the workers that used up their restarts."""
        return self._supervisor.failed

    @property
    def exit_code(self) -> int | None:
        """0, 1 when a worker kept failing, ``128 + signum`` after a signal; None while running."""
        return self._exit_code

    def is_ready(self) -> bool:
        """Return True when every worker is up and passed its health check (if any)."""
        with self._condition:
            return all(state.ready for state in self._health.values())

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Start every worker and supervise them in a background thread.

        With ``wait`` (the default), return once every worker is ready, and raise
        :class:`~safeinfer.errors.LaunchError` (after stopping them all) if a worker
        keeps failing or ``timeout`` seconds pass first.
        """
        if self._thread is not None:
            raise RuntimeError("the launcher was already started")
        self._start_workers()
        self._thread = threading.Thread(
            target=self._supervise, name="safeinfer-launch", daemon=True
        )
        self._thread.start()
        if wait:
            try:
                self.wait_ready(timeout=timeout)
            except BaseException:
                self.stop()
                raise

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every worker is ready; raise LaunchError if supervision ends first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not all(state.ready for state in self._health.values()):
                if self._exit_code is not None:
                    raise LaunchError(
                        self._failure_message("stopped before every worker was ready")
                    )
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    pending = [name for name, state in self._health.items() if not state.ready]
                    raise LaunchError(
                        f"workers {', '.join(pending)} were not ready within {timeout:.0f} s; "
                        "check their log lines, or allow more time"
                    )
                self._condition.wait(
                    POLL_INTERVAL if remaining is None else min(remaining, POLL_INTERVAL)
                )

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until supervision ends (workers done, failed or stopped); return the exit code."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._exit_code

    def stop(self, *, timeout: float | None = None) -> int:
        """Stop every worker (SIGTERM, then SIGKILL to its process group) and return the exit code.

        Waits up to ``timeout`` seconds for the supervising thread, beyond the workers'
        own stop timeout.
        """
        self._stop_requested.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._supervisor.stop()
            self._finish(0)
        return self._exit_code if self._exit_code is not None else 0

    def run(self) -> int:
        """Start the workers and supervise them in this thread until they end or a signal.

        SIGINT and SIGTERM stop every worker cleanly (a second one kills them). Returns 0
        when every worker finished or was stopped on request, 1 when one kept failing,
        ``128 + signum`` after a signal.
        """
        code = 1
        try:
            # Handlers first: a signal while the workers start must still stop them all.
            with self._supervisor.handle_signals():
                self._start_workers()
                code = self._supervisor.run(until=self._tick, interval=POLL_INTERVAL)
        finally:
            self._finish(code)
        return code

    def __enter__(self) -> Launcher:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------

    def _starter(self, worker: WorkerInfo) -> Callable[[], ChildHandle]:
        def start() -> ChildHandle:
            # Recreated on every start: a crashed worker may have removed its own.
            make_worker_dirs([worker])
            return popen_child(
                worker.command,
                env=worker.env,
                cwd=self._cwd,
                log_prefix=worker.name,
                log_stream=self._log_stream,
            )

        return start

    def _start_workers(self) -> None:
        make_worker_dirs(self.workers)
        for worker in self.workers:
            logger.info(
                "%s: %s, port %d, run dir %s: %s",
                worker.name,
                f"GPU {worker.gpu}" if worker.gpu is not None else "CPU",
                worker.port,
                worker.tmp_dir.parent,
                " ".join(worker.command),
            )
        try:
            self._supervisor.start()
        except OSError as error:
            self._finish(1)
            raise LaunchError(
                f"cannot start {self.workers[0].command[0]!r}: {error}; "
                "check the command after '--'"
            ) from error
        self._tick()

    def _supervise(self) -> None:
        code = 1
        try:
            code = self._supervisor.run(until=self._tick, interval=POLL_INTERVAL)
        except Exception:
            logger.exception("supervising the workers failed; stopping them")
            self._supervisor.stop()
        finally:
            self._finish(code)

    def _tick(self) -> bool:
        """Check health; return True to end supervision (stop requested or a worker failed)."""
        if self._stop_requested.is_set():
            return True
        if self._supervisor.failed:
            logger.error(
                "%s kept failing; stopping every worker", ", ".join(self._supervisor.failed)
            )
            return True
        now = time.monotonic()
        for name, handle in self._supervisor.children.items():
            self._check_health(name, handle, now)
        return False

    def _check_health(self, name: str, handle: ChildHandle | None, now: float) -> None:
        state = self._health[name]
        pid = None if handle is None else handle.pid
        if pid != state.pid:
            with self._condition:
                state.pid = pid
                state.started_at = now
                state.next_probe = now
                state.ready = pid is not None and self.health is None
                self._condition.notify_all()
        if handle is None or state.ready or now < state.next_probe:
            return
        assert self.health is not None
        url = self._by_name[name].health_url(self.health)
        health, detail = probe(url)
        state.next_probe = now + HEALTH_INTERVAL
        if health is Health.READY:
            logger.info("%s (pid %s) is ready at %s", name, pid, url)
            with self._condition:
                state.ready = True
                self._condition.notify_all()
        elif health is Health.FAILED:
            logger.error("%s (pid %s) reports %s at %s; restarting it", name, pid, detail, url)
            handle.kill()
        elif now - state.started_at > self.health_timeout:
            logger.error(
                "%s (pid %s) not ready after %.0f s (last probe of %s: %s); restarting it",
                name,
                pid,
                self.health_timeout,
                url,
                detail,
            )
            handle.kill()

    def _finish(self, code: int) -> None:
        with self._condition:
            self._exit_code = code
            self._condition.notify_all()
        if self._owns_run_dir:
            self._remove_run_dir()
        else:
            # What a stopped server left in its temp and output dirs is of no use to
            # anyone: Cog already sent every output to its client.
            for worker in self.workers:
                shutil.rmtree(worker.tmp_dir, ignore_errors=True)
                shutil.rmtree(worker.output_dir, ignore_errors=True)

    def _failure_message(self, event: str) -> str:
        failed = self._supervisor.failed
        if not failed:
            return f"the launcher {event}"
        codes = self._supervisor.returncodes
        details = ", ".join(f"{name} (last exit code {codes[name]})" for name in failed)
        return f"the launcher {event}: {details} kept failing; see their log lines"

    def _remove_run_dir(self) -> None:
        if self._owns_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
