"""The summary a generate job returns and prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["JobSummary"]

#: Failed item ids listed by name in the summary text; the rest are counted.
LISTED_FAILURES: Final = 10


@dataclass(frozen=True)
class JobSummary:
    """The outcome of a generate job.

    ``total`` counts the job's items, ``skipped`` those finished by an earlier run
    (``resume``), ``written`` the images made in this run, ``failed`` maps item ids to
    their last error, and ``not_started`` counts items left when a signal stopped the
    job. ``seconds`` is the wall time of this run, model loading included.
    """

    out: Path
    total: int
    skipped: int
    written: int
    failed: dict[str, str]
    not_started: int
    seconds: float
    workers: dict[str, str] = field(default_factory=dict)
    manifests: list[str] = field(default_factory=list)
    interrupted: int | None = None

    @property
    def images_per_second(self) -> float:
        """Images written per second of wall time in this run."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Whether every item is done: nothing failed and nothing was left."""
        return not self.failed and self.not_started == 0

    def _repr_html_(self) -> str:
        # Jupyter shows the summary text above a grid of the images the manifests record.
        import html

        from safeinfer._display import show_grid

        return f"<pre>{html.escape(self.format())}</pre>" + show_grid(self)._repr_html_()

    def format(self) -> str:
        """Return the summary as a few lines of text for the terminal or a log.

        >>> print(summary.format())                                    # doctest: +SKIP
        24 images written, 0 failed, 0 skipped (done before), in 6.1 s: 3.93 images/s
        output: outputs (manifests: manifest-cpu0.jsonl)
        """
        lines = [
            f"{self.written} images written, {len(self.failed)} failed, "
            f"{self.skipped} skipped (done before), in {self.seconds:.1f} s: "
            f"{self.images_per_second:.2f} images/s"
        ]
        if self.interrupted is not None:
            lines.append(
                f"stopped by signal {self.interrupted} with {self.not_started} items left; "
                "run again with --resume to finish"
            )
        for item_id, error in list(self.failed.items())[:LISTED_FAILURES]:
            lines.append(f"failed {item_id}: {error}")
        if len(self.failed) > LISTED_FAILURES:
            lines.append(f"... and {len(self.failed) - LISTED_FAILURES} more failed items")
        workers = ", ".join(f"{name} on {device}" for name, device in self.workers.items())
        lines.append(f"output: {self.out} (manifests: {', '.join(self.manifests) or 'none'})")
        if workers:
            lines.append(f"workers: {workers}")
        return "\n".join(lines)
