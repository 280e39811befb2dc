"""The job's progress bar (tqdm; a notebook widget under Jupyter)."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["Progress"]

#: Unit shown by the bar.
UNIT: Final = "img"


class Progress:
    """A progress bar over the items of one run, counting failures in its postfix."""

    def __init__(self, total: int, *, enabled: bool = True, skipped: int = 0):
        from tqdm.auto import tqdm

        description = f"generate ({skipped} done before)" if skipped else "generate"
        self._bar: Any = tqdm(
            total=total,
            desc=description,
            unit=UNIT,
            disable=not enabled,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        self.failed = 0

    def update(self, *, ok: bool) -> None:
        """Count one finished item."""
        if not ok:
            self.failed += 1
            self._bar.set_postfix(failed=self.failed, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        """Close the bar."""
        self._bar.close()
