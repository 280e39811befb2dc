"""``safeinfer verify``: exit codes, --json lines, --manifest, and the progress bar."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from corruption import sample_png

from safeinfer.cli import main
from safeinfer.manifest import Manifest

PNGSUITE = Path(__file__).parent / "data" / "pngsuite"


@pytest.fixture
def good_dir(tmp_path: Path) -> Path:
    root = tmp_path / "good"
    root.mkdir()
    for seed in range(3):
        (root / f"image-{seed}.png").write_bytes(sample_png(seed=seed))
    return root


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """An output root with three images recorded in a manifest by the real writer."""
    root = tmp_path / "outputs"
    (root / "images").mkdir(parents=True)
    with Manifest(root / "manifest-0.jsonl") as manifest:
        for seed in range(3):
            data = sample_png(seed=seed)
            name = f"images/{seed}.png"
            (root / name).write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            manifest.append({"path": name, "bytes": len(data), "sha256": digest, "seed": seed})
    return root


def test_all_good_exits_zero(good_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(good_dir), "--jobs", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "checked 3 file(s): 3 ok" in captured.err


def test_corrupt_file_exits_one(good_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = good_dir / "image-1.png"
    broken.write_bytes(broken.read_bytes()[:-30])
    assert main(["verify", str(good_dir), "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{broken}: truncated: truncated IDAT chunk at offset 33")


def test_missing_path_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "absent.png"), "--jobs", "1"]) == 2
    assert "read-error" in capsys.readouterr().out


def test_no_paths_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify"]) == 2
    assert "give at least one PATH" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{empty}"], "no files matched --pattern '*.png' in {empty}"),
        (["{good}", "--pattern", "["], "no files matched --pattern '[' in {good}"),
        (["--manifest", "{good}"], "no manifest*.jsonl in {good}"),
        (["--manifest", "{empty_manifest}"], "the manifests list no files"),
    ],
)
def test_nothing_checked_exits_two(
    good_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "manifest.jsonl").write_text("")
    places = {
        "empty": tmp_path / "empty",
        "good": good_dir,
        "empty_manifest": tmp_path / "manifest.jsonl",
    }
    filled = [arg.format(**places) for arg in args]
    result = subprocess.run(
        [sys.executable, "-m", "safeinfer", "verify", "--jobs", "1", *filled],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    expected = f"safeinfer verify: error: {message.format(**places)}"
    assert result.stderr.startswith(expected), result.stderr
    assert result.stdout == ""


def test_bad_jobs_is_usage_error(good_dir: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["verify", str(good_dir), "--jobs", "0"])
    assert caught.value.code == 2


def test_pngsuite_with_two_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(PNGSUITE), "--jobs", "2"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len({line.split(":")[0] for line in lines}) == 14


def test_json_lines(good_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (good_dir / "image-0.png").write_bytes(sample_png() + b"\x00\x00")
    assert main(["verify", str(good_dir), "--json", "--jobs", "1", "--level", "structure"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["image-0.png", "image-1.png", "image-2.png"]
    assert [r["ok"] for r in records] == [False, True, True]
    assert records[0]["level"] == "structure"
    assert records[0]["problems"][0]["code"] == "data-after-iend"
    assert records[0]["problems"][0]["offset"] == len(sample_png())


def test_quiet_prints_nothing(good_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (good_dir / "image-2.png").write_bytes(b"garbage")
    assert main(["verify", str(good_dir), "--quiet", "--jobs", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_manifest_all_match(outputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--manifest", str(outputs / "manifest-0.jsonl"), "--jobs", "1"]) == 0
    assert "checked 3 file(s): 3 ok" in capsys.readouterr().err


def test_manifest_directory_argument(outputs: Path) -> None:
    assert main(["verify", "--manifest", str(outputs), "--jobs", "1", "--quiet"]) == 0


def test_manifest_tampered_and_missing(outputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A valid PNG that contains another request's image, and a file that was never written.
    swapped = outputs / "images" / "1.png"
    swapped.write_bytes(sample_png(seed=9))
    (outputs / "images" / "2.png").unlink()
    code = main(
        ["verify", "--manifest", str(outputs / "manifest-0.jsonl"), "--json", "--jobs", "2"]
    )
    assert code == 1
    records = {
        Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())
    }
    assert records["0.png"]["ok"] is True
    assert "sha256-mismatch" in [p["code"] for p in records["1.png"]["problems"]]
    assert [p["code"] for p in records["2.png"]["problems"]] == ["missing-file"]


def test_file_in_path_and_manifest_checked_once(
    outputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = outputs / "images" / "1.png"
    broken.write_bytes(broken.read_bytes()[:-30])
    # The same entries again in a second manifest, and one file named twice as a PATH.
    (outputs / "manifest-1.jsonl").write_bytes((outputs / "manifest-0.jsonl").read_bytes())
    args = [str(outputs), str(outputs / "images" / ".." / "images" / "0.png")]

    code = main(["verify", *args, "--manifest", str(outputs), "--json", "--jobs", "2"])
    assert code == 1
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [Path(record["path"]).name for record in records] == ["0.png", "1.png", "2.png"]
    codes = [problem["code"] for problem in records[1]["problems"]]
    assert codes[0] == "truncated"
    assert "size-mismatch" in codes
    assert "sha256-mismatch" in codes
    assert len(codes) == len(set(codes))
    assert "checked 3 file(s): 2 ok, 1 with problems" in captured.err


@pytest.mark.parametrize("how", ["dot-dot", "symlink"])
def test_manifest_path_escape_not_read(
    outputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    # The outside file matches its entry, so only the escape check can flag it.
    outside = tmp_path / "outside"
    outside.mkdir()
    data = sample_png(seed=5)
    (outside / "secret.png").write_bytes(data)
    if how == "dot-dot":
        path = "../outside/secret.png"
    else:
        (outputs / "linked").symlink_to(outside)
        path = "linked/secret.png"
    digest = hashlib.sha256(data).hexdigest()
    # Written by hand: Manifest.append itself rejects paths that leave the folder, but a
    # manifest from another tool or an edited one can still hold them.
    line = json.dumps({"path": path, "bytes": len(data), "sha256": digest})
    with (outputs / "manifest-0.jsonl").open("a", encoding="utf-8") as manifest_file:
        manifest_file.write(line + "\n")

    code = main(["verify", "--manifest", str(outputs), "--json", "--jobs", "1"])
    assert code == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["ok"] for record in records] == [True, True, True, False]
    problems = records[3]["problems"]
    assert [problem["code"] for problem in problems] == ["path-escape"]
    assert "path escapes the manifest folder" in problems[0]["message"]
    assert "line 4" in problems[0]["message"]


def test_manifest_unreadable_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--manifest", str(tmp_path / "absent.jsonl")]) == 2
    assert "cannot read manifest" in capsys.readouterr().err


def test_manifest_invalid_line_exits_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"path": "a.png"}\n{"path": "b.png", "bytes": 1, "sha256": "00"}\n')
    assert main(["verify", "--manifest", str(manifest)]) == 2
    assert str(manifest) in capsys.readouterr().err


def _run_command(args: list[str], *, tty: bool) -> tuple[int, str]:
    """Run ``python -m safeinfer`` with standard error on a pipe or a pseudo-terminal."""
    if not tty:
        done = subprocess.run(
            [sys.executable, "-m", "safeinfer", *args], capture_output=True, text=True, timeout=120
        )
        return done.returncode, done.stderr
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, which makes tqdm draw an empty bar.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "safeinfer", *args],
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        output = bytearray()
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the terminal closes with EIO once the child exits
                break
            if not data:
                break
            output += data
        code = process.wait(timeout=120)
    finally:
        os.close(leader)
    return code, output.decode(errors="replace")


def test_progress_bar_only_on_terminal(good_dir: Path) -> None:
    args = ["verify", str(good_dir), "--jobs", "1"]
    code, piped = _run_command(args, tty=False)
    assert code == 0
    assert "files/s" not in piped
    assert piped.strip().endswith("3 ok, 0 with problems, 0 unreadable")
    code, on_terminal = _run_command(args, tty=True)
    assert code == 0
    assert "verify: " in on_terminal
    assert "3 files" in on_terminal


def test_subprocess_exit_code_for_corrupt_tree() -> None:
    code, _ = _run_command(["verify", str(PNGSUITE), "--quiet", "--level", "structure"], tty=False)
    assert code == 1
