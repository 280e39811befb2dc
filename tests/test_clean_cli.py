"""``safeinfer clean`` from the command line, as an operator runs it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safeinfer.cli import main
from safeinfer.writer._owner import Owner, current_owner, read_start_time
from safeinfer.writer._temps import temp_name


def dead_owner() -> Owner:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = read_start_time(process.pid)
    assert start is not None
    process.kill()
    process.wait()
    return dataclasses.replace(current_owner(), pid=process.pid, start=start[0])


def touch_temp(directory: Path, owner: Owner, *, age: float = 0.0) -> Path:
    path = directory / temp_name("cat.png", owner, "1a2b3c4d")
    path.write_bytes(b"partial")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "safeinfer", "clean", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_clean_removes_dead_writers_temps(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    dead = touch_temp(tmp_path / "sub", dead_owner())
    live = touch_temp(tmp_path, current_owner())
    (tmp_path / "cat.png").write_bytes(b"image")

    completed = run_cli(str(tmp_path))

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [str(dead)]
    assert "removed 1 stale temp file(s)" in completed.stderr
    assert not dead.exists()
    assert live.exists()
    assert (tmp_path / "cat.png").exists()


def test_clean_dry_run(tmp_path: Path) -> None:
    dead = touch_temp(tmp_path, dead_owner())
    completed = run_cli(str(tmp_path), "--dry-run")
    assert completed.returncode == 0
    assert completed.stdout.splitlines() == [str(dead)]
    assert "would remove 1" in completed.stderr
    assert dead.exists()


def test_clean_older_than_other_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = dataclasses.replace(current_owner(), host="gpu-node-7", pid=4242, start=1)
    old = touch_temp(tmp_path, other, age=7200)

    assert main(["clean", str(tmp_path)]) == 0
    assert old.exists()
    assert main(["clean", str(tmp_path), "--older-than", "3600"]) == 0
    assert not old.exists()
    assert capsys.readouterr().out.splitlines() == [str(old)]


def test_clean_missing_directory(tmp_path: Path) -> None:
    completed = run_cli(str(tmp_path / "missing"))
    assert completed.returncode == 2
    assert "missing" in completed.stderr
    assert "no such directory" in completed.stderr


@pytest.mark.parametrize("seconds", ["-1", "soon", "nan"])
def test_clean_rejects_bad_older_than(tmp_path: Path, seconds: str) -> None:
    completed = run_cli(str(tmp_path), "--older-than", seconds)
    assert completed.returncode == 2
    assert "--older-than" in completed.stderr
