"""The launcher against real processes: a tiny HTTP server that records its environment."""

from __future__ import annotations

import http.server
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cog_predictors.client import free_port_range, free_ports

from safeinfer.errors import ConfigError, GpuBindingError, LaunchError
from safeinfer.launch import Health, Launcher, launch, parse_gpus, probe, run_launch

PYTHON = sys.executable
HEALTH_URL = "http://127.0.0.1:{port}/health"
#: Backoff short enough to keep restarts fast, long enough to observe.
FAST_BACKOFF = (0.05, 0.2)
#: Seconds any wait in these tests may take before it counts as a failure.
WAIT_TIMEOUT = 30.0

SERVER = """
import argparse, http.server, json, os, subprocess, sys

parser = argparse.ArgumentParser()
parser.add_argument("--dump", required=True)
parser.add_argument("--port", type=int)
parser.add_argument("--status", default="READY")
parser.add_argument("--exit", type=int)
parser.add_argument("--child", action="store_true")
parser.add_argument("--silent", action="store_true")
args, extra = parser.parse_known_args()

if args.exit is not None:
    print("failing on purpose", flush=True)
    sys.exit(args.exit)

child = None
if args.child:
    # A grandchild in the same process group, like Cog's model worker.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

record = {
    "pid": os.getpid(),
    "pgid": os.getpgid(0),
    "child_pid": child.pid if child else None,
    "argv": sys.argv[1:],
    "env": dict(os.environ),
}
name = f"worker-{os.environ['SAFEINFER_WORKER']}-{os.getpid()}.json"
temp = os.path.join(args.dump, "." + name)
with open(temp, "w") as file:
    json.dump(record, file)
os.replace(temp, os.path.join(args.dump, name))

if args.silent:
    import time
    time.sleep(600)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": args.status}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *log_args):
        pass

port = int(os.environ["PORT"])
print(f"serving on {port}", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture
def server(tmp_path: Path) -> Path:
    path = tmp_path / "server.py"
    path.write_text(SERVER)
    (tmp_path / "dumps").mkdir()
    return path


def server_command(server: Path, *extra: str) -> list[str]:
    return [PYTHON, str(server), "--dump", str(server.parent / "dumps"), *extra]


def records(dumps: Path) -> list[dict[str, object]]:
    return [json.loads(path.read_text()) for path in sorted(dumps.glob("worker-*.json"))]


def record_of(dumps: Path, pid: int) -> dict[str, object]:
    return json.loads(next(dumps.glob(f"worker-*-{pid}.json")).read_text())


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def is_gone(pid: int) -> bool:
    """Return True when ``pid`` no longer runs (a zombie reparented to init counts as gone)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] == "Z"


