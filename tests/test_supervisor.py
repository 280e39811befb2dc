"""The child supervisor, run against real processes."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from safeinfer._supervisor import (
    ChildHandle,
    ChildSpec,
    ExitEvent,
    Supervisor,
    popen_child,
    process_child,
)

PYTHON = sys.executable
#: Backoff short enough to keep the tests fast, long enough to observe.
FAST_BACKOFF = (0.05, 0.2)


def _python(code: str, **kwargs: object) -> Callable[[], ChildHandle]:
    def start() -> ChildHandle:
        return popen_child([PYTHON, "-c", code], **kwargs)  # type: ignore[arg-type]

    return start


def _poll_until(
    supervisor: Supervisor, condition: Callable[[], bool], timeout: float = 20.0
) -> list[ExitEvent]:
    events: list[ExitEvent] = []
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        events.extend(supervisor.poll())
        time.sleep(0.02)
    return events


def _is_gone(pid: int) -> bool:
    """Return True when ``pid`` no longer runs (a zombie reparented to init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _is_gone(pid):
            return True
        time.sleep(0.02)
    return False


def _read_pid(path: Path, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


def _exit_with(code: int) -> None:
    sys.exit(code)


def test_restart_after_sigkill() -> None:
    spec = ChildSpec("sleeper", _python("import time; time.sleep(60)"))
    with Supervisor([spec], backoff=FAST_BACKOFF) as supervisor:
        supervisor.start()
        first = supervisor.children["sleeper"]
        assert first is not None
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)

        events = _poll_until(supervisor, lambda: supervisor.restart_counts["sleeper"] == 1)

        second = supervisor.children["sleeper"]
        assert second is not None
        assert second.pid != first.pid
        assert second.poll() is None
        assert events[0].returncode == -signal.SIGKILL
        assert events[0].restart_in == FAST_BACKOFF[0]
        assert supervisor.failed == []


def test_backoff_doubles_up_to_maximum() -> None:
    starts: list[float] = []
    crash = _python("raise SystemExit(3)")

    def start() -> ChildHandle:
        starts.append(time.monotonic())
        return crash()

    supervisor = Supervisor(
        [ChildSpec("crasher", start)], max_restarts=4, backoff=(0.1, 0.3), stop_timeout=2
    )
    with supervisor:
        supervisor.start()
        events = _poll_until(supervisor, lambda: bool(supervisor.failed))

    delays = [event.restart_in for event in events]
    assert delays == [0.1, 0.2, 0.3, 0.3, None]
    assert len(starts) == 5
    for previous, current, delay in zip(starts, starts[1:], delays, strict=False):
        assert delay is not None
        assert current - previous >= delay


def test_gives_up_after_max_restarts() -> None:
    starts = 0
    crash = _python("raise SystemExit(3)")

    def start() -> ChildHandle:
        nonlocal starts
        starts += 1
        return crash()

    exits: list[tuple[str, int]] = []
    supervisor = Supervisor(
        [ChildSpec("crasher", start)],
        max_restarts=2,
        backoff=FAST_BACKOFF,
        on_exit=lambda spec, code: exits.append((spec.name, code)),
    )
    with supervisor:
        exit_code = supervisor.run(interval=0.02)

    assert exit_code == 1
    assert supervisor.failed == ["crasher"]
    assert supervisor.restart_counts == {"crasher": 2}
    assert starts == 3
    assert exits == [("crasher", 3)] * 3
    assert supervisor.returncodes == {"crasher": 3}


def test_exit_zero_is_not_restarted() -> None:
    supervisor = Supervisor([ChildSpec("once", _python("pass"))], backoff=FAST_BACKOFF)
    with supervisor:
        exit_code = supervisor.run(interval=0.02)

    assert exit_code == 0
    assert supervisor.restart_counts == {"once": 0}
    assert supervisor.failed == []


def test_no_restart_when_disabled() -> None:
    spec = ChildSpec("crasher", _python("raise SystemExit(5)"), restart=False)
    with Supervisor([spec], backoff=FAST_BACKOFF) as supervisor:
        exit_code = supervisor.run(interval=0.02)

    assert exit_code == 1
    assert supervisor.failed == ["crasher"]
    assert supervisor.restart_counts == {"crasher": 0}


def test_stop_kills_stubborn_group(tmp_path: Path) -> None:
    # The leader ignores SIGTERM and has a grandchild in its process group.
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(f'{{child.pid}}\\n')\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor([ChildSpec("stubborn", _python(code))], stop_timeout=0.5)
    supervisor.start()
    leader = supervisor.children["stubborn"]
    assert leader is not None
    assert leader.pid is not None
    grandchild = _read_pid(pid_file)

    supervisor.stop()

    assert supervisor.children == {"stubborn": None}
    assert supervisor.returncodes == {"stubborn": -signal.SIGKILL}
    assert _wait_gone(grandchild)
    with pytest.raises(ChildProcessError):
        os.waitpid(leader.pid, os.WNOHANG)


def test_stop_kills_leftover_group(tmp_path: Path) -> None:
    # The leader exits on SIGTERM but leaves a grandchild that ignores it.
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "grandchild = ('import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); '\n"
        "              'time.sleep(60)')\n"
        "child = subprocess.Popen([sys.executable, '-c', grandchild])\n"
        f"open({str(pid_file)!r}, 'w').write(f'{{child.pid}}\\n')\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor([ChildSpec("leaky", _python(code))], stop_timeout=5)
    supervisor.start()
    grandchild = _read_pid(pid_file)

    supervisor.stop()

    assert supervisor.returncodes == {"leaky": -signal.SIGTERM}
    assert _wait_gone(grandchild)


def test_log_lines_are_prefixed() -> None:
    log = io.StringIO()
    code = "import sys; print('first'); print('second', flush=True); print('oops', file=sys.stderr)"
    child = popen_child([PYTHON, "-c", code], log_prefix="web-0", log_stream=log)

    assert child.wait(20) == 0

    lines = sorted(log.getvalue().splitlines())
    assert lines == ["[web-0] first", "[web-0] oops", "[web-0] second"]


def test_process_child_restarted() -> None:
    context = multiprocessing.get_context("spawn")
    codes = iter([4, 0])

    def start() -> ChildHandle:
        process = context.Process(target=_exit_with, args=(next(codes),))
        process.start()
        return process_child(process)

    supervisor = Supervisor([ChildSpec("worker-0", start)], backoff=FAST_BACKOFF)
    with supervisor:
        exit_code = supervisor.run(interval=0.02)

    assert exit_code == 0
    assert supervisor.restart_counts == {"worker-0": 1}
    assert supervisor.returncodes == {"worker-0": 0}


def test_signal_stops_children() -> None:
    spec = ChildSpec("sleeper", _python("import time; time.sleep(60)"))
    supervisor = Supervisor([spec], stop_timeout=5)
    sent = False

    def send_once() -> bool:
        nonlocal sent
        if not sent:
            sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return False

    previous = signal.getsignal(signal.SIGTERM)
    with supervisor, supervisor.handle_signals():
        supervisor.start()
        child = supervisor.children["sleeper"]
        assert child is not None
        exit_code = supervisor.run(until=send_once, interval=0.02)

    assert exit_code == 128 + signal.SIGTERM
    assert supervisor.stop_requested == signal.SIGTERM
    assert supervisor.returncodes == {"sleeper": -signal.SIGTERM}
    assert supervisor.restart_counts == {"sleeper": 0}
    assert signal.getsignal(signal.SIGTERM) is previous


def test_duplicate_names_rejected() -> None:
    start = _python("pass")
    with pytest.raises(ValueError, match="repeated: a"):
        Supervisor([ChildSpec("a", start), ChildSpec("a", start)])
