"""Fixtures of the crash, fault and abuse suite, and the summary of its figures.

Each scenario has a short version that runs in the normal test session and a long one
marked ``stress`` (``nox -s stress``). The tests count what they do (kills, faults,
hostile inputs, files checked) in :data:`TALLY`. When ``SAFEINFER_STRESS_SUMMARY``
names a file, the session writes the counts there as JSON at its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from stress.harness import Commands

#: Environment variable naming the JSON file that receives the session's figures.
SUMMARY_ENV: Final = "SAFEINFER_STRESS_SUMMARY"
#: Environment variable that picks the model of every job (default: generate's own).
MODEL_ENV: Final = "SAFEINFER_STRESS_MODEL"

#: What the suite did in this session, by kind: kills, faults, inputs, files checked.
TALLY: Counter[str] = Counter()
_OUTCOMES: Counter[str] = Counter()
_STARTED = time.time()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/stress/" not in report.nodeid.replace(os.sep, "/"):
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        _OUTCOMES[outcome] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(SUMMARY_ENV)
    if not target or not _OUTCOMES:
        return
    summary = {
        "command": " ".join(sys.argv),
        "markexpr": session.config.option.markexpr,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_STARTED)),
        "seconds": round(time.time() - _STARTED, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, Linux {platform.release()}",
        "tests": dict(_OUTCOMES),
        "exit_status": int(exitstatus),
        "counts": dict(sorted(TALLY.items())),
    }
    Path(target).write_text(json.dumps(summary, indent=2) + "\n")


@pytest.fixture
def tally() -> Counter[str]:
    """The session's counters; add to them what the test did."""
    return TALLY


@pytest.fixture(scope="session")
def model_args() -> tuple[str, ...]:
    """Return the ``--model`` option of every job: none, so generate's default is used.

    ``SAFEINFER_STRESS_MODEL`` overrides it. When the default embedded model is not
    installed (its folder lacks ``model_index.json``), the suite falls back to tiny-sd.
    """
    chosen = os.environ.get(MODEL_ENV)
    if chosen:
        return ("--model", chosen)
    from safeinfer.tiny import DEFAULT_MODEL, model_path

    if (model_path(DEFAULT_MODEL) / "model_index.json").is_file():
        return ()
    # NOTE: the fallback keeps the suite running while the default model is rebuilt.
    return ("--model", "tiny-sd")


@pytest.fixture
def commands(tmp_path: Path) -> Iterator[Commands]:
    """Start ``safeinfer`` commands; at the end, kill what is left and fail if anything was."""
    runner = Commands(tmp_path / "logs")
    yield runner
    leftovers = runner.cleanup()
    assert leftovers == [], f"processes still running after the test: {leftovers}"


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (for example "1m") at ``path``; unmount it afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield path
    finally:
        # Lazy unmount: a process that a failed test left behind must not keep it busy.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def can_mount() -> bool:
    """Tell whether this process may mount a tmpfs (root with CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return False
    probe = Path(f"/tmp/safeinfer-stress-probe-{os.getpid()}")
    try:
        with tmpfs(probe, "64k"):
            return True
    except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired):
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


@pytest.fixture(scope="session")
def mount_allowed() -> bool:
    """Whether the tests may mount file systems here."""
    return can_mount()
