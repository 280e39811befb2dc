"""Faults at every step of a write: the error names path and cause, nothing else changes.

Each step's system call is made to fail in turn by patching it; ENOSPC, EROFS, EFBIG and
EACCES also come from the real kernel (a small tmpfs, a file-size limit, a read-only
remount, a process without root rights).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from safeinfer.errors import FileExistsConflict, WriteError
from safeinfer.writer import _fs, atomic_open, atomic_write

OLD = b"old contents " * 100
NEW = os.urandom(200_000)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "image.png"
    path.write_bytes(OLD)
    return path


def failing(
    real: Callable[..., object], code: int, when: Callable[..., bool]
) -> Callable[..., object]:
    def wrapper(*args: object, **kwargs: object) -> object:
        if when(*args, **kwargs):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return wrapper


def is_directory_fd(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def assert_untouched(target: Path) -> None:
    assert target.read_bytes() == OLD
    assert listing(target.parent) == [target.name]


@pytest.mark.parametrize(
    ("call", "code", "when", "step", "cause"),
    [
        ("write", errno.ENOSPC, None, "writing the temp file", "no space left"),
        ("write", errno.EFBIG, None, "writing the temp file", "file-size limit"),
        ("write", errno.EDQUOT, None, "writing the temp file", "quota"),
        ("fsync", errno.EIO, "file", "fsync of the temp file", "input/output error"),
        ("replace", errno.EIO, None, "publishing", "input/output error"),
        ("open", errno.EACCES, None, "creating the temp file", "permission denied"),
        ("open", errno.EROFS, None, "creating the temp file", "read-only"),
        ("fchmod", errno.EPERM, None, "setting the file mode", "not permitted"),
    ],
)
def test_step_failure_with_replace(
    target: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    code: int,
    when: str | None,
    step: str,
    cause: str,
) -> None:
    def condition(*args: object, **kwargs: object) -> bool:
        if when == "file":
            return not is_directory_fd(int(args[0]))  # type: ignore[call-overload]
        return True

    monkeypatch.setattr(os, call, failing(getattr(os, call), code, condition))
    with pytest.raises(WriteError) as caught:
        atomic_write(target, NEW, if_exists="replace")
    monkeypatch.undo()

    message = str(caught.value)
    assert str(target) in message
    assert step in message
    assert cause in message
    assert caught.value.errno == code
    assert caught.value.path == str(target)
    assert isinstance(caught.value.__cause__, OSError)
    assert_untouched(target)


def test_renameat2_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _fs._renameat2 is not None, "this test needs Linux with glibc 2.28+"

    def failing_renameat2(*args: object) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(_fs, "_renameat2", failing_renameat2)
    target = tmp_path / "image.png"
    with pytest.raises(WriteError, match="publishing failed"):
        atomic_write(target, NEW)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("unsupported", [errno.EINVAL, errno.ENOSYS])
def test_link_fallback_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unsupported: int
) -> None:
    def unsupported_renameat2(*args: object) -> int:
        ctypes.set_errno(unsupported)
        return -1

    monkeypatch.setattr(_fs, "_renameat2", unsupported_renameat2)
    target = tmp_path / "image.png"
    atomic_write(target, NEW)
    assert target.read_bytes() == NEW
    with pytest.raises(FileExistsConflict):
        atomic_write(target, b"other")
    assert target.read_bytes() == NEW
    assert listing(tmp_path) == ["image.png"]


def test_link_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fs, "_renameat2", None)
    monkeypatch.setattr(os, "link", failing(os.link, errno.EPERM, lambda *a, **k: True))
    with pytest.raises(WriteError, match="operation not permitted"):
        atomic_write(tmp_path / "image.png", NEW)
    assert listing(tmp_path) == []


def test_directory_fsync_failure(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    condition = lambda fd: is_directory_fd(fd)  # noqa: E731
    monkeypatch.setattr(os, "fsync", failing(os.fsync, errno.EIO, condition))
    with pytest.raises(WriteError, match="was published, but fsync of its directory failed"):
        atomic_write(target, NEW, if_exists="replace")
    monkeypatch.undo()
    # The rename is the commit point: the new file is complete, and no temp file is left.
    assert target.read_bytes() == NEW
    assert listing(target.parent) == [target.name]


def test_directory_fsync_unsupported_ignored(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", failing(os.fsync, errno.EINVAL, is_directory_fd))
    atomic_write(target, NEW, if_exists="replace")
    assert target.read_bytes() == NEW


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(WriteError, match="not a directory") as caught:
        atomic_write(tmp_path / "file" / "sub" / "a.png", NEW)
    assert "creating the directory" in str(caught.value)
    assert (tmp_path / "file").read_bytes() == b"x"


def test_atomic_open_publish_failure(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "replace", failing(os.replace, errno.EIO, lambda *a: True))

    def write_through_atomic_open() -> None:
        with atomic_open(target, if_exists="replace") as file:
            file.write(NEW)

    with pytest.raises(WriteError, match="publishing failed"):
        write_through_atomic_open()
    assert_untouched(target)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test (needs root; skipped otherwise)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_real_enospc_on_small_tmpfs(small_tmpfs: Path) -> None:
    target = small_tmpfs / "image.png"
    target.write_bytes(OLD)
    with pytest.raises(WriteError, match="no space left on the device") as caught:
        atomic_write(target, os.urandom(2 * 1024 * 1024), if_exists="replace")
    assert caught.value.errno == errno.ENOSPC
    assert str(target) in str(caught.value)
    assert_untouched(target)


def test_real_erofs_on_read_only_remount(small_tmpfs: Path) -> None:
    target = small_tmpfs / "image.png"
    target.write_bytes(OLD)
    remount = ["mount", "-o", "remount,ro", str(small_tmpfs)]
    if subprocess.run(remount, capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only here")
    with pytest.raises(WriteError, match="read-only") as caught:
        atomic_write(target, NEW, if_exists="replace")
    assert caught.value.errno == errno.EROFS
    assert_untouched(target)


def run_child(code: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def test_real_efbig_from_file_size_limit(target: Path) -> None:
    outcome = run_child(
        f"""
        import json, resource, signal
        from safeinfer.errors import WriteError
        from safeinfer.writer import atomic_write
        # Without this the kernel's SIGXFSZ would end the process instead of failing write().
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, hard))
        try:
            atomic_write({str(target)!r}, bytes(200_000), if_exists="replace")
        except WriteError as error:
            print(json.dumps({{"errno": error.errno, "message": str(error)}}))
        else:
            print(json.dumps({{"errno": None, "message": "no error"}}))
        """
    )
    assert outcome["errno"] == errno.EFBIG
    assert str(target) in str(outcome["message"])
    assert "file-size limit" in str(outcome["message"])
    assert_untouched(target)


def test_real_eacces_without_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    directory = tmp_path / "locked"
    directory.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    target = directory / "image.png"
    target.write_bytes(OLD)
    outcome = run_child(
        f"""
        import json, os
        from safeinfer.errors import WriteError
        from safeinfer.writer import atomic_write
        os.setgid(65534)
        os.setuid(65534)
        try:
            atomic_write({str(target)!r}, b"new", if_exists="replace")
        except WriteError as error:
            print(json.dumps({{"errno": error.errno, "message": str(error)}}))
        else:
            print(json.dumps({{"errno": None, "message": "no error"}}))
        """
    )
    assert outcome["errno"] == errno.EACCES
    assert "permission denied" in str(outcome["message"])
    assert str(directory) in str(outcome["message"])
    assert_untouched(target)
