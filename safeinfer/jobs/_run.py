"""Run items in this process: call the pipeline, write the images, record the manifest.

This is the unit that every engine shares. The local engine calls it inside each worker
process; a torchrun rank or a Ray actor calls it on its own share of the items.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from safeinfer.jobs._items import Item
from safeinfer.manifest import Manifest

__all__ = ["DEFAULT_RETRIES", "ItemOutcome", "run_items"]

logger = logging.getLogger(__name__)

#: Retries of an item after its first failed attempt, before it is reported failed.
DEFAULT_RETRIES: Final = 2


@dataclass(frozen=True)
class ItemOutcome:
    """How one item ended: its manifest entry when written, else the last error."""

    item_id: str
    attempts: int
    entry: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was written and recorded."""
        return self.entry is not None


def run_items(
    items: Sequence[Item],
    pipeline: Any,
    *,
    manifest: Manifest,
    worker: str,
    device: str | None = None,
    model: str | None = None,
    batch_size: int = 1,
    retries: int = DEFAULT_RETRIES,
    pipeline_kwargs: Mapping[str, Any] | None = None,
    on_outcome: Callable[[ItemOutcome], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[ItemOutcome]:
    """Make ``items`` with ``pipeline`` (a :class:`~safeinfer.pipeline.SafePipeline`).

    Consecutive items whose parameters match share one pipeline call of up to
    ``batch_size`` prompts, and one batch's files are written while the next batch runs.
    Each image is written below the pipeline's output directory under the item's name,
    then recorded in ``manifest`` with the item id, parameters, ``worker``, ``device``,
    ``model`` (by default the pipeline's own) and timings. Build the pipeline with
    ``if_exists="replace"``, so a file left by an attempt that died before its manifest
    line is replaced. A failed call or write is retried one item at a time, up to
    ``retries`` more attempts per item. ``should_stop`` is checked before every call;
    items not started when it returns True get no outcome.

    >>> pipe = SafePipeline.from_pretrained(                                  # doctest: +SKIP
    ...     "tiny-digits", output_dir="out", if_exists="replace")
    >>> items = shard(make_items(read_prompts("prompts.txt")), rank, world_size)  # doctest: +SKIP
    >>> with Manifest(f"out/manifest-{rank}.jsonl") as manifest:               # doctest: +SKIP
    ...     outcomes = run_items(items, pipe, manifest=manifest, worker=f"rank{rank}")
    """
    if batch_size < 1:
        raise ValueError(f"invalid batch_size {batch_size}: must be at least 1")
    outcomes: list[ItemOutcome] = []
    attempts: dict[str, int] = {}
    pending: deque[Item] = deque(items)
    # Items of a failed call are retried alone, so one bad item cannot fail its batch
    # mates again and again.
    alone: deque[Item] = deque()
    # The batch whose files are still being written while the next batch runs.
    writing: tuple[list[Item], Any] | None = None

    def finish(outcome: ItemOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    def fail(batch: Sequence[Item], error: Exception) -> None:
        for item in batch:
            tries = attempts[item.id]
            if tries <= retries:
                logger.warning(
                    "worker %s: item %s failed (attempt %d of %d): %s",
                    worker,
                    item.id,
                    tries,
                    retries + 1,
                    error,
                )
                alone.append(item)
            else:
                logger.error(
                    "worker %s: item %s failed after %d attempts: %s", worker, item.id, tries, error
                )
                finish(ItemOutcome(item.id, tries, error=f"{type(error).__name__}: {error}"))

    def record(batch: list[Item], generation: Any) -> None:
        try:
            results = generation.result()
        except Exception as error:
            fail(batch, error)
            return
        for item, result in zip(batch, results, strict=True):
            entry = manifest.record(
                result,
                item=item.id,
                **item.params(),
                model=model if model is not None else getattr(pipeline, "model_name", None),
                worker=worker,
                device=device if device is not None else getattr(pipeline, "device", None),
                seconds_inference=round(result.seconds_inference, 4),
                seconds_write=round(result.seconds_write, 4),
                attempt=attempts[item.id],
            )
            finish(ItemOutcome(item.id, attempts[item.id], entry=entry))

    try:
        while pending or alone:
            if should_stop is not None and should_stop():
                logger.info(
                    "worker %s: stop requested; %d items not started",
                    worker,
                    len(pending) + len(alone),
                )
                break
            batch = [alone.popleft()] if alone else take_batch(pending, batch_size)
            for item in batch:
                attempts[item.id] = attempts.get(item.id, 0) + 1
            try:
                generation = _submit(pipeline, batch, pipeline_kwargs or {})
            except Exception as error:
                fail(batch, error)
                continue
            if writing is not None:
                record(*writing)
            writing = (batch, generation)
    finally:
        if writing is not None:
            record(*writing)
    return outcomes


def take_batch(pending: deque[Item], batch_size: int) -> list[Item]:
    batch = [pending.popleft()]
    key = batch[0].batch_key()
    while pending and len(batch) < batch_size and pending[0].batch_key() == key:
        batch.append(pending.popleft())
    return batch


def _submit(pipeline: Any, batch: Sequence[Item], extra: Mapping[str, Any]) -> Any:
    first = batch[0]
    return pipeline.submit(
        [item.prompt for item in batch],
        negative_prompt=first.negative_prompt,
        num_inference_steps=first.steps,
        guidance_scale=first.guidance,
        width=first.width,
        height=first.height,
        seeds=[item.seed for item in batch],
        names=[item.name for item in batch],
        **extra,
    )
