"""Named mutexes with real processes: exclusion, crashes, timeouts, soft locks, symlinks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from safeinfer.errors import ConfigError, InvalidNameError, LockError, LockTimeout
from safeinfer.locks import (
    DEFAULT_LOCK_FILE_MODE,
    default_lock_dir,
    lock_file_name,
    model_lock,
    mutex,
)

CHILD_TIMEOUT = 60

COUNTER_CHILD = """
import os, sys
from safeinfer.locks import mutex
lock_dir, kind, rounds, counter = sys.argv[1:5]
shared_fs = False if kind == "flock" else kind
lock = mutex("counter", lock_dir=lock_dir, timeout=60, shared_fs=shared_fs)
for _ in range(int(rounds)):
    with lock:
        value = int(open(counter).read())
        os.sched_yield()
        with open(counter, "w") as handle:
            handle.write(str(value + 1))
"""

#: Starts a child that holds the lock "held" of the given kind until it is killed.
StartHolder = Callable[[str], "subprocess.Popen[str]"]

HOLDER_CHILD = """
import sys, time
from safeinfer.locks import mutex
lock_dir, kind = sys.argv[1:3]
shared_fs = False if kind == "flock" else kind
lock = mutex("held", lock_dir=lock_dir, timeout=10, shared_fs=shared_fs).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[StartHolder]:
    """Start a child that takes the lock "held" of a given kind and sleeps while holding it."""
    started: list[subprocess.Popen[str]] = []

    def start(kind: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER_CHILD, str(tmp_path), kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line == "locked\n", process.stderr.read() if process.stderr else ""
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(CHILD_TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def kill_and_reap(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(CHILD_TIMEOUT) == -signal.SIGKILL


# Exclusion across processes.


@pytest.mark.parametrize(("kind", "rounds"), [("flock", 50), ("soft", 10), ("lease", 10)])
def test_counter_has_no_lost_update(tmp_path: Path, kind: str, rounds: int) -> None:
    counter = tmp_path / "counter.txt"
    counter.write_text("0")
    lock_dir = tmp_path / "locks"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", COUNTER_CHILD, str(lock_dir), kind, str(rounds), str(counter)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for worker in workers:
        _, errors = worker.communicate(timeout=CHILD_TIMEOUT)
        assert worker.returncode == 0, errors
    assert int(counter.read_text()) == 4 * rounds


def test_sigkill_holder_lets_next_in(tmp_path: Path, holder: StartHolder) -> None:
    child = holder("flock")
    lock = mutex("held", lock_dir=tmp_path, timeout=10)
    with pytest.raises(LockTimeout):
        lock.acquire(timeout=0.1)
    kill_and_reap(child)
    # The kernel dropped the dead holder's flock, so this returns at the first attempt.
    lock.acquire(timeout=0)
    recorded = lock.holder()
    assert recorded is not None
    assert recorded.pid == os.getpid()
    lock.release()


def test_timeout_names_lock_file_and_holder(tmp_path: Path, holder: StartHolder) -> None:
    child = holder("flock")
    with pytest.raises(LockTimeout) as caught:
        mutex("held", lock_dir=tmp_path, timeout=0.2).acquire()
    error = caught.value
    message = str(error)
    assert str(tmp_path / "held.lock") in message
    assert "timed out after 0.2 s" in message
    assert f"pid {child.pid} on host {socket.gethostname()}" in message
    assert error.lock_file == str(tmp_path / "held.lock")
    assert error.holder_pid == child.pid
    assert error.holder_host == socket.gethostname()
    assert isinstance(error, TimeoutError)


def test_timeout_of_soft_lock_names_holder(tmp_path: Path, holder: StartHolder) -> None:
    child = holder("soft")
    with pytest.raises(LockTimeout) as caught:
        mutex("held", lock_dir=tmp_path, timeout=0.2, shared_fs="soft").acquire()
    assert caught.value.holder_pid == child.pid
    assert f"pid {child.pid}" in str(caught.value)


# Soft locks and leases for shared file systems.


@pytest.mark.parametrize("kind", ["soft", "lease"])
def test_dead_soft_holder_is_reclaimed(
    tmp_path: Path, holder: StartHolder, kind: Literal["soft", "lease"]
) -> None:
    child = holder(kind)
    marker = tmp_path / "held.lock"
    kill_and_reap(child)
    # The dead holder's marker is still there: nothing released it.
    assert marker.exists()
    lock = mutex("held", lock_dir=tmp_path, timeout=10, shared_fs=kind)
    with lock:
        recorded = lock.holder()
        assert recorded is not None
        assert recorded.pid == os.getpid()
    # Releasing a soft lock removes its marker; that is how it releases.
    assert not marker.exists()


def test_strict_soft_lock_keeps_dead_holder(tmp_path: Path, holder: StartHolder) -> None:
    child = holder("strict")
    kill_and_reap(child)
    # Fail-closed: a dead holder's claim needs manual recovery.
    with pytest.raises(LockTimeout):
        mutex("held", lock_dir=tmp_path, timeout=0.5, shared_fs="strict").acquire()


def test_shared_fs_true_means_lease(tmp_path: Path) -> None:
    assert mutex("x", lock_dir=tmp_path, shared_fs=True).kind == "lease"
    with pytest.raises(ConfigError, match="invalid shared_fs"):
        mutex("x", lock_dir=tmp_path, shared_fs="nfs")  # type: ignore[arg-type]


# Lock files: kept, shared between users, never followed through symlinks.


def test_lock_file_survives_release(tmp_path: Path) -> None:
    lock = mutex("keep", lock_dir=tmp_path, timeout=1)
    with lock:
        inode = lock.path.stat().st_ino
    assert lock.path.exists()
    with lock:
        assert lock.path.stat().st_ino == inode
    assert lock.is_locked is False


def test_lock_file_mode_ignores_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        with mutex("shared", lock_dir=tmp_path, timeout=1) as lock:
            mode = lock.path.stat().st_mode & 0o777
        with mutex("group", lock_dir=tmp_path, timeout=1, mode=0o660) as lock:
            group_mode = lock.path.stat().st_mode & 0o777
    finally:
        os.umask(previous)
    assert mode == DEFAULT_LOCK_FILE_MODE
    assert group_mode == 0o660


@pytest.mark.parametrize("kind", ["flock", "soft"])
def test_symlink_at_lock_path_is_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    (lock_dir / "victim.lock").symlink_to(target)
    shared_fs = False if kind == "flock" else kind
    lock = mutex("victim", lock_dir=lock_dir, timeout=0.2, shared_fs=shared_fs)  # type: ignore[arg-type]
    with pytest.raises(LockError, match="symbolic link"):
        lock.acquire()
    assert target.read_text() == "precious"
    assert (lock_dir / "victim.lock").is_symlink()


def test_symlink_planted_after_check_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Skip the up-front check, as a link planted between check and open would: filelock's
    # O_NOFOLLOW open must still refuse it.
    monkeypatch.setattr("safeinfer.locks._mutex._reject_symlink", lambda path: None)
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    (tmp_path / "victim.lock").symlink_to(target)
    with pytest.raises(LockError) as caught:
        mutex("victim", lock_dir=tmp_path, timeout=0.2).acquire()
    assert isinstance(caught.value.__cause__, OSError)
    assert target.read_text() == "precious"


# Names, directories and options.


def test_lock_names_are_sanitised_and_distinct(tmp_path: Path) -> None:
    assert lock_file_name("gpu-0") == "gpu-0.lock"
    assert lock_file_name("a/b") != lock_file_name("a_b")
    assert lock_file_name("a/b").startswith("a_b-")
    escaped = lock_file_name("../../etc/passwd")
    assert "/" not in escaped
    assert not escaped.startswith(".")
    assert len(lock_file_name("x" * 1000)) < 200
    assert lock_file_name("x" * 1000) != lock_file_name("x" * 999)
    lock = mutex("../../escape", lock_dir=tmp_path, timeout=1)
    assert lock.path.parent == tmp_path


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_lock_name_is_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        mutex(name, lock_dir=tmp_path)


@pytest.mark.parametrize("lock_dir", ["a-file", "a-file/locks"])
def test_lock_dir_that_is_a_file(tmp_path: Path, lock_dir: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(LockError, match="it or a parent is a file") as raised:
        mutex("x", lock_dir=tmp_path / lock_dir)
    assert str(tmp_path / lock_dir) in str(raised.value)
    assert raised.value.lock_file == str(tmp_path / lock_dir)


def test_lock_dir_env_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setenv("SAFEINFER_LOCK_DIR", str(tmp_path / "a-file"))
    with pytest.raises(LockError, match=r"\(SAFEINFER_LOCK_DIR\): it or a parent is a file"):
        mutex("x")


@pytest.mark.parametrize("timeout", [-1.0, float("inf"), float("nan")])
def test_timeout_must_be_finite(tmp_path: Path, timeout: float) -> None:
    with pytest.raises(ConfigError, match="invalid lock timeout"):
        mutex("x", lock_dir=tmp_path, timeout=timeout)


def test_lock_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEINFER_LOCK_DIR", str(tmp_path / "shared"))
    assert default_lock_dir() == tmp_path / "shared"
    with mutex("env", timeout=1) as lock:
        assert lock.path.parent == tmp_path / "shared"


def test_default_lock_dir_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAFEINFER_LOCK_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with mutex("private", timeout=1) as lock:
        directory = lock.path.parent
    assert directory == tmp_path / f"safeinfer-locks-{os.getuid()}"
    assert directory.stat().st_mode & 0o777 == 0o700


def test_default_lock_dir_refuses_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAFEINFER_LOCK_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / f"safeinfer-locks-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(LockError, match="not a directory owned by this user"):
        mutex("planted", timeout=1)


def test_model_lock_excludes_second_loader(tmp_path: Path) -> None:
    first = model_lock("org/model", lock_dir=tmp_path)
    second = model_lock("org/model", lock_dir=tmp_path, timeout=0.1)
    other = model_lock("org/other", lock_dir=tmp_path, timeout=0.1)
    with first:
        with pytest.raises(LockTimeout):
            second.acquire()
        with other:
            assert other.is_locked
    assert first.path.name.startswith("model-org_model-")
    with second:
        assert second.is_locked


def test_mutex_is_reentrant(tmp_path: Path) -> None:
    lock = mutex("reentrant", lock_dir=tmp_path, timeout=1)
    with lock, lock:
        assert lock.is_locked
    assert not lock.is_locked
