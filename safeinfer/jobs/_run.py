"""Run items in this process: call the pipeline, write the images, record the manifest.

This is the unit that every engine shares. The local engine feeds an :class:`ItemRunner`
inside each worker process. A torchrun rank or a Ray actor calls :func:`run_items` on its
own share of the items.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from safeinfer.errors import ConfigError
from safeinfer.jobs._items import Item
from safeinfer.manifest import Manifest

__all__ = ["DEFAULT_RETRIES", "ItemOutcome", "ItemRunner", "run_items", "take_batch"]

logger = logging.getLogger(__name__)

#: Retries of an item after its first failed attempt, before it is reported failed.
DEFAULT_RETRIES: Final = 2
#: Item parameters that the pipeline fills in with its own default when they are None.
DEFAULTABLE_PARAMS: Final = ("steps", "guidance", "width", "height")


@dataclass(frozen=True)
class ItemOutcome:
    """The end of one item: its manifest entry when written, else its last error."""

    item_id: str
    attempts: int
    entry: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was written and recorded."""
        return self.entry is not None


class ItemRunner:
    """Run batches of items with one pipeline, writing one batch while the next one runs.

    ``pipeline`` is a :class:`~safeinfer.pipeline.SafePipeline` built with
    ``if_exists="replace"``, so a file left by an attempt that died before its manifest
    line is replaced. Each image goes below the pipeline's output directory under the
    item's name and is then recorded in ``manifest`` with the item id, parameters,
    ``worker``, ``device``, ``model`` (by default the pipeline's own) and timings. A
    failed call or write is retried one item at a time, up to ``retries`` more attempts
    per item. An item that fails alone with a ConfigError (a prompt the model rejects)
    is not retried. ``on_outcome`` is called once per item, when it is recorded or has
    failed for good.

    The files of the last call may still be in the writer pool when :meth:`run`
    returns. Call :meth:`flush` before waiting for more work, and before exiting.
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        manifest: Manifest,
        worker: str,
        device: str | None = None,
        model: str | None = None,
        retries: int = DEFAULT_RETRIES,
        pipeline_kwargs: Mapping[str, Any] | None = None,
        on_outcome: Callable[[ItemOutcome], None] | None = None,
    ):
        if retries < 0:
            raise ValueError(f"invalid retries {retries}: must be 0 or more")
        self._pipeline = pipeline
        self._manifest = manifest
        self._worker = worker
        self._device = device if device is not None else getattr(pipeline, "device", None)
        self._model = model if model is not None else getattr(pipeline, "model_name", None)
        self._retries = retries
        self._pipeline_kwargs = dict(pipeline_kwargs or {})
        self._on_outcome = on_outcome
        self._attempts: dict[str, int] = {}
        self._writing: tuple[list[Item], Any] | None = None

    def run(self, batch: Sequence[Item]) -> None:
        """Run one batch of items with equal ``batch_key()`` in one pipeline call."""
        parts: deque[list[Item]] = deque([list(batch)])
        while parts:
            part = parts.popleft()
            for item in part:
                self._attempts[item.id] = self._attempts.get(item.id, 0) + 1
            try:
                generation = self._submit(part)
            except Exception as error:
                # Items of a failed call are retried alone, so one bad item cannot
                # fail its batch mates again and again.
                parts.extend([item] for item in self._retryable(part, error))
                continue
            self.flush()
            self._writing = (part, generation)

    def flush(self) -> None:
        """Wait for the files of the last call and record them in the manifest."""
        while self._writing is not None:
            part, generation = self._writing
            self._writing = None
            try:
                results = generation.result()
            except Exception as error:
                for item in self._retryable(part, error):
                    self.run([item])
                continue
            for item, result in zip(part, results, strict=True):
                self._record(item, result)

    def _submit(self, part: Sequence[Item]) -> Any:
        first = part[0]
        return self._pipeline.submit(
            [item.prompt for item in part],
            negative_prompt=first.negative_prompt,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            width=first.width,
            height=first.height,
            seeds=[item.seed for item in part],
            names=[item.name for item in part],
            **self._pipeline_kwargs,
        )

    def _record(self, item: Item, result: Any) -> None:
        attempts = self._attempts[item.id]
        params = item.params()
        # Options the item left to the pipeline are recorded with the values it used,
        # and listed in "defaults" so that resume can tell them from requested ones.
        defaults = [
            key
            for key in DEFAULTABLE_PARAMS
            if params[key] is None and result.metadata.get(key) is not None
        ]
        for key in defaults:
            params[key] = result.metadata[key]
        entry = self._manifest.record(
            result,
            item=item.id,
            **params,
            defaults=defaults,
            model=self._model,
            worker=self._worker,
            device=self._device,
            seconds_inference=round(result.seconds_inference, 4),
            seconds_write=round(result.seconds_write, 4),
            attempt=attempts,
        )
        self._finish(ItemOutcome(item.id, attempts, entry=entry))

    def _retryable(self, part: Sequence[Item], error: Exception) -> list[Item]:
        # A ConfigError is about the request (a prompt the model cannot draw, a bad
        # option) and fails again on every attempt. Only the item alone is certain to
        # be the cause, so a batch is still split first.
        hopeless = isinstance(error, ConfigError) and len(part) == 1
        retry = []
        for item in part:
            attempts = self._attempts[item.id]
            if attempts <= self._retries and not hopeless:
                logger.warning(
                    "worker %s: item %s failed (attempt %d of %d): %s",
                    self._worker,
                    item.id,
                    attempts,
                    self._retries + 1,
                    error,
                )
                retry.append(item)
            else:
                logger.error(
                    "worker %s: item %s failed after %d attempts: %s",
                    self._worker,
                    item.id,
                    attempts,
                    error,
                )
                message = f"{type(error).__name__}: {error}"
                self._finish(ItemOutcome(item.id, attempts, error=message))
        return retry

    def _finish(self, outcome: ItemOutcome) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)


def run_items(
    items: Iterable[Item],
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
    """Make ``items`` with ``pipeline`` in this process and return their outcomes.

    Consecutive items whose parameters match share one pipeline call of up to
    ``batch_size`` prompts; see :class:`ItemRunner` for writing, recording and retries.
    ``should_stop`` is checked before every call; items not started when it returns
    True get no outcome. Every started item is recorded or failed before this returns.

    >>> pipe = SafePipeline.from_pretrained(                        # doctest: +SKIP
    ...     "tiny-digits", output_dir="out", if_exists="replace")
    >>> items = shard(make_items(read_prompts("prompts.txt")), rank, world_size)  # doctest: +SKIP
    >>> with Manifest(f"out/manifest-{rank}.jsonl") as manifest:    # doctest: +SKIP
    ...     outcomes = run_items(items, pipe, manifest=manifest, worker=f"rank{rank}")
    """
    if batch_size < 1:
        raise ValueError(f"invalid batch_size {batch_size}: must be at least 1")
    outcomes: list[ItemOutcome] = []

    def collect(outcome: ItemOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    runner = ItemRunner(
        pipeline,
        manifest=manifest,
        worker=worker,
        device=device,
        model=model,
        retries=retries,
        pipeline_kwargs=pipeline_kwargs,
        on_outcome=collect,
    )
    pending = deque(items)
    try:
        while pending:
            if should_stop is not None and should_stop():
                logger.info("worker %s: stop requested; %d items not started", worker, len(pending))
                break
            runner.run(take_batch(pending, batch_size))
    finally:
        runner.flush()
    return outcomes


def take_batch(pending: deque[Item], batch_size: int) -> list[Item]:
    """Pop up to ``batch_size`` items from the front that can share one pipeline call."""
    batch = [pending.popleft()]
    key = batch[0].batch_key()
    while pending and len(batch) < batch_size and pending[0].batch_key() == key:
        batch.append(pending.popleft())
    return batch
