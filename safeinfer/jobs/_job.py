"""``generate()``: check the options, plan the items, skip finished ones, run the engine."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from safeinfer.errors import ConfigError, JobError, JobInterrupted, LockTimeout, WriteError
from safeinfer.jobs._cluster import cluster_engine, launch_ranks
from safeinfer.jobs._items import Item, make_items
from safeinfer.jobs._local import LocalEngine
from safeinfer.jobs._progress import Progress
from safeinfer.jobs._prompts import MAX_SEED, PromptSource, parse_size, read_prompts
from safeinfer.jobs._rank_engine import gather_summary
from safeinfer.jobs._ranks import RankInfo
from safeinfer.jobs._resume import find_finished, manifest_names, prune_manifests
from safeinfer.jobs._run import DEFAULT_RETRIES
from safeinfer.jobs._slots import plan_slots
from safeinfer.jobs._summary import JobSummary
from safeinfer.jobs._worker import WorkerConfig, WorkerSlot

__all__ = ["DEFAULT_SEED", "DTYPES", "generate"]

logger = logging.getLogger(__name__)

#: Base seed when none is given; item seeds derive from it (see ``safeinfer.jobs``).
DEFAULT_SEED: Final = 0
#: Values accepted for ``dtype``: torch dtype names.
DTYPES: Final = ("float32", "float16", "bfloat16")
#: Seconds that workers get to finish their current batch after SIGINT or SIGTERM,
#: before they are killed. A killed worker loses only the batch it was making.
DEFAULT_STOP_TIMEOUT: Final = 30.0
#: Lock name of the job lock file in the output directory (``safeinfer-job.lock``). The
#: file stays after the job: deleting it would let a third job lock a new file while a
#: second one still waits on the old.
JOB_LOCK_NAME: Final = "safeinfer-job"


def generate(
    prompts: PromptSource,
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    gpus: str | Sequence[int | str] | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    negative_prompt: str | None = None,
    size: str | tuple[int, int] | None = None,
    seed: int = DEFAULT_SEED,
    images_per_prompt: int = 1,
    batch_size: int = 1,
    dtype: str | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    retries: int = DEFAULT_RETRIES,
    local_files_only: bool = False,
    pipeline_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    engine: str = "local",
    ray_address: str | None = None,
) -> JobSummary:
    """Make one image per item of ``prompts`` into ``out``, in worker processes.

    ``prompts`` is a ``.txt``, ``.jsonl`` or ``.csv`` file (see
    :func:`~safeinfer.jobs.read_prompts`) or a list of prompts. ``model`` is an embedded
    model name (default ``tiny-digits``), a folder written by ``save_pretrained``, or a
    Hub id. ``gpus`` is ``"auto"`` (default: every visible GPU, else the CPU), ``"cpu"``
    or ids such as ``"0,1"``. The job starts one worker per GPU, or ``workers`` CPU
    workers, each with ``threads_per_worker`` CPU threads (default: an even share of
    the cores). ``steps``, ``guidance``, ``negative_prompt`` and ``size`` (``"WxH"``) are
    defaults that a row of the prompt file may override; None keeps the pipeline's own.

    Every image is written atomically and recorded in ``manifest-<worker>.jsonl`` in
    ``out``. An output directory that already has a manifest is rejected unless
    ``resume`` is true; then items whose file matches its record are skipped. A failed
    item is tried ``retries`` more times, and a worker that dies is replaced. Under the
    main thread, SIGINT and SIGTERM stop the workers cleanly.

    Under torchrun, Accelerate, SLURM's srun or MPI with two or more ranks, each rank
    makes its share of the items in this process, binds its GPU by local rank and
    writes ``manifest-rank<N>.jsonl``. ``engine="ray"`` (``"local"`` or ``"ray"``) runs
    the items on Ray actors instead: on the Ray instance this process already
    initialised, else on the cluster at ``ray_address`` (None: ``RAY_ADDRESS``, a
    running local cluster, or a new local instance).

    On Linux and macOS, a script that calls this must guard its top level with
    ``if __name__ == "__main__":``, because the workers are started with "spawn" and
    import the script's main module again.

    >>> import safeinfer
    >>> summary = safeinfer.generate(["7", "a handwritten three"], "outputs")  # doctest: +SKIP
    >>> summary.written                                                        # doctest: +SKIP
    2

    Raises:
        ConfigError: invalid options or prompt file, or a manifest in ``out`` without
            ``resume``.
        ModelError: the model is unknown or cannot be loaded.
        WriteError: ``out`` cannot be created or written.
        JobError: some items failed (``error.failed`` lists them, ``error.summary``
            describes the run).
        JobInterrupted: SIGINT or SIGTERM stopped the job; run it again with ``resume``.
    """
    started = time.monotonic()
    root = Path(out)
    _check_stop_timeout(stop_timeout)
    ranks = launch_ranks(engine)
    config = _worker_config(
        model,
        root,
        dtype=dtype,
        scheduler=scheduler,
        local_files_only=local_files_only,
        batch_size=batch_size,
        retries=retries,
        pipeline_kwargs=pipeline_kwargs,
    )
    width, height = _job_size(size)
    items = make_items(
        read_prompts(prompts),
        seed=_check_seed(seed),
        images_per_prompt=images_per_prompt,
        negative_prompt=negative_prompt,
        steps=_check_steps(steps),
        guidance=_check_guidance(guidance),
        width=width,
        height=height,
    )
    if ranks is not None:
        items = ranks.share(items)
    slots = plan_slots(gpus, workers, threads_per_worker) if engine == "local" and not ranks else []
    _make_root(root)
    # Ranks of one launch share ``root`` and each writes only its own manifest, so they
    # cannot take one exclusive lock between them. Under a launcher the rank manifests
    # keep two launches apart only by the manifest check.
    # NOTE: two launches into one DIR at the same moment are therefore not excluded.
    with contextlib.nullcontext() if ranks is not None else _lock_root(root):
        _check_root(root, resume=resume, ignore=ranks.peer_manifest_names() if ranks else set())
        return _run_job(
            items,
            root,
            config,
            slots,
            ranks=ranks,
            resume=resume,
            progress=progress,
            stop_timeout=stop_timeout,
            engine=engine,
            gpus=gpus,
            workers=workers,
            threads_per_worker=threads_per_worker,
            ray_address=ray_address,
            started=started,
        )


def _run_job(
    items: list[Item],
    root: Path,
    config: WorkerConfig,
    slots: list[WorkerSlot],
    *,
    ranks: RankInfo | None,
    resume: bool,
    progress: bool,
    stop_timeout: float,
    engine: str,
    gpus: str | Sequence[int | str] | None,
    workers: int | None,
    threads_per_worker: int | None,
    ray_address: str | None,
    started: float,
) -> JobSummary:
    finished = find_finished(items, root) if resume else {}
    todo = [item for item in items if item.id not in finished]
    if resume and ranks is None:
        # NOTE: ranks append to their manifests while other ranks start, so no rank can
        # rewrite them. Under ranks, a redone item keeps its stale line next to the new.
        prune_manifests(root, todo)
    logger.info(
        "job: %d items, %d done before, %d to make, %d workers",
        len(items),
        len(finished),
        len(todo),
        len(slots),
    )
    bar = Progress(
        len(todo), enabled=progress and not (ranks and ranks.rank), skipped=len(finished)
    )
    try:
        if todo:
            runner = (
                LocalEngine(todo, config, slots, progress=bar, stop_timeout=stop_timeout)
                if slots
                else cluster_engine(
                    engine,
                    todo,
                    config,
                    ranks=ranks,
                    gpus=gpus,
                    workers=workers,
                    threads_per_worker=threads_per_worker,
                    ray_address=ray_address,
                    progress=bar,
                )
            )
            result = runner.run()
        else:
            result = None
    finally:
        bar.close()

    done = result.done if result is not None else {}
    failed = result.failed if result is not None else {}
    not_started = len(todo) - len(done) - len(failed)
    # The rank and Ray engines report any signal they caught. One that arrived after the
    # last item was recorded or failed stopped nothing, so the job still succeeded.
    interrupted = result.interrupted if result is not None and not_started else None
    summary = JobSummary(
        out=root,
        total=len(items),
        skipped=len(finished),
        written=len(done),
        failed=dict(failed),
        not_started=not_started,
        seconds=time.monotonic() - started,
        workers=dict(result.devices) if result is not None else {},
        manifests=manifest_names(root),
        interrupted=interrupted,
    )
    if ranks is not None:
        summary = gather_summary(summary, ranks)
    if result is not None and result.fatal is not None:
        from safeinfer.errors import ModelError

        raise ModelError(f"cannot start workers with model {config.model!r}: {result.fatal}")
    _raise_unless_ok(summary)
    return summary


def _raise_unless_ok(summary: JobSummary) -> None:
    if summary.interrupted is not None:
        raise JobInterrupted(
            f"stopped by signal {summary.interrupted}: {summary.written} images written, "
            f"{summary.not_started} items left; run again with resume to finish them",
            signal=summary.interrupted,
            failed=list(summary.failed),
            summary=summary,
        )
    if summary.failed:
        shown = ", ".join(list(summary.failed)[:5])
        more = f" and {len(summary.failed) - 5} more" if len(summary.failed) > 5 else ""
        raise JobError(
            f"{len(summary.failed)} of {summary.total} items failed ({shown}{more}); "
            "see the log for the errors, and run again with resume to retry them",
            failed=list(summary.failed),
            summary=summary,
        )
    if summary.not_started:
        # The engines report items they could not make as failed. This guard keeps a
        # run that stopped early for another reason from looking complete.
        raise JobError(f"{summary.not_started} items were not made", summary=summary)


def _worker_config(
    model: str | os.PathLike[str] | None,
    root: Path,
    *,
    dtype: str | None,
    scheduler: str | None,
    local_files_only: bool,
    batch_size: int,
    retries: int,
    pipeline_kwargs: Mapping[str, Any] | None,
) -> WorkerConfig:
    from safeinfer.tiny import DEFAULT_MODEL, resolve_model

    name = os.fspath(model) if model is not None else DEFAULT_MODEL
    kind, _ = resolve_model(name)  # raises ModelError for an unknown name or a missing folder
    if kind == "hub" and local_files_only and not _in_hub_cache(name):
        from safeinfer.errors import ModelError
        from safeinfer.tiny import MODELS

        raise ModelError(
            f"model {name!r} is not an embedded model ({', '.join(MODELS)}), not a local "
            "folder, and not in the Hugging Face cache, the only place --offline "
            "(local_files_only=True) looks: pass a folder written by save_pretrained, or "
            "drop --offline to download it from the Hub"
        )
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"invalid dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if batch_size < 1:
        raise ConfigError(f"invalid batch size {batch_size}: must be at least 1")
    if retries < 0:
        raise ConfigError(f"invalid retries {retries}: must be 0 or more")
    if scheduler is not None and not scheduler.isidentifier():
        raise ConfigError(
            f"invalid scheduler {scheduler!r}: expected a diffusers scheduler class name "
            "such as 'DDIMScheduler'"
        )
    return WorkerConfig(
        model=name,
        root=root.resolve(),
        torch_dtype=dtype,
        scheduler=scheduler,
        local_files_only=local_files_only,
        batch_size=batch_size,
        retries=retries,
        pipeline_kwargs=dict(pipeline_kwargs or {}),
        log_level=logging.getLogger("safeinfer").getEffectiveLevel(),
    )


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return True  # the worker's load reports what is missing
    # Every diffusers pipeline on the Hub has a model_index.json at its root.
    found = try_to_load_from_cache(repo_id, "model_index.json")
    return isinstance(found, str)


def _job_size(size: str | tuple[int, int] | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    if isinstance(size, str):
        return parse_size(size)
    width, height = size
    return parse_size(f"{width}x{height}")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"invalid seed {seed!r}: expected a whole number from 0 to 2**64 - 1")
    return seed


def _check_guidance(guidance: float | None) -> float | None:
    # NaN or infinity would pass to the pipeline and fail every item when its
    # metadata is written, after the model loaded.
    if guidance is None:
        return None
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
        raise ConfigError(f"invalid guidance {guidance!r}: expected a finite number")
    if not math.isfinite(guidance):
        raise ConfigError(f"invalid guidance {guidance!r}: expected a finite number")
    return float(guidance)


def _check_stop_timeout(stop_timeout: float) -> None:
    valid = isinstance(stop_timeout, (int, float)) and not isinstance(stop_timeout, bool)
    if not valid or not math.isfinite(stop_timeout) or stop_timeout < 0:
        raise ConfigError(
            f"invalid stop_timeout {stop_timeout!r}: expected a finite number of seconds >= 0"
        )


def _check_steps(steps: int | None) -> int | None:
    if steps is not None and steps < 1:
        raise ConfigError(f"invalid steps {steps}: must be at least 1")
    return steps


@contextlib.contextmanager
def _lock_root(root: Path) -> Iterator[None]:
    """Hold the output directory's job lock, or raise ConfigError naming its holder."""
    from safeinfer.locks import mutex

    lock = mutex(JOB_LOCK_NAME, lock_dir=root, timeout=0)
    try:
        lock.acquire()
    except LockTimeout as error:
        holder = (
            f" (pid {error.holder_pid} on host {error.holder_host})"
            if error.holder_pid is not None
            else ""
        )
        raise ConfigError(
            f"another job is running in {root}{holder}; wait for it or use another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _check_root(root: Path, *, resume: bool, ignore: set[str]) -> None:
    # ignore: the other ranks' manifests, which they may create while this rank starts.
    existing = [name for name in manifest_names(root) if name not in ignore]
    if existing and not resume:
        raise ConfigError(
            f"output directory {root} already contains a job ({', '.join(existing)}): "
            "pass --resume (resume=True) to finish it, or choose a new output directory"
        )
    if resume:
        from safeinfer.writer import clean_stale_temps

        removed = clean_stale_temps(root)
        if removed:
            logger.info("removed %d temp files left by killed workers", len(removed))


def _make_root(root: Path) -> None:
    blocker = _file_in_path(root)
    if blocker is not None:
        where = "" if blocker == root else f" in the output directory path {root}"
        raise WriteError(
            f"{blocker}{where} is a file, not a directory; choose another --out directory",
            path=str(blocker),
            errno=errno.ENOTDIR,
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Workers fail only after loading the model; checking here saves that time.
        probe, probe_path = tempfile.mkstemp(prefix=".safeinfer-probe-", dir=root)
        os.close(probe)
        os.unlink(probe_path)
    except OSError as error:
        raise WriteError(
            f"output directory {root} is not writable: {error.strerror or error}; "
            "choose another --out directory or fix its permissions",
            path=str(root),
            errno=error.errno,
        ) from error


def _file_in_path(root: Path) -> Path | None:
    """Return the first path of ``root`` and its parents that exists and is no directory."""
    for path in reversed([root, *root.parents]):
        if path.exists() and not path.is_dir():
            return path
    return None
