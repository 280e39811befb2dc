"""The local engine: the parent process hands items to worker processes and collects results.

The parent keeps the only queue. It sends each ready worker up to two batches at a time,
so a worker never waits for work while the parent serves another, and the parent
always has the list of items each worker was sent. When a worker dies, the items it
held go back to the front of the queue, unless its manifest shows them done. Each item
may outlive only ``retries`` worker deaths, so an item that crashes every worker (a
segfault, the OOM killer) ends up failed instead of taking every restart.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

from safeinfer._supervisor import ChildHandle, ChildSpec, Supervisor, process_child
from safeinfer.errors import ManifestError
from safeinfer.jobs._items import Item
from safeinfer.jobs._progress import Progress
from safeinfer.jobs._run import take_batch
from safeinfer.jobs._worker import EXIT_FATAL, WorkerConfig, WorkerSlot, worker_main
from safeinfer.manifest import ManifestEntry, read_manifest

__all__ = ["EngineResult", "LocalEngine", "settle_held_items"]

logger = logging.getLogger(__name__)

#: Batches sent to a worker and not finished: the one it runs and the next one.
PREFETCH_BATCHES: Final = 2
#: Seconds the parent waits for worker messages before it checks the workers again.
RECEIVE_TIMEOUT: Final = 0.1
#: Seconds that finished workers get to exit after the parent sends them None.
EXIT_TIMEOUT: Final = 30.0
#: Restarts of one worker before it is given up.
MAX_WORKER_RESTARTS: Final = 5
#: Backoff before a worker restart, in seconds: first and maximum.
WORKER_BACKOFF: Final = (0.5, 10.0)


@dataclass
class EngineResult:
    """The outcome of an engine run: entries of written items, errors of failed ones."""

    done: dict[str, dict[str, Any]]
    failed: dict[str, str]
    devices: dict[str, str]
    interrupted: int | None = None
    fatal: str | None = None


class LocalEngine:
    """Run items on worker processes of this host, one per slot, under a supervisor."""

    def __init__(
        self,
        items: Sequence[Item],
        config: WorkerConfig,
        slots: Sequence[WorkerSlot],
        *,
        progress: Progress,
        stop_timeout: float,
    ):
        self._config = config
        self._slots = list(slots)
        self._progress = progress
        self._stop_timeout = stop_timeout
        self._context = multiprocessing.get_context("spawn")
        self._queue: deque[Item] = deque(items)
        self._total = len(items)
        self._in_flight: dict[str, list[list[Item]]] = {slot.name: [] for slot in slots}
        self._connections: dict[str, Connection] = {}
        self._ready: set[str] = set()
        self._deaths: dict[str, int] = {}
        self._result = EngineResult(done={}, failed={}, devices={})

    def run(self) -> EngineResult:
        """Run every item; return when all are done or failed, or a signal stops the job."""
        specs = [ChildSpec(slot.name, self._starter(slot)) for slot in self._slots]
        supervisor = Supervisor(
            specs,
            max_restarts=MAX_WORKER_RESTARTS,
            backoff=WORKER_BACKOFF,
            stop_timeout=self._stop_timeout,
            on_exit=self._on_exit,
        )
        with supervisor, supervisor.handle_signals():
            supervisor.start()
            self._loop(supervisor)
            if supervisor.stop_requested is None and self._result.fatal is None:
                self._finish(supervisor)
            supervisor.stop()
        finished = len(self._result.done) + len(self._result.failed)
        if finished < self._total:
            # A signal that arrives after the last item was recorded interrupts nothing.
            self._result.interrupted = supervisor.stop_requested
        for connection in self._connections.values():
            connection.close()
        return self._result

    # -- main loop -----------------------------------------------------------------------

    def _loop(self, supervisor: Supervisor) -> None:
        while supervisor.stop_requested is None and self._result.fatal is None:
            self._dispatch()
            self._receive()
            supervisor.poll()
            if not self._queue and not any(self._in_flight.values()):
                return
            if len(supervisor.failed) == len(self._slots):
                self._fail_rest("every worker failed; see the log for the workers' errors")
                return

    def _finish(self, supervisor: Supervisor) -> None:
        # Ready workers get None and exit once their last files are recorded. Workers
        # still loading the model hold no work; supervisor.stop() ends them at once.
        finishing = []
        for name in sorted(self._ready):
            try:
                self._connections[name].send(None)
            except OSError:
                continue  # the worker is already gone; the supervisor reaps it
            finishing.append(name)
        deadline = time.monotonic() + EXIT_TIMEOUT
        while any(supervisor.children.get(name) is not None for name in finishing):
            if supervisor.stop_requested is not None or time.monotonic() > deadline:
                return
            self._receive()
            supervisor.poll()

    def _dispatch(self) -> None:
        for name in sorted(self._ready):
            held = self._in_flight[name]
            while self._queue and len(held) < PREFETCH_BATCHES:
                batch = take_batch(self._queue, self._config.batch_size)
                try:
                    self._connections[name].send(batch)
                except OSError:
                    # The worker died; its exit puts everything it held back in the queue.
                    self._queue.extendleft(reversed(batch))
                    break
                held.append(batch)

    def _receive(self) -> None:
        connections = list(self._connections.items())
        ready = multiprocessing.connection.wait([conn for _, conn in connections], RECEIVE_TIMEOUT)
        for name, connection in connections:
            if connection in ready:
                self._drain(name, connection)

    def _drain(self, name: str, connection: Connection) -> None:
        try:
            while connection.poll():
                self._handle(name, connection.recv())
        except Exception:  # EOFError, OSError, or any unpickling error of a torn message
            # The worker exited, maybe in the middle of a message; stop waiting on its
            # pipe. Its exit event puts the work it held back in the queue.
            self._connections.pop(name, None)
            self._ready.discard(name)
            connection.close()

    def _handle(self, name: str, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            self._ready.add(name)
            self._result.devices[name] = message[1]
            logger.info("worker %s ready on %s", name, message[1])
        elif kind == "done":
            self._settle(name, message[1])
            self._result.done[message[1]] = message[2]
            self._progress.update(ok=True)
        elif kind == "failed":
            self._settle(name, message[1])
            self._result.failed[message[1]] = message[2]
            self._progress.update(ok=False)
        elif kind == "fatal":
            self._result.fatal = f"worker {name}: {message[1]}"

    def _settle(self, name: str, item_id: str) -> None:
        batches = self._in_flight[name]
        for batch in batches:
            for item in batch:
                if item.id == item_id:
                    batch.remove(item)
                    break
        self._in_flight[name] = [batch for batch in batches if batch]

    # -- worker lifecycle ----------------------------------------------------------------

    def _starter(self, slot: WorkerSlot) -> Any:
        def start() -> ChildHandle:
            parent_end, child_end = self._context.Pipe()
            process = self._context.Process(
                target=worker_main,
                args=(self._config, slot, child_end),
                name=f"safeinfer-{slot.name}",
                daemon=True,
            )
            process.start()
            # The parent keeps only its end, so the pipe reports EOF once the worker dies.
            child_end.close()
            self._connections[slot.name] = parent_end
            return process_child(process)

        return start

    def _on_exit(self, spec: ChildSpec, code: int) -> None:
        name = spec.name
        connection = self._connections.get(name)
        if connection is not None:
            self._drain(name, connection)
        self._connections.pop(name, None)
        self._ready.discard(name)
        if code == EXIT_FATAL and self._result.fatal is None:
            self._result.fatal = (
                f"worker {name} could not bind its GPU or load the model (exit code {code})"
            )
        held = [item for batch in self._in_flight[name] for item in batch]
        self._in_flight[name] = []
        if not held:
            return
        requeue = settle_held_items(
            held,
            self._recorded(name, {item.id for item in held}),
            result=self._result,
            deaths=self._deaths,
            retries=self._config.retries,
            progress=self._progress,
            death=lambda count: (
                f"worker {name} died while making it {count} times (last exit code {code})"
            ),
        )
        if requeue:
            logger.warning(
                "worker %s exited with code %d holding %d items; putting them back in the queue",
                name,
                code,
                len(requeue),
            )
            self._queue.extendleft(reversed(requeue))

    def _recorded(self, name: str, item_ids: set[str]) -> dict[str, dict[str, Any]]:
        # A worker can die after its manifest line and before its "done" message. The
        # line wins, because it is written only after the file is published.
        path = self._config.root / f"manifest-{name}.jsonl"
        try:
            entries = read_manifest(path)
        except FileNotFoundError:
            return {}
        except (ManifestError, OSError) as error:
            logger.warning("cannot read manifest %s: %s", path, error)
            return {}
        found = {}
        for entry in entries:
            item_id = entry.fields.get("item")
            if item_id in item_ids and _file_matches(entry):
                found[str(item_id)] = entry.to_dict()
        return found

    def _fail_rest(self, error: str) -> None:
        held = [item for batches in self._in_flight.values() for batch in batches for item in batch]
        for item in [*held, *self._queue]:
            self._result.failed[item.id] = error
            self._progress.update(ok=False)
        self._queue.clear()
        for name in self._in_flight:
            self._in_flight[name] = []


def settle_held_items(
    held: Sequence[Item],
    recorded: Mapping[str, dict[str, Any]],
    *,
    result: EngineResult,
    deaths: dict[str, int],
    retries: int,
    progress: Progress,
    death: Callable[[int], str],
) -> list[Item]:
    """Settle the items of a dead worker; return those to put back in the queue.

    An item in ``recorded`` (its manifest entries by id) is done. Any other item counts
    one more death in ``deaths``, and fails with the message ``death(count)`` once its
    count of deaths passes ``retries``.
    """
    requeue = []
    for item in held:
        if item.id in recorded:
            result.done[item.id] = recorded[item.id]
            progress.update(ok=True)
            continue
        count = deaths.get(item.id, 0) + 1
        deaths[item.id] = count
        if count > retries:
            error = death(count)
            logger.error("item %s failed: %s", item.id, error)
            result.failed[item.id] = error
            progress.update(ok=False)
        else:
            requeue.append(item)
    return requeue


def _file_matches(entry: ManifestEntry) -> bool:
    try:
        return os.stat(entry.absolute_path).st_size == entry.bytes
    except (ManifestError, OSError):
        # ManifestError: the line points outside the output root, so it proves nothing.
        return False
