"""The ``safeinfer`` command's entry: error prefixes and a reader that closes the pipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from corruption import sample_png

PYTHON = sys.executable
TIMEOUT = 60


def run_safeinfer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "safeinfer", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize(
    ("subcommand", "args"),
    [
        ("clean", ["{tmp}/absent"]),
        ("generate", ["{tmp}/absent.txt", "--out", "{tmp}/out"]),
        ("launch", ["--workers", "0", "--", "true"]),
        ("launch", ["--workers", "1"]),
        ("clean", [""]),
        ("clean", ["{tmp}/bad.jsonl"]),
        ("launch", ["--workers", "1", "--run-dir", "{tmp}/bad.jsonl", "--", "true"]),
        ("launch", ["--workers", "1", "--stop-timeout", "nan", "--", "true"]),
        ("launch", ["--workers", "1", "--health", "notaurl", "--", "true"]),
        ("verify", ["--manifest", "{tmp}/bad.jsonl"]),
        ("verify", ["--manifest", "{tmp}"]),
        ("verify", ["{tmp}/empty"]),
    ],
)
def test_error_names_subcommand(tmp_path: Path, subcommand: str, args: list[str]) -> None:
    (tmp_path / "bad.jsonl").write_text('{"path": 1}\n{}\n')
    (tmp_path / "empty").mkdir()
    filled = [arg.format(tmp=tmp_path) for arg in args]
    result = run_safeinfer(subcommand, *filled)
    assert result.returncode == 2
    assert result.stderr.startswith(f"safeinfer {subcommand}: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_reader_closing_pipe_ends_quietly(tmp_path: Path) -> None:
    # More output than a pipe buffers, so the command is still writing when head exits.
    data = sample_png(seed=0)
    for index in range(400):
        (tmp_path / f"{index:03d}.png").write_bytes(data)
    command = [PYTHON, "-m", "safeinfer", "verify", str(tmp_path), "--json", "--quiet"]
    verify = subprocess.Popen(
        [*command, "--level", "structure", "--jobs", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert verify.stdout is not None
    assert verify.stderr is not None
    first_line = verify.stdout.readline()
    verify.stdout.close()
    stderr = verify.stderr.read().decode()
    verify.stderr.close()
    code = verify.wait(timeout=TIMEOUT)
    assert first_line.startswith(b"{")
    assert stderr == ""
    assert code == 141
