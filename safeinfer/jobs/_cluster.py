"""The choice of engine for a job: local worker processes, one launcher rank, or Ray actors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Protocol

from safeinfer.errors import ConfigError
from safeinfer.jobs._items import Item
from safeinfer.jobs._local import EngineResult
from safeinfer.jobs._progress import Progress
from safeinfer.jobs._ranks import RankInfo, detect_ranks
from safeinfer.jobs._worker import WorkerConfig

__all__ = ["ENGINES", "cluster_engine", "launch_ranks"]

logger = logging.getLogger(__name__)

#: Values accepted for ``engine``.
ENGINES: Final = ("local", "ray")


class Engine(Protocol):
    """The interface ``generate`` uses to run an engine."""

    def run(self) -> EngineResult:
        """Run the items and return what was made."""
        ...


def launch_ranks(engine: str) -> RankInfo | None:
    """Check ``engine``; return this process's rank when a launcher started two or more.

    A launch of a single rank runs the local engine, which then uses every GPU the rank
    may see, like a job started without a launcher.
    """
    if engine not in ENGINES:
        raise ConfigError(f"invalid engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine != "local":
        return None
    ranks = detect_ranks()
    if ranks is None or ranks.world_size < 2:
        return None
    return ranks


def cluster_engine(
    engine: str,
    items: Sequence[Item],
    config: WorkerConfig,
    *,
    ranks: RankInfo | None,
    gpus: str | Sequence[int | str] | None,
    workers: int | None,
    threads_per_worker: int | None,
    ray_address: str | None,
    progress: Progress,
) -> Engine:
    """Return the rank engine under a launcher, else the Ray engine."""
    if ranks is not None:
        from safeinfer.jobs._rank_engine import RankEngine

        if gpus is not None or workers is not None:
            logger.warning(
                "%s of %d (%s): ignoring gpus=%r and workers=%r; the launcher starts one "
                "process per GPU, and each binds its GPU by local rank",
                ranks.worker,
                ranks.world_size,
                ranks.launcher,
                gpus,
                workers,
            )
        return RankEngine(
            items, config, ranks, threads_per_worker=threads_per_worker, progress=progress
        )
    from safeinfer.jobs._ray import RayEngine

    return RayEngine(
        items,
        config,
        address=ray_address,
        gpus=gpus,
        workers=workers,
        threads_per_worker=threads_per_worker,
        progress=progress,
    )
