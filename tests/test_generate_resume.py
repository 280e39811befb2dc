"""Resume decisions from real manifests and files, without running a model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import safeinfer
from safeinfer.errors import ConfigError
from safeinfer.jobs import Item, find_finished, make_items, read_prompts
from safeinfer.jobs._resume import prune_manifests
from safeinfer.manifest import Manifest, read_manifests
from safeinfer.writer import save_png

PROMPTS = ["zero", "one", "two", "three", "four"]


def _items() -> list[Item]:
    return make_items(read_prompts(PROMPTS), seed=9, steps=2)


def _publish(root: Path, manifest: Manifest, item: Item, *, value: int) -> Path:
    folder, _, stem = item.name.rpartition("/")
    image = np.full((8, 8, 3), value, dtype=np.uint8)
    result = save_png(image, root / folder / "", name=stem.removesuffix(".png"), if_exists="error")
    manifest.record(result, item=item.id, **item.params(), worker="cpu0")
    return Path(result.path)


@pytest.fixture
def finished_job(tmp_path: Path) -> tuple[Path, list[Item], dict[str, Path]]:
    """An output root where every item but the last was made and recorded."""
    items = _items()
    paths = {}
    with Manifest(tmp_path / "manifest-cpu0.jsonl") as manifest:
        for value, item in enumerate(items[:-1]):
            paths[item.id] = _publish(tmp_path, manifest, item, value=value)
    return tmp_path, items, paths


def test_recorded_files_are_finished(
    finished_job: tuple[Path, list[Item], dict[str, Path]],
) -> None:
    root, items, paths = finished_job

    finished = find_finished(items, root)

    assert sorted(finished) == [item.id for item in items[:-1]]
    assert finished[items[0].id].absolute_path == paths[items[0].id]


def test_damaged_and_missing_files_are_redone(
    finished_job: tuple[Path, list[Item], dict[str, Path]],
) -> None:
    root, items, paths = finished_job
    damaged, missing = items[0], items[1]
    paths[damaged.id].write_bytes(paths[damaged.id].read_bytes()[:-7])
    paths[missing.id].unlink()

    finished = find_finished(items, root)

    assert damaged.id not in finished
    assert missing.id not in finished
    assert sorted(finished) == [item.id for item in items[2:-1]]


def test_same_size_other_bytes_is_redone(
    finished_job: tuple[Path, list[Item], dict[str, Path]],
) -> None:
    root, items, paths = finished_job
    path = paths[items[2].id]
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))

    assert items[2].id not in find_finished(items, root)


def test_changed_parameters_are_redone(
    finished_job: tuple[Path, list[Item], dict[str, Path]],
) -> None:
    root, items, _ = finished_job
    more_steps = [dataclasses.replace(item, steps=4) for item in items]

    assert find_finished(more_steps, root) == {}


def test_prune_drops_lines_of_redone_items(
    finished_job: tuple[Path, list[Item], dict[str, Path]],
) -> None:
    root, items, paths = finished_job
    damaged = items[0]
    paths[damaged.id].write_bytes(b"not a png")
    finished = find_finished(items, root)
    todo = [item for item in items if item.id not in finished]

    removed = prune_manifests(root, todo)

    assert removed == 1
    remaining = [entry.fields["item"] for entry in read_manifests(root)]
    assert remaining == [item.id for item in items[1:-1]]
    text = (root / "manifest-cpu0.jsonl").read_text()
    assert text.endswith("\n")
    assert all(json.loads(line)["item"] != damaged.id for line in text.splitlines())


def test_prune_without_stale_lines_keeps_file(
    finished_job: tuple[Path, list[Item], dict[str, Path]],
) -> None:
    root, items, _ = finished_job
    manifest = root / "manifest-cpu0.jsonl"
    before = manifest.stat()

    assert prune_manifests(root, items[-1:]) == 0
    assert manifest.stat().st_ino == before.st_ino


def test_existing_manifest_needs_resume(tmp_path: Path) -> None:
    (tmp_path / "manifest-cpu0.jsonl").write_text("")

    with pytest.raises(ConfigError, match=r"already contains a job \(manifest-cpu0\.jsonl\)"):
        safeinfer.generate(["7"], tmp_path, progress=False)


def test_resume_with_nothing_left(finished_job: tuple[Path, list[Item], dict[str, Path]]) -> None:
    root, _, _ = finished_job
    prompts = PROMPTS[:-1]

    summary = safeinfer.generate(prompts, root, seed=9, steps=2, resume=True, progress=False)

    assert (summary.total, summary.skipped, summary.written) == (4, 4, 0)
    assert summary.ok


def _publish_with_defaults(root: Path, item: Item) -> None:
    folder, _, stem = item.name.rpartition("/")
    image = np.full((8, 8, 3), 7, dtype=np.uint8)
    result = save_png(image, root / folder / "", name=stem.removesuffix(".png"), if_exists="error")
    params = {**item.params(), "steps": 50, "guidance": 2.0}
    with Manifest(root / "manifest-cpu0.jsonl") as manifest:
        manifest.record(result, item=item.id, **params, defaults=["steps", "guidance"])


@pytest.mark.parametrize(
    ("steps", "guidance", "finished"),
    [
        (None, None, True),
        (50, 2.0, True),
        (50, None, True),
        (4, None, False),
        (None, 3.0, False),
    ],
)
def test_recorded_defaults_match_items(
    tmp_path: Path, steps: int | None, guidance: float | None, finished: bool
) -> None:
    (item,) = make_items(read_prompts(["seven"]))
    _publish_with_defaults(tmp_path, item)
    wanted = dataclasses.replace(item, steps=steps, guidance=guidance)

    assert (wanted.id in find_finished([wanted], tmp_path)) is finished


def test_requested_steps_are_not_a_default(
    finished_job: tuple[Path, list[Item], dict[str, Path]],
) -> None:
    root, items, _ = finished_job
    default_steps = [dataclasses.replace(item, steps=None) for item in items]

    assert find_finished(default_steps, root) == {}


def test_line_pointing_outside_root_is_redone(
    finished_job: tuple[Path, list[Item], dict[str, Path]],
) -> None:
    root, items, paths = finished_job
    last = items[-1]
    outside = root.parent / f"{root.name}-outside.png"
    outside.write_bytes(paths[items[0].id].read_bytes())
    entry = json.loads((root / "manifest-cpu0.jsonl").read_text().splitlines()[0])
    # An edited line for the unfinished item whose path leaves the output root.
    entry.update(item=last.id, path=f"../{outside.name}")
    with (root / "manifest-cpu0.jsonl").open("a", encoding="utf-8") as manifest_file:
        manifest_file.write(json.dumps(entry) + "\n")

    finished = find_finished(items, root)

    assert last.id not in finished
    assert sorted(finished) == [item.id for item in items[:-1]]
