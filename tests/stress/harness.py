"""Run the real ``safeinfer`` commands as subprocesses and check the job's invariants.

Every job runs as ``python -m safeinfer generate`` in its own session, so the test can
find all of its processes (the parent, its workers, multiprocessing's resource tracker)
by session id, kill them together, and prove that none outlives the job. Output goes to
files rather than pipes, because a pipe that no one reads fills up and stalls the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from safeinfer.manifest import ManifestEntry, read_manifests
from safeinfer.png import verify_png

#: Denoising steps per image: the whole sampling loop runs, and an item takes a fraction
#: of a second on one CPU thread.
STEPS: Final = 2
#: Seconds any command of the suite may run before the test kills it and fails.
COMMAND_TIMEOUT: Final = 300.0
#: Seconds that the processes of a killed job get to exit on their own. Workers notice
#: a dead parent when their pipe closes, after the batch they are making.
ORPHAN_TIMEOUT: Final = 90.0
#: Seconds that a finished command's leftover processes get to exit before they count.
LEFTOVER_GRACE: Final = 15.0
#: Seconds between two looks of the watcher at the output tree while a job runs.
WATCH_INTERVAL: Final = 0.2

#: Job options every test passes: one thread per worker keeps the images identical
#: between attempts, so a file made twice has the same bytes.
BASE_OPTIONS: Final = ("--steps", str(STEPS), "--threads-per-worker", "1", "--no-progress")


# -- processes ---------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int, int, int] | None:
    """Return (state, ppid, pgrp, session, start time) of ``pid``, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in brackets may contain spaces and ')'; fields follow the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])


def all_pids() -> list[int]:
    """Return the pids of every process visible in /proc."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def session_members(session: int) -> list[int]:
    """Return the live (not zombie) processes of ``session``."""
    members = []
    for pid in all_pids():
        info = proc_stat(pid)
        if info is not None and info[3] == session and info[0] != "Z":
            members.append(pid)
    return sorted(members)


def is_running(pid: int, start: int) -> bool:
    """Tell whether the process ``pid`` that started at ``start`` still runs (not a zombie)."""
    info = proc_stat(pid)
    return info is not None and info[4] == start and info[0] != "Z"


def descendants(root: int) -> list[int]:
    """Return every live descendant of ``root``, children first."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        info = proc_stat(pid)
        if info is not None and info[0] != "Z":
            children.setdefault(info[1], []).append(pid)
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_session_gone(session: int, timeout: float = ORPHAN_TIMEOUT) -> list[int]:
    """Wait for every process of ``session`` to exit; return those still running after it."""
    wait_until(lambda: not session_members(session), timeout, interval=0.2)
    return session_members(session)


