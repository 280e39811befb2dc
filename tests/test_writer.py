"""atomic_write and atomic_open in one process: results, policies, modes, temp names."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeinfer.errors import (
    ConfigError,
    FileExistsConflict,
    InvalidTypeError,
    SafeInferError,
    WriteError,
)
from safeinfer.writer import WriteResult, atomic_open, atomic_write
from safeinfer.writer._owner import current_owner
from safeinfer.writer._temps import create_temp, parse_temp_name


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_write_bytes_result(tmp_path: Path) -> None:
    data = os.urandom(3000)
    result = atomic_write(tmp_path / "a.bin", data)
    assert result == WriteResult(
        path=tmp_path / "a.bin", bytes=3000, sha256=hashlib.sha256(data).hexdigest()
    )
    assert (tmp_path / "a.bin").read_bytes() == data
    assert files_in(tmp_path) == ["a.bin"]


@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "stream"])
def test_write_other_data_kinds(tmp_path: Path, kind: str) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one copy chunk
    source: bytearray | memoryview | io.BytesIO = {
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "stream": io.BytesIO(data),
    }[kind]
    result = atomic_write(tmp_path / "a.bin", source, durability="none")
    assert result.bytes == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "a.bin").read_bytes() == data


def test_empty_file(tmp_path: Path) -> None:
    result = atomic_write(tmp_path / "empty", b"", durability="none")
    assert result.bytes == 0
    assert result.sha256 == hashlib.sha256(b"").hexdigest()
    assert (tmp_path / "empty").read_bytes() == b""


def test_creates_missing_directories(tmp_path: Path) -> None:
    target = tmp_path / "x" / "y" / "z" / "a.bin"
    atomic_write(target, b"data")
    assert target.read_bytes() == b"data"


def test_error_policy_keeps_existing(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsConflict, match="if_exists='replace'") as caught:
        atomic_write(target, b"new", durability="none")
    assert caught.value.path == str(target)
    assert target.read_bytes() == b"old"
    assert files_in(tmp_path) == ["a.bin"]


def test_error_policy_respects_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link.bin"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsConflict):
        atomic_write(link, b"new", durability="none")
    assert not (tmp_path / "nowhere").exists()


def test_replace_policy(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    result = atomic_write(target, b"new", if_exists="replace", durability="none")
    assert result.path == target
    assert target.read_bytes() == b"new"
    assert files_in(tmp_path) == ["a.bin"]


def test_unique_policy_picks_fresh_name(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    result = atomic_write(target, b"new", if_exists="unique", durability="none")
    assert result.path != target
    assert result.path.parent == tmp_path
    assert result.path.name.startswith("a-")
    assert result.path.suffix == ".bin"
    assert target.read_bytes() == b"old"
    assert result.path.read_bytes() == b"new"


def test_unique_policy_uses_free_name(tmp_path: Path) -> None:
    result = atomic_write(tmp_path / "a.bin", b"new", if_exists="unique", durability="none")
    assert result.path == tmp_path / "a.bin"


def test_new_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.bin", b"x", durability="none")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640


def test_umask_unchanged_by_write(tmp_path: Path, umask_022: None) -> None:
    atomic_write(tmp_path / "a.bin", b"x", durability="none")
    current = os.umask(0o022)
    assert current == 0o022


def test_replace_keeps_old_mode(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    target.chmod(0o600)
    atomic_write(target, b"new", if_exists="replace", durability="none")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_explicit_mode(tmp_path: Path, umask_022: None) -> None:
    atomic_write(tmp_path / "a.bin", b"x", mode=0o664, durability="none")
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o664


@pytest.mark.parametrize("mode", [0o1000, 0o4755, 0o2755, 0o7777777, -1])
def test_mode_outside_permission_bits(tmp_path: Path, mode: int) -> None:
    with pytest.raises(ConfigError, match="invalid mode") as raised:
        atomic_write(tmp_path / "new" / "a.bin", b"x", mode=mode)
    assert "0o777" in str(raised.value)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("mode", ["644", 6.0, True])
def test_mode_of_wrong_type(tmp_path: Path, mode: object) -> None:
    with pytest.raises(InvalidTypeError, match="invalid mode"):
        atomic_write(tmp_path / "a.bin", b"x", mode=mode)  # type: ignore[arg-type]
    assert files_in(tmp_path) == []


def test_atomic_open_rejects_setuid_mode(tmp_path: Path) -> None:
    with (
        pytest.raises(ConfigError, match="invalid mode 0o4755"),
        atomic_open(tmp_path / "a.bin", mode=0o4755),
    ):
        pass
    assert files_in(tmp_path) == []


class TextReturningStream:
    def read(self, size: int = -1) -> str:
        return "hello"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("hello", "got str; encode it first"),
        (None, "got NoneType"),
        (12, "got int"),
        (io.StringIO("hello"), "text stream"),
        (TextReturningStream(), "returned str, not bytes"),
    ],
)
def test_non_binary_data_rejected(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(InvalidTypeError, match=message) as raised:
        atomic_write(tmp_path / "w" / "t.txt", data)  # type: ignore[arg-type]
    assert isinstance(raised.value, SafeInferError)
    assert isinstance(raised.value, TypeError)
    assert files_in(tmp_path) == []


class LaterTextStream:
    def __init__(self) -> None:
        self.calls = 0

    def read(self, size: int = -1) -> bytes | str:
        self.calls += 1
        return {1: b"bytes first", 2: "then text"}.get(self.calls, b"")


def test_stream_turning_text_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(InvalidTypeError, match="returned str"):
        atomic_write(target, LaterTextStream(), if_exists="replace")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert files_in(tmp_path) == ["a.bin"]


def test_target_is_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(WriteError, match="is a directory"):
        atomic_write(tmp_path / "dir.bin", b"x", if_exists="replace")
    assert files_in(tmp_path) == ["dir.bin"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"durability": "paranoid"}, "invalid durability"),
        ({"if_exists": "overwrite"}, "invalid if_exists"),
    ],
)
def test_invalid_options(tmp_path: Path, options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        atomic_write(tmp_path / "a.bin", b"x", **options)  # type: ignore[arg-type]
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(("durability", "fsyncs"), [("none", 0), ("file", 1), ("full", 2)])
def test_durability_fsync_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str, fsyncs: int
) -> None:
    (tmp_path / "sub").mkdir()
    calls: list[bool] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    atomic_write(tmp_path / "sub" / "a.bin", b"x", durability=durability)  # type: ignore[arg-type]
    assert len(calls) == fsyncs
    assert calls == [False, True][:fsyncs]  # the file first, then its directory


def test_atomic_open_publishes(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    with atomic_open(target, durability="none") as file:
        file.write(b"hello ")
        file.write(b"world")
        assert not target.exists()
        assert file.result is None
    assert target.read_bytes() == b"hello world"
    assert file.result == WriteResult(
        path=target, bytes=11, sha256=hashlib.sha256(b"hello world").hexdigest()
    )
    assert files_in(tmp_path) == ["a.bin"]


def test_atomic_open_seek_and_close_inside(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    with atomic_open(target, durability="none") as file:
        file.write(b"xxxxx world")
        file.seek(0)
        file.write(b"hello")
        file.close()
    assert target.read_bytes() == b"hello world"
    assert file.result is not None
    assert file.result.sha256 == hashlib.sha256(b"hello world").hexdigest()


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, SystemExit])
def test_atomic_open_error_removes_temp(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    temps: list[Path] = []

    def write_then_fail() -> None:
        with atomic_open(target, if_exists="replace") as file:
            file.write(b"new" * 100_000)
            temps.append(file.temp_path)
            assert file.temp_path.exists()
            raise error()

    with pytest.raises(error):
        write_then_fail()
    assert len(temps) == 1
    assert target.read_bytes() == b"old"
    assert files_in(tmp_path) == ["a.bin"]


def test_atomic_open_user_oserror_unchanged(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_open(tmp_path / "a.bin"):
        open(tmp_path / "missing")  # noqa: SIM115
    assert files_in(tmp_path) == []


class InterruptingStream(io.RawIOBase):
    """A stream that returns data once, then raises like Ctrl-C during a slow read."""

    def __init__(self) -> None:
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 1:
            raise KeyboardInterrupt
        return b"partial" * 1000


def test_interrupt_during_stream_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, InterruptingStream(), if_exists="replace")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert files_in(tmp_path) == ["a.bin"]


def test_temp_name_is_hidden_and_owned(tmp_path: Path) -> None:
    fd, temp = create_temp(tmp_path / "image.png")
    os.close(fd)
    assert temp.parent == tmp_path
    assert temp.name.startswith(".image.png.")
    assert temp.suffix == ".tmp"
    assert not temp.name.endswith(".png")
    parsed = parse_temp_name(temp)
    assert parsed is not None
    assert parsed.owner == current_owner()
    assert parsed.target_name == "image.png"


def test_temp_name_fits_long_target(tmp_path: Path) -> None:
    long_name = "é" * 120 + ".png"  # 244 bytes
    fd, temp = create_temp(tmp_path / long_name)
    os.close(fd)
    assert len(temp.name.encode()) <= 255
    parsed = parse_temp_name(temp)
    assert parsed is not None
    assert long_name.startswith(parsed.target_name)


@pytest.mark.parametrize(
    "name",
    ["image.png", ".image.png", ".x.~safeinfer.tmp", ".x.~safeinfer.h.zz.1.2.3.abcdefgh.tmp"],
)
def test_other_names_are_not_temps(tmp_path: Path, name: str) -> None:
    assert parse_temp_name(tmp_path / name) is None


def test_owner_start_time_matches_proc() -> None:
    owner = current_owner()
    fields = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    assert owner.pid == os.getpid()
    assert owner.start == int(fields[19])
