"""Inline image grids and report tables for Jupyter.

:func:`show_grid` takes any list of outputs (paths, :class:`~safeinfer.writer.WriteResult`
objects, pipeline results, manifests, or a directory) and returns an :class:`ImageGrid`,
which Jupyter renders as HTML with base64 PNG thumbnails and their prompt, seed and path.
:func:`show_reports` turns the reports of :func:`~safeinfer.png.scan` into one table.
Nothing is written to disk.

>>> import safeinfer
>>> safeinfer.show_grid(results, columns=4)                  # doctest: +SKIP
>>> safeinfer.show_reports(safeinfer.scan("outputs/"))       # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from safeinfer.errors import PngError

if TYPE_CHECKING:
    from safeinfer.png import PngReport

__all__ = [
    "DEFAULT_COLUMNS",
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_THUMBNAIL_PIXELS",
    "GridCell",
    "ImageGrid",
    "ReportTable",
    "show_grid",
    "show_reports",
]

logger = logging.getLogger(__name__)

#: Images per row.
DEFAULT_COLUMNS: Final = 4

#: Maximum width and height of a thumbnail in pixels. Larger images are scaled down before they are
#: embedded, so the notebook stores small thumbnails whatever the size of the originals.
DEFAULT_THUMBNAIL_PIXELS: Final = 256

#: Maximum number of images in one grid. Every thumbnail is stored in the notebook file,
#: and a browser slows down long before a grid of a whole output tree is complete.
DEFAULT_MAX_IMAGES: Final = 100

#: Maximum number of rows in one report table, for the same reason.
DEFAULT_MAX_ROWS: Final = 500

#: File suffixes that a directory argument expands to.
IMAGE_SUFFIXES: Final = frozenset({".png", ".jpg", ".jpeg", ".webp"})


@dataclass(frozen=True)
class GridCell:
    """One image of a grid: where it is, its caption, and its thumbnail or why it has none."""

    path: Path
    prompt: str | None = None
    seed: int | None = None
    thumbnail_png: bytes | None = None  #: PNG bytes of the thumbnail; None when unreadable
    upscaled: bool = False  #: True when the image is smaller than the thumbnail size
    error: str | None = None  #: why the image could not be shown


class ImageGrid:
    """A grid of images that Jupyter shows inline. Build it with :func:`show_grid`."""

    def __init__(
        self,
        cells: Iterable[GridCell],
        *,
        columns: int = DEFAULT_COLUMNS,
        captions: bool = True,
        thumbnail_pixels: int = DEFAULT_THUMBNAIL_PIXELS,
        omitted: int = 0,
    ) -> None:
        self.cells: tuple[GridCell, ...] = tuple(cells)
        self.columns = columns
        self.captions = captions
        self.thumbnail_pixels = thumbnail_pixels
        #: Images left out because the grid reached its maximum size.
        self.omitted = omitted

    def __len__(self) -> int:
        return len(self.cells)

    def __repr__(self) -> str:
        unreadable = sum(cell.error is not None for cell in self.cells)
        parts = [f"{len(self.cells)} images"]
        if unreadable:
            parts.append(f"{unreadable} unreadable")
        if self.omitted:
            parts.append(f"{self.omitted} not shown")
        return f"ImageGrid({', '.join(parts)})"

    def _repr_html_(self) -> str:
        width = self.columns * (self.thumbnail_pixels + 8)
        style = (
            f"display:grid;grid-template-columns:repeat({self.columns},minmax(0,1fr));"
            f"gap:8px;max-width:{width}px"
        )
        figures = "".join(self._figure_html(cell) for cell in self.cells)
        note = ""
        if self.omitted:
            note = (
                f"<p>{len(self.cells)} of {len(self.cells) + self.omitted} images shown; "
                "pass max_images to show more.</p>"
            )
        return f'<div class="safeinfer-grid" style="{style}">{figures}</div>{note}'

    def _figure_html(self, cell: GridCell) -> str:
        if cell.thumbnail_png is None:
            body = (
                '<div style="padding:8px;border:1px solid #cf222e;color:#cf222e">'
                f"cannot show this image: {html.escape(cell.error or 'unknown error')}</div>"
            )
        else:
            encoded = base64.b64encode(cell.thumbnail_png).decode("ascii")
            rendering = "image-rendering:pixelated;" if cell.upscaled else ""
            body = (
                f'<img src="data:image/png;base64,{encoded}" '
                f'alt="{html.escape(cell.prompt or cell.path.name)}" '
                f'style="width:100%;{rendering}">'
            )
        caption = ""
        if self.captions:
            lines = []
            if cell.prompt is not None:
                lines.append(f"<b>{html.escape(cell.prompt)}</b>")
            if cell.seed is not None:
                lines.append(f"seed {html.escape(str(cell.seed))}")
            lines.append(
                f'<code title="{html.escape(str(cell.path))}">{html.escape(cell.path.name)}</code>'
            )
            caption = (
                '<figcaption style="font-size:12px;line-height:1.3;overflow-wrap:anywhere">'
                + "<br>".join(lines)
                + "</figcaption>"
            )
        return f'<figure style="margin:0">{body}{caption}</figure>'


def show_grid(
    items: Any,
    *,
    columns: int = DEFAULT_COLUMNS,
    captions: bool = True,
    thumbnail_pixels: int = DEFAULT_THUMBNAIL_PIXELS,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> ImageGrid:
    """Show images inline in Jupyter as a grid, captioned with prompt, seed and path.

    ``items`` is one output or a list of them. An output is a path (``str`` or
    ``os.PathLike``), or any object with a ``path`` attribute, such as a
    :class:`~safeinfer.writer.WriteResult` or a pipeline result. A manifest
    (``manifest*.jsonl``), one of its entries, and the summary that a generate job
    returns stand for the images they record. A directory stands for the images in its
    manifests when it has any, and otherwise for its PNG, JPEG and WebP files, sorted by
    name, which is creation order for safeinfer's unique names. The caption takes
    ``prompt`` and ``seed`` from the object or manifest line when it has them, and from
    the PNG's safeinfer metadata otherwise.

    An image that cannot be read gets a cell that shows the error, so one corrupt file
    does not hide the others. At most ``max_images`` are shown, and the grid states how
    many it left out. ``thumbnail_pixels`` is the maximum width and height of each
    embedded thumbnail.

    >>> grid = safeinfer.show_grid(pipe(["a cat", "a dog"], seeds=[1, 2]))  # doctest: +SKIP
    >>> grid                      # the last expression of a cell renders inline
    """
    if columns < 1:
        raise ValueError(f"invalid columns {columns}: must be at least 1")
    if thumbnail_pixels < 1:
        raise ValueError(f"invalid thumbnail_pixels {thumbnail_pixels}: must be at least 1")
    if max_images < 0:
        raise ValueError(f"invalid max_images {max_images}: must be 0 or more")

    entries = _expand(items)
    shown = entries[:max_images]
    cells = [_make_cell(entry, thumbnail_pixels) for entry in shown]
    return ImageGrid(
        cells,
        columns=columns,
        captions=captions,
        thumbnail_pixels=thumbnail_pixels,
        omitted=len(entries) - len(shown),
    )


def _is_single_output(item: Any) -> bool:
    return isinstance(item, str | os.PathLike) or any(
        hasattr(item, attribute) for attribute in ("path", "absolute_path", "manifests")
    )


def _expand(items: Any) -> list[Any]:
    """Flatten ``items`` into a list of single outputs, expanding directories and manifests."""
    if _is_single_output(items):
        items = [items]
    elif not isinstance(items, Iterable):
        raise TypeError(
            f"cannot show {type(items).__name__!r} in a grid: pass a path, a result with a "
            "path attribute, or a list of them"
        )
    entries: list[Any] = []
    for item in items:
        entries.extend(_expand_one(item))
    return entries


def _expand_one(item: Any) -> list[Any]:
    from safeinfer.manifest import find_manifests, read_manifest, read_manifests

    if isinstance(item, str | os.PathLike):
        path = Path(item)
        if path.is_dir():
            # An output root with manifests lists its images in the manifests, with their
            # prompts and seeds; a plain directory is listed by name.
            manifests = find_manifests(path)
            return list(read_manifests(manifests)) if manifests else list(_images_in(path))
        if path.suffix == ".jsonl":
            return list(read_manifest(path))
        return [path]
    if isinstance(getattr(item, "path", None), str | os.PathLike) and (
        Path(item.path).suffix == ".jsonl"
    ):
        return list(read_manifest(item.path))  # an open Manifest
    if hasattr(item, "manifests") and hasattr(item, "out"):
        # The summary of a generate job: its manifests are named relative to its output root.
        manifests = [Path(item.out) / name for name in item.manifests]
        return list(read_manifests([path for path in manifests if path.exists()]))
    return [item]


def _images_in(directory: Path) -> list[Path]:
    # The writer's temp files start with a dot, and they are never complete images.
    return sorted(
        path
        for path in directory.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
        and path.is_file()
    )


def _make_cell(item: Any, thumbnail_pixels: int) -> GridCell:
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        prompt, seed = None, None
    elif hasattr(item, "absolute_path") and hasattr(item, "fields"):
        # A manifest entry: its path is relative to the manifest, and producers record the
        # prompt and seed among the other fields of the line.
        path = Path(item.absolute_path)
        prompt, seed = item.fields.get("prompt"), item.fields.get("seed")
    elif hasattr(item, "path"):
        path = Path(item.path)
        prompt, seed = getattr(item, "prompt", None), getattr(item, "seed", None)
    else:
        raise TypeError(
            f"cannot show {type(item).__name__!r} in a grid: pass paths, or objects with a "
            "path attribute such as WriteResult"
        )

    if prompt is None and seed is None:
        prompt, seed = _caption_from_metadata(path)
    try:
        thumbnail, upscaled = _thumbnail(path, thumbnail_pixels)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow reports some broken PNGs as SyntaxError, and truncated data as OSError.
        logger.warning("cannot show %s in a grid: %s", path, error)
        return GridCell(
            path=path, prompt=prompt, seed=seed, error=f"{type(error).__name__}: {error}"
        )
    return GridCell(path=path, prompt=prompt, seed=seed, thumbnail_png=thumbnail, upscaled=upscaled)


def _caption_from_metadata(path: Path) -> tuple[str | None, int | None]:
    if path.suffix.lower() != ".png":
        return None, None
    from safeinfer.png import read_metadata

    try:
        generation = read_metadata(path).get("safeinfer", {})
    except (OSError, PngError):
        return None, None
    prompt = generation.get("prompt")
    seed = generation.get("seed")
    return (
        prompt if isinstance(prompt, str) else None,
        seed if isinstance(seed, int) else None,
    )


def _thumbnail(path: Path, thumbnail_pixels: int) -> tuple[bytes, bool]:
    """Return PNG bytes of the image scaled to fit a square of ``thumbnail_pixels``."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()
        upscaled = max(opened.size) < thumbnail_pixels
        image: Image.Image = opened
        if image.mode.startswith("I"):
            # Pillow opens 16-bit grey PNGs in an integer mode, and converting that to 8 bits
            # clips every value above 255 to white. Keep the high byte instead.
            high_byte = np.right_shift(np.asarray(image, dtype=np.uint32), 8).clip(0, 255)
            image = Image.fromarray(high_byte.astype(np.uint8))
        elif image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.thumbnail((thumbnail_pixels, thumbnail_pixels))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return buffer.getvalue(), upscaled


