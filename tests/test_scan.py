"""scan: walking trees, stable order, worker processes, unreadable paths, manifest tasks."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from corruption import build, sample_png

from safeinfer.png import _report as codes
from safeinfer.png import scan
from safeinfer.png._limits import DEFAULT_LIMITS
from safeinfer.png._scan import VerifyTask, iter_files, run_tasks, start_method, verify_task

PNGSUITE = Path(__file__).parent / "data" / "pngsuite"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    png = sample_png(16, 8)
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "top.png").write_bytes(png)
    (tmp_path / "a" / "one.png").write_bytes(png)
    (tmp_path / "a" / "deep" / "two.PNG").write_bytes(png[:-5])
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "three.png").write_bytes(png + b"tail")
    return tmp_path


#: A directory's files come first, sorted by name, then its subdirectories, each walked
#: the same way.
TREE_ORDER = ["top.png", "a/one.png", "a/deep/two.PNG", "b/three.png"]


def test_walk_order_files_then_subdirectories(tree: Path) -> None:
    found = [os.path.relpath(path, tree) for path in iter_files([tree])]
    assert found == TREE_ORDER


def test_walk_pattern(tree: Path) -> None:
    found = [os.path.relpath(path, tree) for path in iter_files([tree], pattern="*.txt")]
    assert found == ["a/notes.txt"]


def test_explicit_file_checked_whatever_its_name(tree: Path) -> None:
    reports = list(scan(tree / "a" / "notes.txt", jobs=1))
    assert [r.problems[0].code for r in reports] == [codes.BAD_SIGNATURE]


@pytest.mark.parametrize("jobs", [1, 2])
def test_scan_reports_every_file_in_order(tree: Path, jobs: int) -> None:
    reports = list(scan([tree], jobs=jobs))
    names = [os.path.relpath(r.path or "", tree) for r in reports]
    assert names == TREE_ORDER
    assert [r.ok for r in reports] == [True, True, False, False]
    assert reports[2].problems[0].code == codes.TRUNCATED
    assert reports[3].problems[0].code == codes.DATA_AFTER_IEND


def test_scan_pool_matches_single_process_on_pngsuite() -> None:
    # 175 files in batches of 16 keep several batches in flight on 2 workers.
    single = [(r.path, r.ok, r.problems) for r in scan(PNGSUITE, jobs=1, level="structure")]
    pooled = [(r.path, r.ok, r.problems) for r in scan(PNGSUITE, jobs=2, level="structure")]
    assert pooled == single
    assert len(single) == 175
    assert sum(not ok for _, ok, _ in single) == 14


def test_scan_with_thread_running_uses_forkserver(tree: Path) -> None:
    stop = threading.Event()
    waiter = threading.Thread(target=stop.wait)
    waiter.start()
    try:
        assert start_method() == "forkserver"
        reports = list(scan([tree], jobs=2))
    finally:
        stop.set()
        waiter.join()
    assert [r.ok for r in reports] == [True, True, False, False]
    # Earlier tests in the same session may leave daemon threads behind, so the method
    # after the waiter stops depends on what else still runs.
    expected = "fork" if threading.active_count() == 1 else "forkserver"
    assert start_method() == expected


def test_scan_from_script_without_main_guard(tree: Path) -> None:
    # The script runs from standard input, which a spawned worker could not import.
    script = (
        f"from safeinfer.png import scan; print(sum(r.ok for r in scan([{str(tree)!r}], jobs=2)))"
    )
    done = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


def test_scan_stops_early_without_error(tree: Path) -> None:
    reports = scan(PNGSUITE, jobs=2)
    first = next(reports)
    reports.close()  # type: ignore[attr-defined]
    assert first.path is not None


def test_fifo_skipped_in_tree_and_rejected_by_name(tree: Path) -> None:
    fifo = tree / "a" / "pipe.png"
    os.mkfifo(fifo)
    assert str(fifo) not in list(iter_files([tree]))
    reports = list(scan([fifo], jobs=1))
    assert [p.code for p in reports[0].problems] == [codes.READ_ERROR]
    assert "not a regular file" in reports[0].problems[0].message


def test_missing_path_reported_as_read_error(tmp_path: Path) -> None:
    reports = list(scan([tmp_path / "absent"], jobs=1))
    assert [p.code for p in reports[0].problems] == [codes.READ_ERROR]
    assert reports[0].problems[0].kind == "io"


def test_invalid_arguments_raise(tree: Path) -> None:
    with pytest.raises(ValueError, match="invalid jobs 0"):
        list(scan(tree, jobs=0))
    with pytest.raises(ValueError, match="invalid level"):
        list(scan(tree, level="deep"))  # type: ignore[arg-type]


def _task(path: Path, data: bytes) -> VerifyTask:
    return VerifyTask(str(path), len(data), hashlib.sha256(data).hexdigest())


def test_manifest_task_matching_file_ok(tmp_path: Path) -> None:
    data = sample_png()
    path = tmp_path / "image.png"
    path.write_bytes(data)
    assert verify_task(_task(path, data), "full", DEFAULT_LIMITS).ok


def stored_png(seed: int) -> bytes:
    """Return a valid 16x16 grey PNG with stored (uncompressed) deflate: its size is fixed."""
    rows = [b"\x00" + random.Random(seed * 100 + y).randbytes(16) for y in range(16)]
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)
    image_data = zlib.compress(b"".join(rows), 0)
    return build([(b"IHDR", ihdr), (b"IDAT", image_data), (b"IEND", b"")])


def test_manifest_task_swapped_valid_png(tmp_path: Path) -> None:
    # Another request's image of the same size: only the hash can tell.
    recorded = stored_png(1)
    path = tmp_path / "image.png"
    path.write_bytes(stored_png(2))
    assert len(stored_png(2)) == len(recorded)
    report = verify_task(_task(path, recorded), "full", DEFAULT_LIMITS)
    assert [p.code for p in report.problems] == [codes.SHA256_MISMATCH]
    assert report.problems[0].kind == "mismatch"


def test_manifest_task_truncated_file(tmp_path: Path) -> None:
    recorded = sample_png()
    path = tmp_path / "image.png"
    path.write_bytes(recorded[:100])
    report = verify_task(_task(path, recorded), "full", DEFAULT_LIMITS)
    found = [p.code for p in report.problems]
    assert found == [codes.TRUNCATED, codes.SIZE_MISMATCH, codes.SHA256_MISMATCH]


def test_manifest_task_hashes_past_framing_fault(tmp_path: Path) -> None:
    # The PNG check stops at the bad chunk type, but the hash must cover the whole file.
    data = b"\x89PNG\r\n\x1a\n" + bytes(20) + os.urandom(1000)
    path = tmp_path / "image.png"
    path.write_bytes(data)
    report = verify_task(_task(path, data), "full", DEFAULT_LIMITS)
    assert [p.code for p in report.problems] == [codes.BAD_CHUNK_TYPE]


def test_manifest_task_missing_file(tmp_path: Path) -> None:
    report = verify_task(_task(tmp_path / "gone.png", b"x"), "full", DEFAULT_LIMITS)
    assert [p.code for p in report.problems] == [codes.MISSING_FILE]


def test_manifest_task_not_png_checks_hash_only(tmp_path: Path) -> None:
    data = b"JFIF pretend jpeg"
    path = tmp_path / "image.jpg"
    path.write_bytes(data)
    task = VerifyTask(str(path), len(data), hashlib.sha256(data).hexdigest(), check_png=False)
    reports = list(run_tasks([task], jobs=1))
    assert reports[0].ok
