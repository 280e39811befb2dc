"""Hostile entries in the output tree and the lock directory.

Before the job starts, symbolic links pointing outside the tree and a FIFO sit at the
final names of items, and links with the names of dead writers' temp files sit beside
them. The job must replace the entries at its own names without following them, and
``safeinfer clean`` must remove the links without touching what they point to. A FIFO
where a recorded file should be must not block ``safeinfer verify`` or the resume, and
a link planted in a lock directory that everyone may write is rejected, not followed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from safeinfer.jobs import make_items, read_prompts
from safeinfer.writer._owner import current_owner
from safeinfer.writer._temps import temp_name
from stress.harness import (
    Commands,
    Ledger,
    Watcher,
    check_complete,
    expected_ids,
    storm_prompts,
    write_prompts,
)

#: Seconds a command may take here; a command that blocks on a FIFO hits it.
HOSTILE_TIMEOUT = 180.0
#: A pid above the kernel's limit (4194304 at most), so no live process has it.
DEAD_PID = 4_999_999


def _outside_tree(root: Path) -> dict[str, str]:
    """Map every entry below ``root`` to the SHA-256 of its bytes, or its kind."""
    found = {}
    for directory, names, files in os.walk(root):
        for name in [*names, *files]:
            path = Path(directory, name)
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISREG(info.st_mode):
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[key] = stat.filemode(info.st_mode)[0]
    return found


def _dead_temp_name(target: str) -> str:
    owner = dataclasses.replace(current_owner(), pid=DEAD_PID, start=1)
    return temp_name(target, owner, "0badc0de")


def _plant(out: Path, outside: Path, names: list[str]) -> dict[str, str]:
    """Plant hostile entries at the first item names; return what each one is."""
    (outside / "victim.png").write_bytes(b"precious data outside the output tree\n")
    (outside / "victim-dir").mkdir()
    (outside / "victim-dir" / "keep.txt").write_text("keep me\n")
    folder = out / Path(names[0]).parent
    folder.mkdir(parents=True)
    planted = {}
    os.symlink(outside / "victim.png", out / names[0])
    planted[names[0]] = "link to a file outside"
    os.symlink(outside / "victim-dir", out / names[1])
    planted[names[1]] = "link to a folder outside"
    os.mkfifo(out / names[2])
    planted[names[2]] = "FIFO"
    # Links named like temp files of a dead writer: the sweep removes them as stale.
    for index, target in enumerate(["victim.png", "victim-dir"]):
        link = folder / _dead_temp_name(f"planted-{index}.png")
        os.symlink(outside / target, link)
    return planted


def test_planted_links_and_fifo_are_replaced(
    tmp_path: Path, commands: Commands, model_args: tuple[str, ...], tally: Counter[str]
) -> None:
    prompts = write_prompts(tmp_path / "prompts.txt", storm_prompts(6))
    names = [item.name for item in make_items(read_prompts(prompts))]
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = _plant(out, outside, names)
    before = _outside_tree(outside)
    ledger = Ledger(tmp_path / "published")

    job = commands.generate(prompts, out, model=model_args)
    with Watcher(out, ledger):
        code, stdout, stderr = job.finish(HOSTILE_TIMEOUT)

    # A link to a folder at an item's name is rejected like a folder would be, with
    # an error that names it. Every other planted entry is replaced by the image.
    assert code == 1, stderr[-3000:]
    assert (
        f"failed {names[1][5:14]}: WriteError: cannot write {out / names[1]}: it is a directory"
        in stderr
    )
    assert (out / names[1]).is_symlink()
    for name in planted:
        if name != names[1]:
            assert stat.S_ISREG((out / name).lstat().st_mode), f"{name} is still {planted[name]}"
    code, _, stderr = commands.run(["clean", str(out)], timeout=HOSTILE_TIMEOUT)
    assert code == 0, stderr
    assert _outside_tree(outside) == before
    # The sweep removed the temp-named link to a file. The one to a folder is no file
    # that the writer could have made, so the sweep neither follows nor removes it.
    left = sorted(path.name for path in (out / "0000").glob(".*"))
    assert left == [_dead_temp_name("planted-1.png")]
    (out / "0000" / left[0]).unlink()

    (out / names[1]).unlink()
    job = commands.generate(prompts, out, model=model_args, resume=True)
    code, stdout, stderr = job.finish(HOSTILE_TIMEOUT)
    assert code == 0, stderr[-3000:]
    assert "1 images written" in stdout
    assert _outside_tree(outside) == before
    check_complete(out, expected_ids(prompts), ledger)
    tally["hostile entries planted"] += len(planted) + 2


def test_fifo_at_recorded_file_blocks_nothing(
    tmp_path: Path, commands: Commands, model_args: tuple[str, ...], tally: Counter[str]
) -> None:
    prompts = write_prompts(tmp_path / "prompts.txt", storm_prompts(4))
    out = tmp_path / "out"
    ledger = Ledger(tmp_path / "published")
    code, _, stderr = commands.run(
        ["generate", str(prompts), "--out", str(out), *model_args, "--steps", "2", "--no-progress"],
        timeout=HOSTILE_TIMEOUT,
    )
    assert code == 0, stderr[-3000:]
    victim = sorted(out.rglob("*.png"))[0]
    victim.unlink()
    os.mkfifo(victim)

    code, stdout, stderr = commands.run(["verify", "--manifest", str(out)], timeout=HOSTILE_TIMEOUT)
    # 2: a listed file could not be read, which is what a FIFO in its place means.
    assert code == 2, stdout + stderr
    assert f"{victim}: read-error" in stdout

    job = commands.generate(prompts, out, model=model_args, resume=True)
    code, stdout, stderr = job.finish(HOSTILE_TIMEOUT)
    assert code == 0, stderr[-3000:]
    assert "1 images written" in stdout
    assert stat.S_ISREG(victim.lstat().st_mode)
    check_complete(out, expected_ids(prompts), ledger)
    tally["hostile entries planted"] += 1


LOCK_SCRIPT = textwrap.dedent(
    """
    import sys
    from safeinfer.errors import LockError
    from safeinfer.locks import mutex

    lock_dir = sys.argv[1] if len(sys.argv) > 1 else None
    try:
        with mutex("gpu-0", lock_dir=lock_dir, timeout=5):
            print("acquired")
    except LockError as error:
        print(f"LockError: {error}")
    """
)


def _run_lock_script(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LOCK_SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_link_in_shared_lock_dir_is_rejected(tmp_path: Path, tally: Counter[str]) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    lock_dir.chmod(0o1777)
    victim = tmp_path / "victim.txt"
    victim.write_text("not a lock file\n")
    os.symlink(victim, lock_dir / "gpu-0.lock")

    output = _run_lock_script(str(lock_dir))

    assert output.startswith("LockError:"), output
    assert "symbolic link" in output
    assert victim.read_text() == "not a lock file\n"
    assert (lock_dir / "gpu-0.lock").is_symlink()
    tally["hostile entries planted"] += 1


def test_default_lock_dir_planted_as_link_is_rejected(tmp_path: Path, tally: Counter[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / f"safeinfer-locks-{os.getuid()}")
    env = {key: value for key, value in os.environ.items() if key != "SAFEINFER_LOCK_DIR"}
    env["TMPDIR"] = str(tmp_path)

    output = _run_lock_script(env=env)

    assert output.startswith("LockError:"), output
    assert list(elsewhere.iterdir()) == []
    tally["hostile entries planted"] += 1


@pytest.mark.stress
@pytest.mark.parametrize("round_", range(2))
def test_planted_entries_rounds(
    tmp_path: Path,
    commands: Commands,
    model_args: tuple[str, ...],
    tally: Counter[str],
    round_: int,
) -> None:
    test_planted_links_and_fifo_are_replaced(tmp_path, commands, model_args, tally)


def test_fifo_at_manifest_name_blocks_nothing(
    tmp_path: Path, commands: Commands, model_args: tuple[str, ...], tally: Counter[str]
) -> None:
    prompts = write_prompts(tmp_path / "prompts.txt", storm_prompts(2))
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "manifest-cpu0.jsonl")

    job = commands.generate(prompts, out, model=model_args)
    code, _, stderr = job.finish(HOSTILE_TIMEOUT)

    assert code == 1, stderr[-3000:]
    assert "manifest-cpu0.jsonl: it is not a regular file" in stderr
    assert stat.S_ISFIFO((out / "manifest-cpu0.jsonl").lstat().st_mode)
    tally["hostile entries planted"] += 1
