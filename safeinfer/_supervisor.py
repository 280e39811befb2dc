"""Start, watch, restart and stop a set of child processes.

One supervisor serves both the ``generate`` job (worker processes made with
``multiprocessing``) and ``safeinfer launch`` (server commands run with ``subprocess``).
Children are described by :class:`ChildSpec`: a name and a function that starts one
copy and returns a :class:`ChildHandle`.

Restart policy: a child that exits with a non-zero code (a signal counts) is started
again after an exponential backoff. Once it has been restarted ``max_restarts`` times,
its next failure marks it failed. A child that exits with 0 has finished and stays down.

>>> specs = [ChildSpec("server-0", lambda: popen_child(["sleep", "60"], log_prefix="server-0"))]
>>> with Supervisor(specs) as supervisor, supervisor.handle_signals():  # doctest: +SKIP
...     exit_code = supervisor.run()
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO, TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    import multiprocessing.process

__all__ = [
    "ChildHandle",
    "ChildSpec",
    "ExitEvent",
    "Supervisor",
    "popen_child",
    "process_child",
]

logger = logging.getLogger(__name__)

#: Restarts allowed per child before it is marked failed.
DEFAULT_MAX_RESTARTS: Final = 5
#: First and maximum delay, in seconds, before a restart; the delay doubles per restart.
DEFAULT_BACKOFF: Final = (0.5, 30.0)
#: Seconds that children get to exit after the stop signal before they are killed.
DEFAULT_STOP_TIMEOUT: Final = 10.0
#: Seconds between two polls in :meth:`Supervisor.run`.
DEFAULT_POLL_INTERVAL: Final = 0.2
#: Exit code recorded for a restart whose start function raised.
START_FAILED_CODE: Final = 127
#: Seconds that ``wait`` gives the output-copying thread to drain the pipe after exit.
LOG_DRAIN_TIMEOUT: Final = 2.0


class ChildHandle(Protocol):
    """A running child process: the calls the supervisor makes on it.

    ``poll`` and ``wait`` return the exit code once the child has exited (negative for a
    signal, like :class:`subprocess.Popen`), else None.
    """

    @property
    def pid(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...


_RUNNING: Final = "running"
_EXITED: Final = "exited"
_REAPED: Final = "reaped"


class _PopenChild:
    """A subprocess that leads its own session, so its whole process group can be killed."""

    def __init__(self, popen: subprocess.Popen[bytes], log_thread: threading.Thread | None):
        self._popen = popen
        self._log_thread = log_thread

    @property
    def pid(self) -> int | None:
        return self._popen.pid

    def poll(self) -> int | None:
        # A leader that exited may leave its group behind; kill the group before the
        # leader is reaped.
        if self._popen.returncode is None and self._leader_state() == _EXITED:
            self._kill_group()
        return self._returncode(self._popen.poll())

    def send_signal(self, sig: int) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(sig)

    def kill(self) -> None:
        if self._popen.returncode is None and self._leader_state() != _REAPED:
            self._kill_group()

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._popen.returncode is None and self._leader_state() == _RUNNING:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
        return self.poll()

    def _leader_state(self) -> str:
        # WNOWAIT leaves an exited leader a zombie, which keeps its pid (and so the
        # process group id) reserved: a group kill cannot hit a process that reused it.
        try:
            info = os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return _REAPED
        return _EXITED if info is not None and info.si_pid != 0 else _RUNNING

    def _kill_group(self) -> None:
        # Grandchildren (a server's own workers) stay in the leader's group unless they
        # made their own session; killing the group leaves no orphans behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    def _returncode(self, code: int | None) -> int | None:
        if code is not None and self._log_thread is not None:
            self._log_thread.join(LOG_DRAIN_TIMEOUT)
        return code


def _copy_lines(stream: IO[bytes], prefix: str, log_stream: IO[str]) -> None:
    with stream:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            try:
                log_stream.write(f"{prefix}{line}\n")
                log_stream.flush()
            except (OSError, ValueError):
                # The log stream was closed (for example at interpreter exit). Keep
                # draining, because a child blocks once its pipe buffer is full.
                continue


def popen_child(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_prefix: str | None = None,
    log_stream: IO[str] | None = None,
) -> ChildHandle:
    """Start ``cmd`` in its own session and process group.

    ``env`` replaces the whole environment, as in :mod:`subprocess` (pass
    ``{**os.environ, ...}`` to extend it). With ``log_prefix``, a thread copies every line
    of the child's stdout and stderr to ``log_stream`` (default ``sys.stderr``) as
    ``"[<log_prefix>] <line>"``. Without it, the child writes to the inherited streams.

    >>> child = popen_child(["python", "-m", "http.server"], log_prefix="web")  # doctest: +SKIP
    """
    capture = log_prefix is not None
    popen = subprocess.Popen(
        list(cmd),
        env=None if env is None else dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        start_new_session=True,
    )
    log_thread = None
    if capture:
        assert popen.stdout is not None
        log_thread = threading.Thread(
            target=_copy_lines,
            args=(popen.stdout, f"[{log_prefix}] ", log_stream or sys.stderr),
            name=f"safeinfer-log-{log_prefix}",
            daemon=True,
        )
        log_thread.start()
    # NOTE: no PR_SET_PDEATHSIG is set, so a supervisor killed with SIGKILL leaves its
    # children running. Exits that run stop() (return, exception, signal) stop them.
    return _PopenChild(popen, log_thread)


class _ProcessChild:
    def __init__(self, process: multiprocessing.process.BaseProcess):
        self._process = process

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def poll(self) -> int | None:
        if self._process.is_alive():
            return None
        self._process.join()
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.pid is not None and self._process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, sig)

    def kill(self) -> None:
        if self._process.exitcode is None:
            self._process.kill()

    def wait(self, timeout: float | None = None) -> int | None:
        self._process.join(timeout)
        return self._process.exitcode


def process_child(process: multiprocessing.process.BaseProcess) -> ChildHandle:
    """Wrap a started :class:`multiprocessing.Process` as a :class:`ChildHandle`.

    >>> ctx = multiprocessing.get_context("spawn")                       # doctest: +SKIP
    >>> spec = ChildSpec("worker-0", lambda: process_child(start_worker(ctx)))  # doctest: +SKIP
    """
    return _ProcessChild(process)


@dataclass
class ChildSpec:
    """A supervised child: its unique name, a function that starts one copy, its policy."""

    name: str
    start: Callable[[], ChildHandle]
    restart: bool = True


@dataclass(frozen=True)
class ExitEvent:
    """One child exit seen by :meth:`Supervisor.poll`.

    ``restart_in`` is the delay in seconds before the next start, or None when the
    child stays down. ``failed`` is True when the child has used up its restarts.
    """

    name: str
    pid: int | None
    returncode: int
    restart_in: float | None
    failed: bool


class _ChildState:
    def __init__(self, spec: ChildSpec):
        self.spec = spec
        self.handle: ChildHandle | None = None
        self.restarts = 0
        self.restart_at: float | None = None
        self.returncode: int | None = None
        self.failed = False


class Supervisor:
    """Run children, restart the ones that fail with backoff, and stop them all cleanly.

    Use it as a context manager so that leaving the block stops every child, and wrap
    the wait in :meth:`handle_signals` so SIGINT and SIGTERM do the same. Not
    thread-safe: call it from one thread.

    >>> specs = [ChildSpec(f"server-{i}", make_start(i)) for i in range(2)]  # doctest: +SKIP
    >>> with Supervisor(specs, max_restarts=3) as supervisor:                # doctest: +SKIP
    ...     with supervisor.handle_signals():
    ...         raise SystemExit(supervisor.run())
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        on_exit: Callable[[ChildSpec, int], None] | None = None,
    ):
        names = [spec.name for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"child names must be unique; repeated: {', '.join(duplicates)}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be 0 or more, not {max_restarts}")
        if not 0 <= backoff[0] <= backoff[1]:
            raise ValueError(
                f"backoff must be (first, maximum) with 0 <= first <= maximum, not {backoff}"
            )
        self._states = {spec.name: _ChildState(spec) for spec in specs}
        self._max_restarts = max_restarts
        self._backoff = backoff
        self._stop_timeout = stop_timeout
        self._on_exit = on_exit
        self._started = False
        self._stopping = False
        self._stop_signal: int | None = None

    # -- state -------------------------------------------------------------------------

    @property
    def children(self) -> dict[str, ChildHandle | None]:
        """Handle of each child by name; None while a child is down."""
        return {name: state.handle for name, state in self._states.items()}

    @property
    def restart_counts(self) -> dict[str, int]:
        """Number of restarts of each child by name."""
        return {name: state.restarts for name, state in self._states.items()}

    @property
    def failed(self) -> list[str]:
        """Names of the children that used up their restarts (or failed with restart=False)."""
        return [name for name, state in self._states.items() if state.failed]

    @property
    def returncodes(self) -> dict[str, int | None]:
        """Last exit code of each child by name; None while it runs or before it ran."""
        return {name: state.returncode for name, state in self._states.items()}

    @property
    def stop_requested(self) -> int | None:
        """Signal number received by :meth:`handle_signals`, or None."""
        return self._stop_signal

    def is_done(self) -> bool:
        """Return True when no child runs and none waits for a restart."""
        return all(
            state.handle is None and state.restart_at is None for state in self._states.values()
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start every child. If one fails to start, stop the others and re-raise."""
        if self._started:
            raise RuntimeError("the supervisor was already started")
        self._started = True
        for state in self._states.values():
            try:
                self._start_child(state)
            except BaseException:
                self.stop()
                raise

    def poll(self) -> list[ExitEvent]:
        """Reap exited children, schedule or refuse restarts, start those now due.

        Returns one event per exit seen by this call.
        """
        events: list[ExitEvent] = []
        now = time.monotonic()
        for state in self._states.values():
            if state.handle is not None:
                code = state.handle.poll()
                if code is not None:
                    events.append(self._record_exit(state, code, now))
            if state.restart_at is not None and now >= state.restart_at and not self._stopping:
                state.restart_at = None
                state.restarts += 1
                try:
                    self._start_child(state)
                except Exception as error:  # a restart that cannot start counts as a failure
                    logger.error("child %s: restart failed: %s", state.spec.name, error)
                    events.append(self._record_exit(state, START_FAILED_CODE, now))
        return events

    def run(
        self,
        *,
        until: Callable[[], bool] | None = None,
        interval: float = DEFAULT_POLL_INTERVAL,
    ) -> int:
        """Supervise until every child is done, ``until()`` is true, or a signal arrives.

        Stops the children on the way out. Returns 0 when no child failed, 1 when one
        did, and ``128 + signum`` after a stop signal caught by :meth:`handle_signals`.
        """
        if not self._started:
            self.start()
        try:
            while self._stop_signal is None:
                self.poll()
                if self.is_done() or (until is not None and until()):
                    break
                time.sleep(interval)
        finally:
            self.stop()
        if self._stop_signal is not None:
            return 128 + self._stop_signal
        return 1 if self.failed else 0

    def stop(self, *, sig: int = signal.SIGTERM, timeout: float | None = None) -> None:
        """Send ``sig`` to every child, wait up to ``timeout``, then kill the rest.

        ``timeout`` defaults to the ``stop_timeout`` given to the constructor. Every
        child is reaped before this returns. For a :func:`popen_child` child the whole
        process group is killed too, so it leaves no orphan or zombie. Pending restarts
        are cancelled.
        """
        self._stopping = True
        timeout = self._stop_timeout if timeout is None else timeout
        running = [state for state in self._states.values() if state.handle is not None]
        for state in self._states.values():
            state.restart_at = None
        for state in running:
            assert state.handle is not None
            logger.info(
                "child %s (pid %s): sending %s",
                state.spec.name,
                state.handle.pid,
                signal.Signals(sig).name,
            )
            state.handle.send_signal(sig)
        deadline = time.monotonic() + timeout
        for state in running:
            assert state.handle is not None
            code = state.handle.wait(max(0.0, deadline - time.monotonic()))
            if code is None:
                logger.warning(
                    "child %s (pid %s) did not exit within %.1f s; killing it",
                    state.spec.name,
                    state.handle.pid,
                    timeout,
                )
                state.handle.kill()
                code = state.handle.wait(None)
            assert code is not None
            self._record_exit(state, code, time.monotonic())

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def handle_signals(self) -> Iterator[None]:
        """Install SIGINT and SIGTERM handlers for the duration of the block.

        The first signal makes :meth:`run` stop the children cleanly and return
        ``128 + signum``; a second one kills the children at once. The previous
        handlers are restored on exit. Outside the main thread, Python cannot install
        handlers, so the block runs without them (logged at debug level).
        """
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not in the main thread; signal handlers not installed")
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop_signal is not None:
                for state in self._states.values():
                    if state.handle is not None:
                        state.handle.kill()
                return
            self._stop_signal = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    # -- internals -----------------------------------------------------------------------

    def _start_child(self, state: _ChildState) -> None:
        state.returncode = None
        state.handle = state.spec.start()
        logger.info("child %s started (pid %s)", state.spec.name, state.handle.pid)

    def _record_exit(self, state: _ChildState, code: int, now: float) -> ExitEvent:
        pid = state.handle.pid if state.handle is not None else None
        state.handle = None
        state.returncode = code
        restart_in: float | None = None
        if code != 0 and not self._stopping:
            if not state.spec.restart:
                state.failed = True
                logger.error("child %s (pid %s) exited with code %d", state.spec.name, pid, code)
            elif state.restarts >= self._max_restarts:
                state.failed = True
                logger.error(
                    "child %s (pid %s) exited with code %d after %d restarts; giving up",
                    state.spec.name,
                    pid,
                    code,
                    state.restarts,
                )
            else:
                first, maximum = self._backoff
                restart_in = min(first * 2**state.restarts, maximum)
                state.restart_at = now + restart_in
                logger.warning(
                    "child %s (pid %s) exited with code %d; restarting in %.1f s",
                    state.spec.name,
                    pid,
                    code,
                    restart_in,
                )
        else:
            logger.info("child %s (pid %s) exited with code %d", state.spec.name, pid, code)
        if self._on_exit is not None:
            self._on_exit(state.spec, code)
        return ExitEvent(state.spec.name, pid, code, restart_in, state.failed)
