"""clean_stale_temps: which temp files count as abandoned, and which are never touched."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safeinfer.writer import clean_stale_temps
from safeinfer.writer._owner import Liveness, Owner, current_owner, owner_liveness, read_start_time
from safeinfer.writer._temps import temp_name


def make_temp(directory: Path, owner: Owner, *, age: float = 0.0, token: str = "0badf00d") -> Path:
    path = directory / temp_name("image.png", owner, token)
    path.write_bytes(b"partial")
    if age:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
    return path


def finished_process_owner() -> Owner:
    """The identity of a process that ran on this host and has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = read_start_time(process.pid)
    assert start is not None
    process.kill()
    process.wait()
    return dataclasses.replace(current_owner(), pid=process.pid, start=start[0])


def foreign_owner() -> Owner:
    return dataclasses.replace(current_owner(), host="other-host", pid=1, start=1)


def test_live_owner_kept(tmp_path: Path) -> None:
    live = make_temp(tmp_path, current_owner(), age=10 * 86400)
    assert clean_stale_temps(tmp_path, older_than=0) == []
    assert live.exists()


def test_dead_owner_removed(tmp_path: Path) -> None:
    dead = make_temp(tmp_path, finished_process_owner())
    assert clean_stale_temps(tmp_path) == [dead]
    assert not dead.exists()


def test_reused_pid_counts_as_dead(tmp_path: Path) -> None:
    me = current_owner()
    earlier = make_temp(tmp_path, dataclasses.replace(me, start=me.start - 1))
    assert clean_stale_temps(tmp_path) == [earlier]


def test_earlier_boot_counts_as_dead(tmp_path: Path) -> None:
    other_boot = "f" * 8 if current_owner().boot != "f" * 8 else "e" * 8
    before_reboot = make_temp(tmp_path, dataclasses.replace(current_owner(), boot=other_boot))
    assert clean_stale_temps(tmp_path) == [before_reboot]


def test_zombie_owner_counts_as_dead(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = read_start_time(process.pid)
        assert start is not None
        owner = dataclasses.replace(current_owner(), pid=process.pid, start=start[0])
        assert owner_liveness(owner) is Liveness.ALIVE
        temp = make_temp(tmp_path, owner)
        os.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (state := read_start_time(process.pid)) and state[1] != "Z":
            assert time.monotonic() < deadline, "the killed process never became a zombie"
            time.sleep(0.01)
        # Not reaped yet: the pid still exists, as a zombie.
        assert clean_stale_temps(tmp_path) == [temp]
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize(
    "owner_change",
    [{"host": "other-host"}, {"pid_namespace": "123abc"}],
    ids=["other host", "other pid namespace"],
)
def test_foreign_owner_needs_older_than(tmp_path: Path, owner_change: dict[str, str]) -> None:
    owner = dataclasses.replace(current_owner(), **owner_change)  # type: ignore[arg-type]
    old = make_temp(tmp_path, owner, age=600, token="00000001")
    recent = make_temp(tmp_path, owner, age=5, token="00000002")
    assert owner_liveness(owner) is Liveness.UNKNOWN
    assert clean_stale_temps(tmp_path) == []
    assert clean_stale_temps(tmp_path, older_than=60) == [old]
    assert recent.exists()


def test_other_files_untouched(tmp_path: Path) -> None:
    names = [
        "image.png",
        ".hidden",
        "notes.tmp",
        ".image.png.tmp",
        ".image.png.~safeinfer.tmp",
        ".image.png.~safeinfer.h.00000000.1.2.3.nothex!!.tmp",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"keep")
    (tmp_path / "dir.tmp").mkdir()
    assert clean_stale_temps(tmp_path, older_than=0) == []
    assert sorted(os.listdir(tmp_path)) == sorted([*names, "dir.tmp"])


def test_recursive_and_flat(tmp_path: Path) -> None:
    owner = finished_process_owner()
    top = make_temp(tmp_path, owner)
    (tmp_path / "a" / "b").mkdir(parents=True)
    nested = make_temp(tmp_path / "a" / "b", owner)
    assert clean_stale_temps(tmp_path, recursive=False) == [top]
    assert nested.exists()
    assert clean_stale_temps(tmp_path) == [nested]


def test_symlinked_directory_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside = make_temp(elsewhere, finished_process_owner())
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "link").symlink_to(elsewhere, target_is_directory=True)
    assert clean_stale_temps(sweep) == []
    assert outside.exists()


def test_dry_run_removes_nothing(tmp_path: Path) -> None:
    dead = make_temp(tmp_path, finished_process_owner())
    assert clean_stale_temps(tmp_path, dry_run=True) == [dead]
    assert dead.exists()


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        clean_stale_temps(tmp_path / "file")
    with pytest.raises(FileNotFoundError):
        clean_stale_temps(tmp_path / "missing")


def test_foreign_owner_liveness_unknown() -> None:
    assert owner_liveness(foreign_owner()) is Liveness.UNKNOWN
