"""The Ray engine: the job on a Ray cluster, one actor per GPU or N CPU actors.

The driver keeps the only queue and hands each actor up to two batches at a time, like
the local engine, instead of a Ray Data pipeline. The driver then always records which
items each actor has been sent, so when an actor dies it reads the manifests, keeps the items
the actor recorded and puts only the rest back in the queue. Ray Data retries a whole
block on another actor without that knowledge, which records an item twice when the
first actor died after writing part of the block; its streaming executor also adds
start-up time that a job of a few thousand images does not need.

Each actor loads the model once, writes through the atomic writer into the shared
output root and appends to its own ``manifest-ray<N>.jsonl``: actors on different hosts
reach the root through a network file system, where appends from two clients to one
file can interleave. A replaced actor gets a new name, and so a new manifest, because
Ray may report an actor dead while a partitioned host still runs it.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from safeinfer.errors import ConfigError, MissingDependencyError
from safeinfer.jobs._items import Item
from safeinfer.jobs._local import EngineResult, settle_held_items
from safeinfer.jobs._progress import Progress
from safeinfer.jobs._resume import find_finished
from safeinfer.jobs._run import ItemOutcome, run_items, take_batch
from safeinfer.jobs._worker import WorkerConfig
from safeinfer.jobs._worker import _load as load_pipeline
from safeinfer.jobs._worker import _log_to_stderr as log_to_stderr

__all__ = ["RayEngine", "RayWorker"]

logger = logging.getLogger(__name__)

#: Batches sent to an actor at once: the one it runs and the next one, so it never waits
#: for the driver between batches.
PREFETCH_BATCHES: Final = 2
#: Seconds the driver waits for a result before it checks its actors again.
WAIT_TIMEOUT: Final = 1.0
#: Replacements of one actor slot before the slot is given up.
MAX_ACTOR_RESTARTS: Final = 5
#: ``gpus`` values the Ray engine accepts: Ray, not the job, assigns the GPUs.
RAY_GPU_CHOICES: Final = ("auto", "cpu")


class RayWorker:
    """The actor body: one pipeline, one manifest, items run in batches.

    The model loads in :meth:`ready` rather than in ``__init__``, so a model that cannot
    load comes back as a message the driver reports, while a crash while loading (the
    OOM killer) shows as a dead actor that the driver replaces.
    """

    def __init__(self, config: WorkerConfig, name: str, *, gpu: bool, threads: int | None):
        self._config = config
        self._name = name
        self._gpu = gpu
        self._threads = threads
        self._device = "cpu"
        self._pipeline: Any = None
        self._manifest: Any = None

    def ready(self) -> tuple[str, str]:
        """Bind the device and load the model.

        Returns ``("ready", device)``, or ``("fatal", error)`` when the model cannot load.
        """
        log_to_stderr(self._config.log_level, self._name)
        try:
            self._device = self._bind()
            self._pipeline = load_pipeline(self._config, self._device)
        except Exception as error:
            logger.error(
                "actor %s: cannot load model %s: %s", self._name, self._config.model, error
            )
            return "fatal", f"{type(error).__name__}: {error}"

        from safeinfer.manifest import Manifest

        self._manifest = Manifest(self._config.root / f"manifest-{self._name}.jsonl")
        return "ready", self._device

    def run(self, items: Sequence[Item]) -> list[ItemOutcome]:
        """Make ``items``; return one outcome per item."""
        return run_items(
            items,
            self._pipeline,
            manifest=self._manifest,
            worker=self._name,
            device=self._device,
            batch_size=self._config.batch_size,
            retries=self._config.retries,
            pipeline_kwargs=self._config.pipeline_kwargs,
        )

    def _bind(self) -> str:
        from safeinfer.gpu import apply_thread_budget, bind_gpu

        if self._gpu:
            import ray

            # Ray lists the GPU it assigned by its id under the node's own numbering;
            # with its usual narrowing that id is the only one in CUDA_VISIBLE_DEVICES.
            binding = bind_gpu(str(ray.get_gpu_ids()[0]))
        else:
            binding = bind_gpu("cpu")
        if self._threads is not None:
            apply_thread_budget(self._threads)
        return str(binding.device)


@dataclass
class _Actor:
    slot: int
    name: str
    handle: Any
    ready_ref: Any = None
    held: dict[Any, list[Item]] = field(default_factory=dict)

    @property
    def is_ready(self) -> bool:
        return self.ready_ref is None


class RayEngine:
    """Run items on Ray actors: one per GPU of the cluster, or ``workers`` CPU actors."""

    def __init__(
        self,
        items: Sequence[Item],
        config: WorkerConfig,
        *,
        address: str | None,
        gpus: str | Sequence[int | str] | None,
        workers: int | None,
        threads_per_worker: int | None,
        progress: Progress,
    ):
        if gpus is not None and not (isinstance(gpus, str) and gpus.lower() in RAY_GPU_CHOICES):
            raise ConfigError(
                f"invalid GPU list {gpus!r} for the Ray engine: Ray assigns the GPUs, so "
                "pass 'auto' (one actor per GPU of the cluster) or 'cpu'"
            )
        if workers is not None and workers < 1:
            raise ConfigError(f"invalid worker count {workers}: must be at least 1")
        if threads_per_worker is not None and threads_per_worker < 1:
            raise ConfigError(
                f"invalid threads per worker {threads_per_worker}: must be at least 1"
            )
        self._config = config
        self._address = address
        self._use_gpus = gpus is None or gpus.lower() != "cpu"
        self._workers = workers
        self._threads = threads_per_worker
        self._progress = progress
        self._queue: deque[Item] = deque(items)
        self._actors: dict[str, _Actor] = {}
        self._restarts: dict[int, int] = {}
        self._deaths: dict[str, int] = {}
        self._options: dict[str, Any] = {}
        self._remote: Any = None
        self._result = EngineResult(done={}, failed={}, devices={})

    def run(self) -> EngineResult:
        """Run every item; return when all are done or failed, or Ctrl-C stops the driver."""
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self._address)
        elif self._address is not None:
            logger.warning(
                "Ray is already initialised in this process; ignoring ray_address=%r",
                self._address,
            )
        try:
            count = self._plan(ray)
            self._remote = ray.remote(RayWorker)
            for slot in range(count):
                self._start(slot)
            self._loop(ray)
        except KeyboardInterrupt:
            logger.warning("interrupted; stopping the actors")
            self._result.interrupted = signal.SIGINT
        finally:
            for actor in self._actors.values():
                ray.kill(actor.handle)
            self._actors.clear()
            if started_here:
                ray.shutdown()
        return self._result

    # -- planning and actors -------------------------------------------------------------

    def _plan(self, ray: Any) -> int:
        resources = ray.cluster_resources()
        cluster_gpus = int(resources.get("GPU", 0)) if self._use_gpus else 0
        if cluster_gpus:
            count = self._workers or cluster_gpus
            self._options = {"num_gpus": 1, "num_cpus": self._threads or 1}
            logger.info("Ray: %d GPU actors on a cluster with %d GPUs", count, cluster_gpus)
            return count
        count = self._workers or 1
        threads = self._threads or self._cpu_share(ray, resources, count)
        self._threads = threads
        self._options = {"num_gpus": 0, "num_cpus": threads}
        logger.info("Ray: %d CPU actors with %d CPUs each", count, threads)
        return count

    @staticmethod
    def _cpu_share(ray: Any, resources: dict[str, float], count: int) -> int:
        # An actor that requests more CPUs than any one node has is never scheduled, and
        # the job would wait for it forever.
        largest_node = max(
            (node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")),
            default=1,
        )
        share = int(resources.get("CPU", 1)) // count
        return max(1, min(share, int(largest_node)))

    def _start(self, slot: int) -> None:
        restarts = self._restarts.get(slot, 0)
        name = f"ray{slot}" if restarts == 0 else f"ray{slot}-{restarts}"
        handle = self._remote.options(**self._options).remote(
            self._config, name, gpu=self._options["num_gpus"] > 0, threads=self._threads
        )
        self._actors[name] = _Actor(slot, name, handle, ready_ref=handle.ready.remote())

    # -- main loop -----------------------------------------------------------------------

    def _loop(self, ray: Any) -> None:
        while self._result.fatal is None and (
            self._queue or any(actor.held for actor in self._actors.values())
        ):
            if not self._actors:
                self._fail_rest("every Ray actor failed; see the log for the actors' errors")
                return
            self._dispatch()
            waiting = {ref: actor for actor in self._actors.values() for ref in _refs(actor)}
            finished, _ = ray.wait(list(waiting), num_returns=1, timeout=WAIT_TIMEOUT)
            for ref in finished:
                actor = waiting[ref]
                if actor.name in self._actors:
                    self._collect(ray, actor, ref)

    def _dispatch(self) -> None:
        for actor in self._actors.values():
            while actor.is_ready and self._queue and len(actor.held) < PREFETCH_BATCHES:
                batch = take_batch(self._queue, self._config.batch_size)
                actor.held[actor.handle.run.remote(batch)] = batch

    def _collect(self, ray: Any, actor: _Actor, ref: Any) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        try:
            value = ray.get(ref)
        except (RayActorError, RayTaskError) as error:
            self._on_death(actor, error)
            return
        if ref is actor.ready_ref:
            actor.ready_ref = None
            status, detail = value
            if status == "fatal":
                self._result.fatal = f"actor {actor.name}: {detail}"
            else:
                self._result.devices[actor.name] = detail
                logger.info("actor %s ready on %s", actor.name, detail)
            return
        actor.held.pop(ref)
        for outcome in value:
            if outcome.ok:
                self._result.done[outcome.item_id] = outcome.entry
            else:
                self._result.failed[outcome.item_id] = outcome.error or "failed"
            self._progress.update(ok=outcome.ok)

    def _on_death(self, actor: _Actor, error: Exception) -> None:
        import ray

        # A failed method call (not a dead process) also ends up here: the actor is
        # killed, so no two actors ever hold the same item.
        ray.kill(actor.handle)
        del self._actors[actor.name]
        held = [item for batch in actor.held.values() for item in batch]
        logger.warning(
            "actor %s failed holding %d items: %s", actor.name, len(held), _first_line(error)
        )
        recorded = find_finished(held, self._config.root) if held else {}
        requeue = settle_held_items(
            held,
            {item_id: entry.to_dict() for item_id, entry in recorded.items()},
            result=self._result,
            deaths=self._deaths,
            retries=self._config.retries,
            progress=self._progress,
            death=lambda count: f"actor {actor.name} died while making it {count} times",
        )
        self._queue.extendleft(reversed(requeue))
        restarts = self._restarts.get(actor.slot, 0)
        if restarts < MAX_ACTOR_RESTARTS:
            self._restarts[actor.slot] = restarts + 1
            self._start(actor.slot)
        else:
            logger.error("actor slot %d failed %d times; giving it up", actor.slot, restarts + 1)

    def _fail_rest(self, error: str) -> None:
        for item in self._queue:
            self._result.failed[item.id] = error
            self._progress.update(ok=False)
        self._queue.clear()


def _refs(actor: _Actor) -> list[Any]:
    return [actor.ready_ref] if actor.ready_ref is not None else list(actor.held)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise MissingDependencyError(
            "the Ray engine needs Ray, which is not installed: pip install 'safeinfer[ray]'"
        ) from error
    return ray
