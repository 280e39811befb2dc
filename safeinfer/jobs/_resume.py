"""Detection of the items an earlier run finished, from the manifests and the files."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from safeinfer.errors import ManifestError
from safeinfer.jobs._items import Item
from safeinfer.manifest import ManifestEntry, find_manifests, read_manifests

__all__ = ["find_finished", "manifest_names", "prune_manifests"]

logger = logging.getLogger(__name__)

#: Threads that hash recorded files: enough to keep a disk or a network file system
#: busy, and hashlib releases the GIL while it hashes.
HASH_THREADS: Final = 8


def manifest_names(root: Path) -> list[str]:
    """Return the names of the manifests directly in ``root`` (none when it is missing)."""
    if not root.is_dir():
        return []
    return [path.name for path in find_manifests(root)]


def find_finished(items: Sequence[Item], root: Path) -> dict[str, ManifestEntry]:
    """Return the entry of every item whose recorded file exists and matches its record.

    An item counts as finished when a manifest line names its id, its file name and its
    parameters, and the file on disk has the recorded size and SHA-256. Items whose file
    is missing, damaged, or was made with other parameters are left out, so the job
    makes them again and replaces the file.
    """
    by_id = {item.id: item for item in items}
    candidates: dict[str, list[ManifestEntry]] = {}
    changed = 0
    for entry in read_manifests(root):
        item = by_id.get(str(entry.fields.get("item")))
        if item is None or entry.path != item.name:
            continue
        if not _same_params(item, entry):
            changed += 1
            continue
        candidates.setdefault(item.id, []).append(entry)
    if changed:
        logger.warning(
            "%d manifest entries were made with other parameters; making those items again",
            changed,
        )
    finished: dict[str, ManifestEntry] = {}
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        checks = pool.map(_first_match, candidates.values())
        for item_id, match in zip(candidates, checks, strict=True):
            if match is not None:
                finished[item_id] = match
            else:
                logger.info("item %s: recorded file missing or changed; making it again", item_id)
    return finished


def prune_manifests(root: Path, todo: Iterable[Item]) -> int:
    """Remove the manifest lines of files that this run will make again; return their count.

    A line whose path is the file name of an item in ``todo`` describes a file that is
    missing, damaged or made with other parameters, and that the run replaces. Without
    pruning, the manifest would keep a line that no longer matches its file next to the
    new one. Each manifest is rewritten atomically (a crash leaves the old or the new
    one), so call this only while no worker appends to the manifests.
    """
    rewritten = {item.name for item in todo}
    stale: dict[Path, set[int]] = {}
    for entry in read_manifests(root):
        if entry.path in rewritten:
            stale.setdefault(entry.manifest, set()).add(entry.line)
    if not stale:
        return 0

    from safeinfer.writer import atomic_write

    for manifest, numbers in stale.items():
        lines = manifest.read_bytes().split(b"\n")
        kept = [line for number, line in enumerate(lines, start=1) if number not in numbers]
        atomic_write(manifest, b"\n".join(kept), if_exists="replace", durability="full")
        logger.info("removed %d stale lines from %s", len(numbers), manifest.name)
    return sum(len(numbers) for numbers in stale.values())


def _same_params(item: Item, entry: ManifestEntry) -> bool:
    # A parameter the item leaves to the pipeline matches only a line that used the
    # pipeline's default too. Lines written before "defaults" existed hold null there.
    defaults = entry.fields.get("defaults") or []
    for key, value in item.params().items():
        recorded = entry.fields.get(key)
        if value is None:
            if recorded is not None and key not in defaults:
                return False
        elif recorded != value:
            # An explicit value equal to the default that was used makes the same image.
            return False
    return True


def _first_match(entries: Iterable[ManifestEntry]) -> ManifestEntry | None:
    for entry in entries:
        if _file_matches(entry):
            return entry
    return None


def _file_matches(entry: ManifestEntry) -> bool:
    try:
        # An edited or foreign line may point outside the output root: then it is no match.
        path = entry.absolute_path
    except ManifestError as error:
        logger.warning("ignoring manifest line %s:%d: %s", entry.manifest, entry.line, error)
        return False
    try:
        if os.stat(path).st_size != entry.bytes:
            return False
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest() == entry.sha256
    except OSError:
        return False
