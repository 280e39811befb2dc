"""Checks shared by the generate job tests: one valid file per item, manifests agree."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from safeinfer.manifest import read_manifests
from safeinfer.png import verify_png

#: Steps per image in the job tests: enough to run the whole sampling loop, few for speed.
TEST_STEPS = 2


def png_files(root: Path) -> list[Path]:
    """Return every published PNG below ``root`` (temp files excluded), sorted."""
    return sorted(path for path in root.rglob("*.png") if not path.name.startswith("."))


def temp_files(root: Path) -> list[Path]:
    """Return the writer's leftover temp files below ``root``."""
    return sorted(path for path in root.rglob(".*") if path.is_file())


def assert_job_consistent(root: Path, expected_ids: list[str] | None) -> dict[str, bytes]:
    """Assert one valid file and one manifest line per item, and nothing else.

    ``expected_ids=None`` checks a stopped job: any subset of the items may be done.
    Returns the bytes of each item's file by item id.
    """
    entries = read_manifests(root)
    ids = [entry.fields["item"] for entry in entries]
    duplicated = sorted(item for item, count in Counter(ids).items() if count > 1)
    assert duplicated == [], f"items recorded twice: {duplicated}"
    if expected_ids is not None:
        assert sorted(ids) == sorted(expected_ids)

    recorded = {entry.absolute_path.resolve() for entry in entries}
    on_disk = {path.resolve() for path in png_files(root)}
    assert on_disk == recorded
    assert temp_files(root) == []

    contents = {}
    for entry in entries:
        data = entry.absolute_path.read_bytes()
        assert len(data) == entry.bytes, entry.path
        assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.path
        assert verify_png(entry.absolute_path).ok, entry.path
        contents[entry.fields["item"]] = data
    return contents