def worker_pids(parent: int) -> list[int]:
    """Return the pids of the generate job's worker processes (spawned children of ``parent``)."""
    workers = []
    for pid in descendants(parent):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"spawn_main" in command:
            workers.append(pid)
    return workers


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` unless it is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# -- running commands --------------------------------------------------------------------


@dataclass
class Command:
    """A ``python -m safeinfer`` subprocess in its own session, with its output in files."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    copiers: list[threading.Thread] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> tuple[str, str]:
        """Return what the command wrote to stdout and stderr so far."""
        if self.process.poll() is not None:
            for copier in self.copiers:
                copier.join()
        return (
            self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"),
        )

    def finish(self, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
        """Wait for the command; kill its session and fail the test if it takes too long."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_session()
            self.process.wait()
            _, stderr = self.output()
            raise AssertionError(
                f"command did not finish within {timeout:.0f} s: {self.process.args}\n"
                f"stderr:\n{stderr[-4000:]}"
            ) from None
        stdout, stderr = self.output()
        return code, stdout, stderr

    def kill_session(self) -> None:
        """SIGKILL every process of the command's session (its process group)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in session_members(self.process.pid):
            kill_quietly(pid)


def _copy_to_file(stream: IO[bytes], path: Path) -> None:
    with stream, open(path, "wb") as file:
        shutil.copyfileobj(stream, file)


class Commands:
    """Start commands and kill whatever is left of them when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Command] = []

    def start(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        through_pipes: bool = False,
    ) -> Command:
        """Start ``python -m safeinfer ARGS`` in a new session.

        ``through_pipes`` sends the output through pipes that this process copies to
        the log files, for a command whose own file writes are limited (RLIMIT_FSIZE).
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        number = len(self.started)
        stdout_path = self.log_dir / f"command-{number}.out"
        stderr_path = self.log_dir / f"command-{number}.err"
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "safeinfer", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if through_pipes else stdout,
                stderr=subprocess.PIPE if through_pipes else stderr,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=preexec_fn,
            )
        command = Command(process, stdout_path, stderr_path)
        if through_pipes:
            assert process.stdout is not None
            assert process.stderr is not None
            for stream, path in ((process.stdout, stdout_path), (process.stderr, stderr_path)):
                copier = threading.Thread(target=_copy_to_file, args=(stream, path), daemon=True)
                copier.start()
                command.copiers.append(copier)
        self.started.append(command)
        return command

    def run(
        self, args: Sequence[str], timeout: float = COMMAND_TIMEOUT, **kwargs: Any
    ) -> tuple[int, str, str]:
        """Run a command to its end; return its exit code, stdout and stderr."""
        return self.start(args, **kwargs).finish(timeout)

    def generate(
        self,
        prompts: Path,
        out: Path,
        *options: str,
        model: Sequence[str] = (),
        workers: int = 1,
        resume: bool = False,
        **kwargs: Any,
    ) -> Command:
        """Start ``safeinfer generate`` on ``prompts`` into ``out`` with the suite's options."""
        args = ["generate", str(prompts), "--out", str(out), *model, *BASE_OPTIONS]
        args += ["--workers", str(workers), *options]
        if resume:
            args.append("--resume")
        return self.start(args, **kwargs)

    def cleanup(self) -> list[int]:
        """Kill every session still running; return the pids that were found alive."""
        leftovers = []
        for command in self.started:
            if command.process.poll() is None:
                leftovers.append(command.pid)
            # Helpers such as multiprocessing's resource tracker exit just after the
            # command; only what is still there after a grace period counts.
            members = wait_session_gone(command.pid, timeout=LEFTOVER_GRACE)
            leftovers.extend(members)
            command.kill_session()
            with contextlib.suppress(subprocess.TimeoutExpired):
                command.process.wait(timeout=10)
        return leftovers


# -- prompt files and items --------------------------------------------------------------


def write_prompts(path: Path, prompts: Sequence[str]) -> Path:
    """Write ``prompts`` one per line and return the path."""
    path.write_text("".join(f"{prompt}\n" for prompt in prompts), encoding="utf-8")
    return path


def expected_ids(prompts: Path) -> list[str]:
    """Return the item ids the job makes from ``prompts``, by the job's own rules."""
    from safeinfer.jobs import make_items, read_prompts

    return [item.id for item in make_items(read_prompts(prompts))]


def storm_prompts(count: int) -> list[str]:
    """Return ``count`` prompts that both embedded models accept: the digits model
    takes exactly one digit per prompt."""
    return [f"digit {index % 10}" for index in range(count)]


# -- the output tree ---------------------------------------------------------------------


def published_files(root: Path) -> list[Path]:
    """Return every published PNG below ``root``: temp files start with a dot."""
    if not root.is_dir():
        return []
    return sorted(path for path in root.rglob("*.png") if not path.name.startswith("."))


def temp_files(root: Path) -> list[Path]:
    """Return every hidden entry below ``root``: the writer's temp files and probe files."""
    if not root.is_dir():
        return []
    return sorted(path for path in root.rglob(".*"))


def tree_snapshot(root: Path, *, skip: Sequence[Path] = ()) -> set[str]:
    """Return the relative paths of every entry below ``root``, links not followed."""
    skipped = {path.resolve() for path in skip}
    entries = set()
    for directory, names, files in os.walk(root):
        here = Path(directory)
        names[:] = [name for name in names if (here / name).resolve() not in skipped]
        for name in [*names, *files]:
            entries.add(str((here / name).relative_to(root)))
    return entries


def read_regular(path: Path) -> bytes | None:
    """Return the bytes of ``path`` if it is a regular file; None for a FIFO, link or folder.

    The file is opened without following links and without blocking, so a planted FIFO
    or link cannot stall or redirect the test itself.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return file.read()


def sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@dataclass
class Ledger:
    """What the job recorded and published over many runs, to prove that nothing is lost.

    ``recorded`` maps each item to the (path, sha256) of its first manifest line;
    ``archive`` keeps one copy of every distinct published file, for the verifier.
    """

    archive: Path
    recorded: dict[str, tuple[str, str]] = field(default_factory=dict)
    published: set[str] = field(default_factory=set)
    partial: list[str] = field(default_factory=list)

    def keep(self, path: Path, data: bytes) -> None:
        """Archive a published file once per distinct content; note it if it is not valid."""
        digest = hashlib.sha256(data).hexdigest()
        if digest in self.published:
            return
        self.published.add(digest)
        self.archive.mkdir(parents=True, exist_ok=True)
        (self.archive / f"{digest}.png").write_bytes(data)
        report = verify_png(data)
        if not report.ok:
            self.partial.append(f"{path}: {report.summary()}")

    def lost(self, root: Path) -> list[str]:
        """Return the recorded items whose file is now missing or differs from its record."""
        lost = []
        for item, (relative, digest) in sorted(self.recorded.items()):
            path = root / relative
            if not path.is_file() or sha256_of(path) != digest:
                lost.append(f"{item} ({relative})")
        return lost


class Watcher:
    """Read every newly published file while a job runs, as a consumer of the tree would."""

    def __init__(self, root: Path, ledger: Ledger) -> None:
        self._root = root
        self._ledger = ledger
        self._seen: set[tuple[str, int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stress-watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.look()

    def _loop(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            self.look()

    def look(self) -> None:
        for path in published_files(self._root):
            try:
                info = path.stat()
                key = (str(path), info.st_ino, info.st_mtime_ns)
            except OSError:
                continue  # replaced or removed between the listing and the stat
            if key in self._seen:
                continue
            data = read_regular(path)
            if data is None:
                continue  # not a regular file (yet): a planted entry, or gone
            self._seen.add(key)
            self._ledger.keep(path, data)


def check_at_rest(
    root: Path, ledger: Ledger, *, repeats: bool = False, missing: int = 0
) -> list[ManifestEntry]:
    """Check the tree after a run ended, however it ended; update ``ledger``.

    Every manifest line names a file of the recorded size and SHA-256, no item is
    recorded twice, and every published file, recorded or not, is a valid PNG. After
    files were deleted under a running job, ``repeats`` allows an item's second line
    when it names the same file and SHA-256, and ``missing`` lines may name a file that
    is gone. Returns the lines whose file is present.
    """
    entries = read_manifests(root) if root.is_dir() else []
    by_item: dict[str, set[tuple[str, str]]] = {}
    for entry in entries:
        by_item.setdefault(str(entry.fields["item"]), set()).add((entry.path, entry.sha256))
    counts = Counter(str(entry.fields["item"]) for entry in entries)
    duplicated = sorted(
        item
        for item, count in counts.items()
        if count > 1 and (not repeats or len(by_item[item]) > 1)
    )
    assert duplicated == [], f"items recorded twice: {duplicated}"
    gone = [entry for entry in entries if not entry.absolute_path.is_file()]
    assert len(gone) <= missing, f"recorded files missing: {[entry.path for entry in gone]}"
    entries = [entry for entry in entries if entry not in gone]
    for entry in entries:
        path = entry.absolute_path
        data = path.read_bytes()
        assert len(data) == entry.bytes, f"recorded size differs: {entry.path}"
        digest = hashlib.sha256(data).hexdigest()
        assert digest == entry.sha256, f"recorded SHA-256 differs: {entry.path}"
        ledger.recorded.setdefault(str(entry.fields["item"]), (entry.path, entry.sha256))
    for path in published_files(root):
        data = read_regular(path)
        assert data is not None, f"a published name is not a regular file: {path}"
        ledger.keep(path, data)
    assert ledger.partial == [], f"invalid files were published: {ledger.partial}"
    return entries


def check_complete(
    root: Path, ids: Sequence[str], ledger: Ledger, *, repeats: bool = False
) -> None:
    """Check a finished job after ``safeinfer clean``: one valid, recorded file per item."""
    entries = check_at_rest(root, ledger, repeats=repeats)
    recorded_ids = sorted({str(entry.fields["item"]) for entry in entries})
    if not repeats:
        assert len(entries) == len(recorded_ids), "items recorded twice"
    assert recorded_ids == sorted(ids), "the manifests do not list every item exactly once"
    recorded = {entry.absolute_path.resolve() for entry in entries}
    on_disk = {path.resolve() for path in published_files(root)}
    assert sorted(on_disk - recorded) == [], "published files missing from the manifests"
    assert sorted(recorded - on_disk) == [], "recorded files missing from the tree"
    assert temp_files(root) == [], "temp files left after safeinfer clean"
    assert ledger.lost(root) == [], "recorded files were lost"