class ReportTable:
    """PNG reports as one table that Jupyter shows inline. Build it with :func:`show_reports`."""

    def __init__(self, reports: Iterable[PngReport], *, checked: int, failed: int) -> None:
        self.reports: tuple[PngReport, ...] = tuple(reports)
        #: Files checked, including those left out of the table.
        self.checked = checked
        #: Files with at least one problem, including those left out of the table.
        self.failed = failed

    def __len__(self) -> int:
        return len(self.reports)

    def __repr__(self) -> str:
        return f"ReportTable({self.checked} files, {self.failed} with problems)"

    def _repr_html_(self) -> str:
        ok = self.checked - self.failed
        heading = f"<p><b>{self.checked} files</b>: {ok} ok, {self.failed} with problems"
        if len(self.reports) < self.checked:
            heading += f" ({len(self.reports)} shown)"
        header = (
            "<tr><th style='text-align:left'>file</th><th>status</th><th>size</th>"
            "<th style='text-align:right'>bytes</th><th style='text-align:left'>problem</th></tr>"
        )
        rows = "".join(_report_row(report) for report in self.reports)
        return f"{heading}</p><table>{header}{rows}</table>"


def _report_row(report: PngReport) -> str:
    name = html.escape(report.path if report.path is not None else "<PNG data>")
    if report.ok:
        status = "<span style='color:#1a7f37'>ok</span>"
        problem = ""
    else:
        status = f"<span style='color:#cf222e'>{html.escape(report.problems[0].kind)}</span>"
        problem = html.escape(str(report.problems[0]))
        if len(report.problems) > 1:
            problem += f" (and {len(report.problems) - 1} more)"
    size = ""
    if report.width is not None and report.height is not None:
        size = f"{report.width} x {report.height}"
    return (
        f"<tr><td style='text-align:left'><code>{name}</code></td><td>{status}</td>"
        f"<td>{size}</td><td style='text-align:right'>{report.bytes}</td>"
        f"<td style='text-align:left'>{problem}</td></tr>"
    )


def show_reports(
    reports: Iterable[PngReport],
    *,
    problems_only: bool = False,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ReportTable:
    """Show PNG reports (from :func:`~safeinfer.png.scan` or a list) as one table in Jupyter.

    Each row shows the file, ``ok`` or the kind of its first problem, the image size, the
    bytes read and the first problem's message. The heading counts every report, also
    those left out: with ``problems_only`` the table lists failed files only, and at most
    ``max_rows`` rows are listed. A single :class:`~safeinfer.png.PngReport` also renders
    on its own, as a detailed table of that file.

    >>> safeinfer.show_reports(safeinfer.scan("outputs/"), problems_only=True)  # doctest: +SKIP
    """
    if max_rows < 0:
        raise ValueError(f"invalid max_rows {max_rows}: must be 0 or more")
    shown: list[PngReport] = []
    checked = failed = 0
    for report in reports:
        checked += 1
        failed += not report.ok
        if len(shown) < max_rows and not (problems_only and report.ok):
            shown.append(report)
    return ReportTable(shown, checked=checked, failed=failed)
