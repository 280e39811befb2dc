"""The return values of a SafePipeline call: one GenerationResult per image, in a Results list."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from safeinfer.writer import WriteResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationResult:
    """One generated image, as published: the file, its hash, its seed and its metadata.

    Jupyter shows it inline with its prompt, seed and file name.
    """

    image: Image.Image
    path: Path
    seed: int
    sha256: str  #: lowercase hex SHA-256 of the published file
    bytes: int  #: size of the published file
    prompt: str | None
    negative_prompt: str | None
    metadata: dict[str, Any] = field(repr=False)  #: the dict stored in the PNG
    seconds_inference: float  #: this image's share of its batch's inference time
    seconds_write: float  #: encoding plus publishing, in a writer thread

    def _repr_html_(self) -> str:
        from safeinfer._display import show_grid

        return show_grid([self], columns=1)._repr_html_()


class Results(list[GenerationResult]):
    """The results of one call, in request order. Jupyter shows them as a captioned grid."""

    @property
    def paths(self) -> list[Path]:
        """The published files, in request order."""
        return [result.path for result in self]

    def _repr_html_(self) -> str:
        from safeinfer._display import show_grid

        return show_grid(list(self))._repr_html_()


@dataclass
class _PendingImage:
    image: Image.Image
    seed: int
    prompt: str | None
    negative_prompt: str | None
    metadata: dict[str, Any]
    seconds_inference: float
    write: Future[tuple[WriteResult, float]]


class PendingGeneration:
    """Images whose inference is done and whose writes may still be running.

    :meth:`SafePipeline.submit` returns one, so a caller can start the next request
    before the files of this one are published. :meth:`result` waits for the writes.
    """

    def __init__(self) -> None:
        self._images: list[_PendingImage] = []

    def add(
        self,
        image: Image.Image,
        *,
        seed: int,
        prompt: str | None,
        negative_prompt: str | None,
        metadata: dict[str, Any],
        seconds_inference: float,
        write: Future[tuple[WriteResult, float]],
    ) -> None:
        self._images.append(
            _PendingImage(image, seed, prompt, negative_prompt, metadata, seconds_inference, write)
        )

    def __len__(self) -> int:
        return len(self._images)

    def done(self) -> bool:
        """Tell whether every write has finished, successfully or not."""
        return all(pending.write.done() for pending in self._images)

    def wait(self) -> None:
        """Wait until every write has finished; raise nothing."""
        wait([pending.write for pending in self._images])

    def result(self) -> Results:
        """Wait for the writes and return the results.

        When writes failed, raises the first failure (in request order) after all writes
        have finished, and logs the others, so no write is still running afterwards.
        """
        self.wait()
        failures = _failures(self._images)
        if failures:
            for pending, error in failures[1:]:
                logger.error("writing the image with seed %d failed: %s", pending.seed, error)
            raise failures[0][1]
        results = Results()
        for pending in self._images:
            written, seconds_write = pending.write.result()
            results.append(
                GenerationResult(
                    image=pending.image,
                    path=written.path,
                    seed=pending.seed,
                    sha256=written.sha256,
                    bytes=written.bytes,
                    prompt=pending.prompt,
                    negative_prompt=pending.negative_prompt,
                    metadata=pending.metadata,
                    seconds_inference=pending.seconds_inference,
                    seconds_write=seconds_write,
                )
            )
        return results


def _failures(images: Iterable[_PendingImage]) -> list[tuple[_PendingImage, BaseException]]:
    failures = []
    for pending in images:
        error = pending.write.exception()
        if error is not None:
            failures.append((pending, error))
    return failures
