"""A bounded load client for real Cog servers, and the check of every returned image."""

from __future__ import annotations

import base64
import collections
import http.client
import io
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cog_predictors.pattern import request_image
from PIL import Image

from safeinfer.png import verify_png

#: Times one request is sent again after HTTP 409 ("at capacity") before it counts as failed.
MAX_CONFLICT_RETRIES = 200
#: Seconds between two tries after a 409.
CONFLICT_DELAY = 0.005
#: Seconds one HTTP request may take.
REQUEST_TIMEOUT = 60.0
#: Seconds a server gets to become ready.
READY_TIMEOUT = 60.0

#: Outcome names, in the order a summary lists them.
OUTCOMES = ("ok", "null", "corrupt", "wrong", "failed")


@dataclass
class Tally:
    """Outcomes of a load run, with one example per kind of failure."""

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    conflicts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: str, detail: str) -> None:
        with self.lock:
            self.counts[outcome] += 1
            if outcome != "ok":
                self.examples.setdefault(outcome, detail)

    @property
    def bad(self) -> int:
        return sum(count for outcome, count in self.counts.items() if outcome != "ok")

    def summary(self) -> str:
        parts = [f"{outcome}={self.counts[outcome]}" for outcome in OUTCOMES]
        parts.append(f"409 retries={self.conflicts}")
        return ", ".join(parts) + "".join(
            f"\n  first {outcome}: {detail}" for outcome, detail in self.examples.items()
        )


def free_ports(count: int) -> list[int]:
    """Return ``count`` ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_range(count: int) -> int:
    """Return a port ``p`` such that ``p`` to ``p + count - 1`` were all free a moment ago."""
    for _ in range(100):
        base = free_ports(1)[0]
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise RuntimeError(f"found no {count} consecutive free ports on 127.0.0.1")


def predict(base_url: str, inputs: dict[str, Any], tally: Tally) -> dict[str, Any]:
    """POST one prediction; retry a bounded number of times while the server answers 409."""
    parsed = urllib.parse.urlsplit(base_url)
    body = json.dumps({"input": inputs})
    for _ in range(MAX_CONFLICT_RETRIES + 1):
        connection = http.client.HTTPConnection(
            parsed.hostname, parsed.port, timeout=REQUEST_TIMEOUT
        )
        try:
            connection.request("POST", "/predictions", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        if response.status != 409:
            document: dict[str, Any] = json.loads(payload)
            document["http_status"] = response.status
            return document
        with tally.lock:
            tally.conflicts += 1
        time.sleep(CONFLICT_DELAY)
    return {"http_status": 409, "status": "failed", "error": "409 retries used up"}


def decode_data_url(output: str) -> tuple[str, bytes]:
    """Split a ``data:`` URL into its MIME type and bytes."""
    header, _, encoded = output.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise ValueError(f"not a base64 data URL: {output[:60]!r}")
    return header[len("data:") : -len(";base64")], base64.b64decode(encoded)


def classify_image(document: dict[str, Any], request_id: int) -> tuple[str, str]:
    """Check a prediction whose output should be ``request_image(request_id)`` as PNG."""
    where = f"request {request_id}"
    if document.get("status") != "succeeded":
        return "failed", f"{where}: status {document.get('status')!r}: {document.get('error')}"
    output = document.get("output")
    if output is None:
        return "null", f"{where}: succeeded with a null output"
    mime, data = decode_data_url(output)
    if mime != "image/png":
        return "corrupt", f"{where}: MIME type {mime!r}"
    report = verify_png(data, level="full")
    if not report.ok:
        return "corrupt", f"{where}: {report.summary()}"
    try:
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except OSError as error:
        return "corrupt", f"{where}: Pillow cannot decode it: {error}"
    expected = request_image(request_id)
    if pixels.shape != expected.shape or not np.array_equal(pixels, expected):
        first = pixels[0, 0].tolist() if pixels.ndim == 3 else "?"
        return "wrong", f"{where}: got another image (first pixel {first})"
    return "ok", where


def run_load(
    urls: Sequence[str],
    *,
    requests: int,
    first_id: int = 1,
    clients_per_server: int = 1,
    inputs: Callable[[int], dict[str, Any]] = lambda request_id: {"request_id": request_id},
    on_response: Callable[[], None] | None = None,
) -> Tally:
    """Send ``requests`` predictions spread over ``urls``, checking every returned image.

    Request ids run from ``first_id``; ``inputs`` turns an id into the prediction input.

    Each server gets ``clients_per_server`` threads, each with one request in flight.
    """
    tally = Tally()
    threads = []
    client_count = len(urls) * clients_per_server
    for client in range(client_count):
        url = urls[client % len(urls)]
        ids = range(first_id + client, first_id + requests, client_count)

        def send(url: str = url, ids: range = ids) -> None:
            for request_id in ids:
                try:
                    document = predict(url, inputs(request_id), tally)
                    outcome, detail = classify_image(document, request_id)
                except (OSError, ValueError) as error:
                    outcome, detail = "failed", f"request {request_id}: {error!r}"
                tally.add(outcome, detail)
                if on_response is not None:
                    on_response()

        threads.append(threading.Thread(target=send, name=f"client-{client}"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


def log_tail(path: Path, lines: int = 80) -> str:
    """Return the last ``lines`` lines of a server log, for assertion messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(no server log: {error})"
    return "\n".join(text.splitlines()[-lines:])
