"""Inline grids for Jupyter: thumbnails, captions, escaping, and unreadable files."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import safeinfer
from safeinfer._display import DEFAULT_THUMBNAIL_PIXELS, ImageGrid, show_grid, show_reports
from safeinfer.jobs import JobSummary
from safeinfer.manifest import Manifest, read_manifest

_IMAGE_SOURCE = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@dataclass
class GeneratedImage:
    """An output object of the kind pipelines return: a path plus its prompt and seed."""

    path: Path
    prompt: str
    seed: int


def _thumbnails(markup: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data))) for data in _IMAGE_SOURCE.findall(markup)
    ]


def _save(directory: Path, value: int, **metadata: object) -> safeinfer.WriteResult:
    image = np.full((32, 48, 3), value, dtype=np.uint8)
    return safeinfer.save_png(image, directory, name=f"value {value}", metadata=metadata or None)


def test_grid_of_write_results(tmp_path: Path) -> None:
    results = [
        _save(tmp_path, 40 * index, prompt=f"prompt {index}", seed=index) for index in range(3)
    ]

    grid = show_grid(results)
    markup = grid._repr_html_()

    assert len(grid) == 3
    assert markup.count("<figure") == 3
    for index, result in enumerate(results):
        assert f"<b>prompt {index}</b>" in markup
        assert f"seed {index}" in markup
        assert result.path.name in markup
    assert "repeat(4," in markup


def test_thumbnails_keep_pixels(tmp_path: Path) -> None:
    results = [_save(tmp_path, value) for value in (0, 200)]

    thumbnails = _thumbnails(show_grid(results)._repr_html_())

    assert [thumbnail.size for thumbnail in thumbnails] == [(48, 32), (48, 32)]
    assert thumbnails[0].convert("RGB").getpixel((5, 5)) == (0, 0, 0)
    assert thumbnails[1].convert("RGB").getpixel((5, 5)) == (200, 200, 200)


def test_small_images_scale_pixelated(tmp_path: Path) -> None:
    small = _save(tmp_path, 10)
    large_image = np.zeros((300, 600, 3), dtype=np.uint8)
    large = safeinfer.save_png(large_image, tmp_path, name="large")

    grid = show_grid([small, large])
    markup = grid._repr_html_()

    assert grid.cells[0].upscaled
    assert not grid.cells[1].upscaled
    assert markup.count("image-rendering:pixelated") == 1
    assert _thumbnails(markup)[1].size == (DEFAULT_THUMBNAIL_PIXELS, DEFAULT_THUMBNAIL_PIXELS // 2)


def test_sixteen_bit_grey_keeps_levels(tmp_path: Path) -> None:
    image = np.full((8, 8), 0x8000, dtype=np.uint16)
    result = safeinfer.save_png(image, tmp_path, name="grey16")

    (thumbnail,) = _thumbnails(show_grid([result])._repr_html_())

    assert thumbnail.mode == "L"
    assert thumbnail.getpixel((0, 0)) == 0x80


def test_object_attributes_win_over_metadata(tmp_path: Path) -> None:
    result = _save(tmp_path, 5, prompt="from the file", seed=1)
    item = GeneratedImage(path=result.path, prompt="from the object", seed=99)

    markup = show_grid([item])._repr_html_()

    assert "from the object" in markup
    assert "seed 99" in markup
    assert "from the file" not in markup


def test_captions_are_escaped(tmp_path: Path) -> None:
    hostile = '<script>alert("x")</script> & more'
    result = _save(tmp_path, 5, prompt=hostile, seed=3)

    markup = show_grid(result)._repr_html_()

    assert "<script>" not in markup
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in markup


def test_captions_can_be_hidden(tmp_path: Path) -> None:
    result = _save(tmp_path, 5, prompt="hidden", seed=3)

    markup = show_grid([result], captions=False, columns=2)._repr_html_()

    assert "<figcaption" not in markup
    assert "hidden" in markup  # still the image's alt text
    assert "repeat(2," in markup


def test_directory_lists_images_in_order(tmp_path: Path) -> None:
    results = [_save(tmp_path, value) for value in (1, 2, 3)]
    (tmp_path / ".partial-write.png.tmp").write_bytes(b"not an image")
    (tmp_path / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("not an image\n")

    grid = show_grid(tmp_path)

    assert [cell.path for cell in grid.cells] == [result.path for result in results]
    assert all(cell.error is None for cell in grid.cells)


def _recorded_job(root: Path) -> list[safeinfer.WriteResult]:
    """Write three images under root/images and record them, newest first, in a manifest."""
    results = [_save(root / "images", value) for value in (10, 20, 30)]
    with Manifest(root / "manifest-cpu0.jsonl") as manifest:
        for index, result in reversed(list(enumerate(results))):
            manifest.record(result, prompt=f"job prompt {index}", seed=500 + index)
    return results


def test_directory_with_manifest_uses_entries(tmp_path: Path) -> None:
    results = _recorded_job(tmp_path)
    _save(tmp_path / "images", 40)  # present on disk, but not recorded

    grid = show_grid(tmp_path)

    assert [cell.path for cell in grid.cells] == [result.path for result in reversed(results)]
    assert [cell.prompt for cell in grid.cells] == [f"job prompt {i}" for i in (2, 1, 0)]
    assert [cell.seed for cell in grid.cells] == [502, 501, 500]
    assert all(cell.error is None for cell in grid.cells)


def test_manifest_file_and_entries(tmp_path: Path) -> None:
    results = _recorded_job(tmp_path)
    manifest_path = tmp_path / "manifest-cpu0.jsonl"

    from_file = show_grid(manifest_path)
    from_entries = show_grid(read_manifest(manifest_path)[:2])
    with Manifest(manifest_path) as manifest:
        from_open_manifest = show_grid(manifest)

    assert len(from_file) == 3
    assert [cell.path for cell in from_entries.cells] == [results[2].path, results[1].path]
    assert len(from_open_manifest) == 3


def test_job_summary_shows_its_images(tmp_path: Path) -> None:
    results = _recorded_job(tmp_path)
    summary = JobSummary(
        out=tmp_path,
        total=3,
        skipped=0,
        written=3,
        failed={},
        not_started=0,
        seconds=1.0,
        manifests=["manifest-cpu0.jsonl"],
    )

    grid = show_grid(summary)
    markup = summary._repr_html_()

    assert sorted(cell.path for cell in grid.cells) == sorted(result.path for result in results)
    assert "job prompt 1" in grid._repr_html_()
    assert "3 images written" in markup
    assert markup.count("<figure") == 3


def test_job_summary_without_manifest(tmp_path: Path) -> None:
    summary = JobSummary(
        out=tmp_path,
        total=1,
        skipped=0,
        written=0,
        failed={"000000-00": "worker died"},
        not_started=0,
        seconds=1.0,
        manifests=["manifest-cpu0.jsonl"],
    )

    markup = summary._repr_html_()

    assert "failed 000000-00: worker died" in markup
    assert "<figure" not in markup


def test_plain_paths_take_metadata(tmp_path: Path) -> None:
    result = _save(tmp_path, 7, prompt="a seven", seed=7)

    grid = show_grid([str(result.path)])

    assert grid.cells[0].prompt == "a seven"
    assert grid.cells[0].seed == 7


def test_unreadable_file_gets_error_cell(tmp_path: Path) -> None:
    good = _save(tmp_path, 9)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.path.read_bytes()[:60])
    missing = tmp_path / "missing.png"

    grid = show_grid([good, broken, missing])
    markup = grid._repr_html_()

    assert grid.cells[0].error is None
    assert grid.cells[1].error is not None
    assert grid.cells[2].error is not None
    assert "FileNotFoundError" in grid.cells[2].error
    assert markup.count("cannot show this image") == 2
    assert len(_thumbnails(markup)) == 1
    assert repr(grid) == "ImageGrid(3 images, 2 unreadable)"


def test_max_images_limits_grid(tmp_path: Path) -> None:
    results = [_save(tmp_path, value) for value in range(5)]

    grid = show_grid(results, max_images=2)

    assert len(grid) == 2
    assert grid.omitted == 3
    assert "2 of 5 images shown" in grid._repr_html_()
    assert repr(grid) == "ImageGrid(2 images, 3 not shown)"


def test_invalid_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="columns"):
        show_grid([], columns=0)
    with pytest.raises(ValueError, match="thumbnail_pixels"):
        show_grid([], thumbnail_pixels=0)
    with pytest.raises(ValueError, match="max_images"):
        show_grid([], max_images=-1)
    with pytest.raises(TypeError, match="int"):
        show_grid(42)
    with pytest.raises(TypeError, match="dict"):
        show_grid([{"file": "a.png"}])


def test_empty_grid_renders(tmp_path: Path) -> None:
    grid = show_grid(tmp_path)

    assert isinstance(grid, ImageGrid)
    assert len(grid) == 0
    assert "<figure" not in grid._repr_html_()


def test_public_name_is_lazy_export() -> None:
    assert safeinfer.show_grid is show_grid
    assert "show_grid" in safeinfer.__all__


def test_png_report_renders_table(tmp_path: Path) -> None:
    good = _save(tmp_path, 9)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.path.read_bytes()[:-5])

    good_markup = safeinfer.verify_png(good.path)._repr_html_()
    broken_markup = safeinfer.verify_png(broken)._repr_html_()

    assert "<table>" in good_markup
    assert "ok" in good_markup
    assert "problem" in broken_markup
    assert html.escape(str(broken)) in broken_markup


def _scanned_tree(root: Path) -> list[safeinfer.PngReport]:
    """Scan two good files and one truncated file, in this process."""
    good = [_save(root, value) for value in (1, 2)]
    (root / "zz-truncated.png").write_bytes(good[0].path.read_bytes()[:-20])
    return list(safeinfer.scan(root, jobs=1))


def test_report_table_lists_scan(tmp_path: Path) -> None:
    reports = _scanned_tree(tmp_path)

    table = show_reports(reports)
    markup = table._repr_html_()

    assert len(table) == 3
    assert repr(table) == "ReportTable(3 files, 1 with problems)"
    assert "<b>3 files</b>: 2 ok, 1 with problems" in markup
    assert markup.count("<tr>") == 4
    assert "zz-truncated.png" in markup
    assert "32 x 48" not in markup
    assert "48 x 32" in markup
    broken = next(report for report in reports if not report.ok)
    assert html.escape(str(broken.problems[0])) in markup


def test_report_table_problems_only(tmp_path: Path) -> None:
    reports = _scanned_tree(tmp_path)

    table = show_reports(iter(reports), problems_only=True)
    limited = show_reports(reports, max_rows=1)

    assert [report.ok for report in table.reports] == [False]
    assert "3 files</b>: 2 ok, 1 with problems (1 shown)" in table._repr_html_()
    assert len(limited) == 1
    assert limited.checked == 3
    with pytest.raises(ValueError, match="max_rows"):
        show_reports(reports, max_rows=-1)


def test_report_table_escapes_paths(tmp_path: Path) -> None:
    directory = tmp_path / "<b>odd & name<b>"
    directory.mkdir()
    reports = _scanned_tree(directory)

    markup = show_reports(reports)._repr_html_()

    assert "<b>odd" not in markup
    assert "&lt;b&gt;odd &amp; name&lt;b&gt;" in markup