def live_group_members(pgid: int) -> list[int]:
    """List the processes of group ``pgid`` that still run (zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the command name: state, ppid, pgrp.
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


# -- environment and command --------------------------------------------------------------


def test_worker_environment_per_gpu(server: Path, tmp_path: Path) -> None:
    ports = free_ports(2)
    run_dir = tmp_path / "run"
    command = server_command(server, "--port", "{port}", "gpu={gpu}", "worker={worker}")
    with launch(
        command, gpus="3,5", ports=ports, run_dir=run_dir, health=HEALTH_URL, threads=2
    ) as launcher:
        pids = launcher.pids()
        found = {name: record_of(server.parent / "dumps", pid) for name, pid in pids.items()}  # type: ignore[arg-type]

    for index, gpu in enumerate(["3", "5"]):
        record = found[f"worker-{index}"]
        env = record["env"]
        assert isinstance(env, dict)
        assert env["CUDA_VISIBLE_DEVICES"] == gpu
        assert env["SAFEINFER_GPU"] == gpu
        assert env["SAFEINFER_WORKER"] == str(index)
        assert env["PORT"] == str(ports[index])
        assert env["OMP_NUM_THREADS"] == "2"
        assert env["TMPDIR"] == str(run_dir / f"worker-{index}" / "tmp")
        assert env["SAFEINFER_OUTPUT_DIR"] == str(run_dir / f"worker-{index}" / "outputs")
        assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(PYTHON)
        assert record["argv"][-4:] == [  # type: ignore[index]
            "--port",
            str(ports[index]),
            f"gpu={gpu}",
            f"worker={index}",
        ]


def test_worker_dirs_private_and_distinct(server: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    launcher = launch(server_command(server), workers=2, ports=free_ports(2), run_dir=run_dir)
    try:
        dirs = [
            directory
            for worker in launcher.workers
            for directory in (worker.tmp_dir, worker.output_dir)
        ]
        modes = [stat.S_IMODE(directory.stat().st_mode) for directory in dirs]
    finally:
        launcher.stop()

    assert len(set(dirs)) == 4
    assert modes == [0o700] * 4
    # A given run dir stays; what the servers left in it goes.
    assert run_dir.is_dir()
    assert not any(directory.exists() for directory in dirs)


def test_own_run_dir_removed_after_stop(server: Path) -> None:
    launcher = launch(server_command(server), workers=1, ports=free_ports(1))
    run_dir = launcher.run_dir
    assert run_dir.is_dir()
    launcher.stop()
    assert not run_dir.exists()


def test_cpu_workers_see_no_gpu(server: Path) -> None:
    with launch(
        server_command(server), workers=2, ports=free_ports(2), health=HEALTH_URL
    ) as launcher:
        pids = launcher.pids()
        envs = [record_of(server.parent / "dumps", pid)["env"] for pid in pids.values()]  # type: ignore[arg-type]
    for env in envs:
        assert isinstance(env, dict)
        assert env["CUDA_VISIBLE_DEVICES"] == ""
        assert env["SAFEINFER_GPU"] == "cpu"


def test_log_lines_prefixed(server: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "launch.log"
    with open(log_path, "w", buffering=1) as log:
        launcher = launch(
            server_command(server),
            workers=2,
            ports=free_ports(2),
            health=HEALTH_URL,
            log_stream=log,
        )
        launcher.stop()
    lines = log_path.read_text().splitlines()
    for index, port in enumerate(worker.port for worker in launcher.workers):
        assert f"[worker-{index}] serving on {port}" in lines, lines


# -- restarts and failures ----------------------------------------------------------------


def test_restart_after_sigkill(server: Path) -> None:
    with launch(
        server_command(server),
        workers=2,
        ports=free_ports(2),
        health=HEALTH_URL,
        backoff=FAST_BACKOFF,
    ) as launcher:
        before = launcher.pids()
        os.kill(before["worker-0"], signal.SIGKILL)  # type: ignore[arg-type]
        wait_for(
            lambda: launcher.pids()["worker-0"] not in (None, before["worker-0"]),
            "worker-0 to restart",
        )
        launcher.wait_ready(timeout=WAIT_TIMEOUT)
        after = launcher.pids()
        counts = launcher.restart_counts
        new_env = record_of(server.parent / "dumps", after["worker-0"])["env"]  # type: ignore[arg-type]

    assert counts == {"worker-0": 1, "worker-1": 0}
    assert after["worker-1"] == before["worker-1"]
    assert isinstance(new_env, dict)
    assert new_env["PORT"] == str(launcher.workers[0].port)
    assert is_gone(before["worker-0"])  # type: ignore[arg-type]


def test_run_returns_1_when_worker_keeps_failing(server: Path) -> None:
    launcher = Launcher(
        server_command(server, "--exit", "3"),
        workers=1,
        ports=free_ports(1),
        max_restarts=2,
        backoff=FAST_BACKOFF,
    )
    assert launcher.run() == 1
    assert launcher.restart_counts == {"worker-0": 2}
    assert launcher.failed == ["worker-0"]


def test_run_launch_returns_0_when_workers_finish(tmp_path: Path) -> None:
    code = run_launch([PYTHON, "-c", "pass"], workers=2, ports=free_ports(2))
    assert code == 0


def test_launch_raises_when_worker_keeps_failing(server: Path) -> None:
    with pytest.raises(LaunchError, match="worker-0") as caught:
        launch(
            server_command(server, "--exit", "3"),
            workers=1,
            ports=free_ports(1),
            health=HEALTH_URL,
            max_restarts=1,
            backoff=FAST_BACKOFF,
        )
    assert "exit code 3" in str(caught.value)


def test_failed_health_status_restarts(server: Path) -> None:
    launcher = Launcher(
        server_command(server, "--status", "SETUP_FAILED"),
        workers=1,
        ports=free_ports(1),
        health=HEALTH_URL,
        max_restarts=1,
        backoff=FAST_BACKOFF,
    )
    with pytest.raises(LaunchError):
        launcher.start(timeout=WAIT_TIMEOUT)
    assert launcher.restart_counts == {"worker-0": 1}
    assert launcher.failed == ["worker-0"]
    assert len(records(server.parent / "dumps")) == 2


def test_health_timeout_restarts(server: Path) -> None:
    launcher = Launcher(
        server_command(server, "--silent"),
        workers=1,
        ports=free_ports(1),
        health=HEALTH_URL,
        health_timeout=1.0,
        max_restarts=1,
        backoff=FAST_BACKOFF,
    )
    with pytest.raises(LaunchError):
        launcher.start(timeout=WAIT_TIMEOUT)
    assert launcher.restart_counts == {"worker-0": 1}
    for record in records(server.parent / "dumps"):
        assert is_gone(record["pid"])  # type: ignore[arg-type]


def test_ready_timeout_raises(server: Path) -> None:
    with pytest.raises(LaunchError, match="not ready within"):
        launch(
            server_command(server, "--silent"),
            workers=1,
            ports=free_ports(1),
            health=HEALTH_URL,
            timeout=1.0,
        )


def test_missing_executable_raises(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="no-such-server"):
        launch([str(tmp_path / "no-such-server")], workers=1, ports=free_ports(1))


# -- signals ------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_process(server: Path, tmp_path: Path, signum: int) -> None:
    base = free_port_range(2)
    log_path = tmp_path / "launch.log"
    command = [
        PYTHON,
        "-m",
        "safeinfer",
        "launch",
        "--workers",
        "2",
        "--base-port",
        str(base),
        "--health",
        HEALTH_URL,
        "--",
        *server_command(server, "--child"),
    ]
    dumps = server.parent / "dumps"
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(records(dumps)) == 2, "both workers to start")
        wait_for(
            lambda: log_path.read_text().count("is ready at") == 2, "the launcher's health checks"
        )
        found = records(dumps)
        launcher.send_signal(signum)
        code = launcher.wait(timeout=WAIT_TIMEOUT)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    log_text = log_path.read_text()

    assert code == 128 + signum, log_text
    # The command logs the stop without -v too.
    assert "sending SIGTERM" in log_text, log_text
    for record in found:
        for key in ("pid", "child_pid"):
            pid = record[key]
            assert isinstance(pid, int)
            wait_for(lambda pid=pid: is_gone(pid), f"{key} {pid} to exit")
        assert live_group_members(record["pgid"]) == [], log_text  # type: ignore[arg-type]


def test_cli_exits_1_when_worker_keeps_failing(server: Path) -> None:
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "safeinfer",
            "launch",
            "--workers",
            "1",
            "--base-port",
            str(free_ports(1)[0]),
            "--max-restarts",
            "1",
            "--",
            *server_command(server, "--exit", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT * 2,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "[worker-0] failing on purpose" in result.stderr


def test_cli_requires_command() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "safeinfer", "launch", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert "after '--'" in result.stderr


def test_cli_rejects_bad_health_url(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    options = ["--workers", "1", "--health", "notaurl", "--run-dir", str(tmp_path / "run")]
    result = subprocess.run(
        [PYTHON, "-m", "safeinfer", "launch", *options, "--", "touch", str(marker)],
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "safeinfer launch: error: invalid health URL 'notaurl': the scheme must be http"
    ), result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "template",
    ["http://127.0.0.1:{port}/health-check", "https://localhost/{worker}", "http://[::1]:{port}"],
)
def test_launcher_accepts_health_url(template: str, tmp_path: Path) -> None:
    launcher = Launcher([PYTHON, "-c", "pass"], workers=1, health=template, run_dir=tmp_path)
    assert launcher.health == template


# -- options ------------------------------------------------------------------------------


def test_parse_gpus_forms() -> None:
    assert parse_gpus("0,1") == ["0", "1"]
    assert parse_gpus([2, "3"]) == ["2", "3"]
    assert parse_gpus(" 4 , GPU-8f6e1a ") == ["4", "GPU-8f6e1a"]


@pytest.mark.parametrize("gpus", ["0,0", "0,,1", "one", "-1"])
def test_parse_gpus_rejects(gpus: str) -> None:
    with pytest.raises(ConfigError):
        parse_gpus(gpus)


def test_gpus_auto_takes_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")
    assert parse_gpus("auto") == ["2", "7"]


def test_gpus_auto_without_gpu_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(GpuBindingError, match="workers=N"):
        parse_gpus("auto")


@pytest.mark.parametrize(
    "options",
    [
        {"gpus": "0", "workers": 1},
        {},
        {"workers": 0},
        {"workers": 2, "ports": [5000]},
        {"workers": 1, "ports": [70000]},
        {"workers": 1, "threads": 0},
        {"workers": 1, "max_restarts": -1},
        {"workers": 1, "backoff": (2.0, 1.0)},
        {"workers": 1, "health_timeout": 0},
        {"workers": 1, "health_timeout": float("nan")},
        {"workers": 1, "stop_timeout": -1},
        {"workers": 1, "stop_timeout": float("nan")},
        {"workers": 1, "health": "notaurl"},
        {"workers": 1, "health": "ftp://127.0.0.1:{port}/"},
        {"workers": 1, "health": "http:///health-check"},
        {"workers": 1, "health": "http://127.0.0.1:99999/"},
        {"workers": 1, "health": "http://[::1/health-check"},
    ],
)
def test_launcher_rejects_options(
    options: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ConfigError):
        Launcher([PYTHON, "-c", "pass"], **options)  # type: ignore[arg-type]
    # The run dir made for the launcher is removed again.
    assert list(tmp_path.iterdir()) == []


def test_launcher_rejects_empty_command() -> None:
    with pytest.raises(ConfigError, match="no command"):
        Launcher([], workers=1)


# -- health probe -------------------------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[Callable[[int, bytes], str]]:
    """Serve a fixed status and body on 127.0.0.1; the fixture returns a setter."""
    response: dict[str, object] = {"code": 200, "body": b""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = response["body"]
            assert isinstance(body, bytes)
            self.send_response(response["code"])  # type: ignore[arg-type]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/health-check"

    def serve(code: int, body: bytes) -> str:
        response["code"] = code
        response["body"] = body
        return url

    yield serve
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("code", "body", "expected"),
    [
        (200, b"ok", Health.READY),
        (200, b"", Health.READY),
        (200, b'{"status": "READY", "setup": {"logs": "..."}}', Health.READY),
        (200, b'{"status": "BUSY"}', Health.READY),
        (200, b'{"status": "STARTING"}', Health.STARTING),
        (200, b'{"status": "SETUP_FAILED"}', Health.FAILED),
        (200, b'{"status": "DEFUNCT"}', Health.FAILED),
        (200, b'{"status": "READ', Health.STARTING),
        (200, b'{"healthy": true}', Health.READY),
        (503, b"starting", Health.STARTING),
    ],
)
def test_probe_reads_status(
    health_server: Callable[[int, bytes], str], code: int, body: bytes, expected: Health
) -> None:
    assert probe(health_server(code, body))[0] is expected


def test_probe_refused_connection() -> None:
    port = free_ports(1)[0]
    health, detail = probe(f"http://127.0.0.1:{port}/health-check")
    assert health is Health.STARTING
    assert "refused" in detail.lower()


def test_probe_ignores_proxy_settings(
    health_server: Callable[[int, bytes], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"http://127.0.0.1:{free_ports(1)[0]}"
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert probe(health_server(200, b'{"status": "READY"}'))[0] is Health.READY
