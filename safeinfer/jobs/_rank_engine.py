"""The rank engine: one rank of a torchrun, Accelerate, SLURM or MPI launch runs its share.

The launcher already started one process per GPU (or per CPU slot), so the rank binds
its GPU, loads the model and runs its items right here, with no child processes. Each
rank appends to its own ``manifest-rank<N>.jsonl``: ranks on different hosts share the
output directory only through a network file system, where appends from two clients to
one file can interleave and ``flock`` does not exclude.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from safeinfer.jobs._items import Item
from safeinfer.jobs._local import EngineResult
from safeinfer.jobs._progress import Progress
from safeinfer.jobs._ranks import RankInfo, gpu_request, process_group, rank_threads
from safeinfer.jobs._resume import manifest_names
from safeinfer.jobs._run import ItemOutcome, run_items
from safeinfer.jobs._summary import JobSummary
from safeinfer.jobs._worker import WorkerConfig
from safeinfer.jobs._worker import _load as load_pipeline

__all__ = ["RankEngine", "gather_summary"]

logger = logging.getLogger(__name__)

#: Signals that stop a rank after its current batch. torchrun's agent forwards both to
#: its workers, and srun sends SIGTERM when the allocation ends.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RankEngine:
    """Run one rank's items in this process, with one pipeline and one manifest."""

    def __init__(
        self,
        items: Sequence[Item],
        config: WorkerConfig,
        ranks: RankInfo,
        *,
        threads_per_worker: int | None,
        progress: Progress,
    ):
        self._items = list(items)
        self._config = config
        self._ranks = ranks
        self._threads = rank_threads(ranks, threads_per_worker)
        self._progress = progress
        self._stop_signal: int | None = None

    def run(self) -> EngineResult:
        """Run the items; return when all are done or failed, or a signal stops the rank."""
        worker = self._ranks.worker
        device = self._bind()
        result = EngineResult(done={}, failed={}, devices={worker: device})
        try:
            pipeline = load_pipeline(self._config, device)
        except Exception as error:
            logger.error("%s: cannot load model %s: %s", worker, self._config.model, error)
            result.fatal = f"{worker}: {type(error).__name__}: {error}"
            return result

        def count(outcome: ItemOutcome) -> None:
            if outcome.ok:
                assert outcome.entry is not None
                result.done[outcome.item_id] = outcome.entry
            else:
                result.failed[outcome.item_id] = outcome.error or "failed"
            self._progress.update(ok=outcome.ok)

        from safeinfer.manifest import Manifest

        with pipeline, self._stop_on_signals(), Manifest(self._manifest_path()) as manifest:
            run_items(
                self._items,
                pipeline,
                manifest=manifest,
                worker=worker,
                device=device,
                batch_size=self._config.batch_size,
                retries=self._config.retries,
                pipeline_kwargs=self._config.pipeline_kwargs,
                on_outcome=count,
                should_stop=lambda: self._stop_signal is not None,
            )
        result.interrupted = self._stop_signal
        return result

    def _manifest_path(self) -> Path:
        return self._config.root / self._ranks.manifest_name

    def _bind(self) -> str:
        # Runs before the model loads, so CUDA reads the narrowed CUDA_VISIBLE_DEVICES
        # and the thread variables when it starts.
        from safeinfer.gpu import apply_thread_budget, bind_gpu

        binding = bind_gpu(gpu_request(self._ranks))
        apply_thread_budget(self._threads)
        logger.info(
            "%s of %d (%s, local rank %s): %s, %d threads, %d items",
            self._ranks.worker,
            self._ranks.world_size,
            self._ranks.launcher,
            self._ranks.local_rank,
            binding.device,
            self._threads,
            len(self._items),
        )
        return str(binding.device)

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        # Only the main thread may install handlers; elsewhere the launcher's own
        # handling (usually the default, which ends the process) stays in place.
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame: FrameType | None) -> None:
            logger.warning(
                "%s: signal %d; stopping after the current batch", self._ranks.worker, signum
            )
            self._stop_signal = signum

        previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def gather_summary(summary: JobSummary, ranks: RankInfo) -> JobSummary:
    """Return the whole job's summary when a process group exists, else this rank's own.

    With ``torch.distributed`` initialised, every rank sends its summary to every other
    one in an all-gather, which waits for all ranks like a barrier. Each rank returns the
    merged summary, and rank 0 logs it. Without a process group the ranks cannot meet,
    so each returns and reports its own share.
    """
    distributed = process_group()
    if distributed is None:
        return summary
    gathered: list[Any] = [None] * distributed.get_world_size()
    distributed.all_gather_object(gathered, summary)
    merged = merge_summaries(gathered)
    if ranks.rank == 0:
        logger.info("job summary of %d ranks:\n%s", len(gathered), merged.format())
    return merged


def merge_summaries(summaries: Sequence[JobSummary]) -> JobSummary:
    """Add up the summaries of the ranks of one job into the job's summary."""
    first = summaries[0]
    failed: dict[str, str] = {}
    workers: dict[str, str] = {}
    for summary in summaries:
        failed.update(summary.failed)
        workers.update(summary.workers)
    interrupted = next((s.interrupted for s in summaries if s.interrupted is not None), None)
    return replace(
        first,
        total=sum(s.total for s in summaries),
        skipped=sum(s.skipped for s in summaries),
        written=sum(s.written for s in summaries),
        failed=failed,
        not_started=sum(s.not_started for s in summaries),
        seconds=max(s.seconds for s in summaries),
        workers=workers,
        manifests=manifest_names(first.out),
        interrupted=interrupted,
    )
