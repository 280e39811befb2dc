"""Health probes: one HTTP GET that checks whether a server is ready for requests."""

from __future__ import annotations

import enum
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Final

from safeinfer.errors import ConfigError

#: Seconds one probe waits. Probes run in the supervising loop, so they must be short.
PROBE_TIMEOUT: Final = 1.0
#: Largest health response read. Cog's includes the setup logs, which can be long.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
#: Cog's health-check statuses that mean the server takes predictions.
_SERVING_STATUSES: Final = frozenset({"READY", "BUSY"})
#: Cog's statuses after which the server will never become ready without a restart.
_FAILED_STATUSES: Final = frozenset({"SETUP_FAILED", "DEFUNCT"})


_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Health(enum.Enum):
    """Result of one probe."""

    READY = "ready"
    STARTING = "starting"  #: no answer yet, or an answer that is not ready
    FAILED = "failed"  #: the server reports a failure that a restart may fix


def check_health_url(url: str) -> None:
    """Raise ConfigError unless ``url`` is an http or https URL with a host and a valid port."""
    fix = "give a URL like http://127.0.0.1:{port}/health-check"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:  # an unclosed IPv6 bracket, a port out of range
        raise ConfigError(f"invalid health URL {url!r}: {error}; {fix}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"invalid health URL {url!r}: the scheme must be http or https; {fix}")
    if not parts.hostname:
        raise ConfigError(f"invalid health URL {url!r}: no host; {fix}")
    if port == 0:
        raise ConfigError(f"invalid health URL {url!r}: port 0; {fix}")


def probe(url: str, *, timeout: float = PROBE_TIMEOUT) -> tuple[Health, str]:
    """GET ``url`` once; return its health and a short description for logs.

    HTTP 200 means ready, unless the body is JSON with a ``status`` field: then Cog's
    ``READY`` and ``BUSY`` mean ready, ``SETUP_FAILED`` and ``DEFUNCT`` mean failed, and
    anything else (``STARTING``) means not yet. A body that starts like JSON but does not
    parse means not yet too. Proxy settings are ignored, because the servers are local.
    """
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            body = response.read(MAX_BODY_BYTES + 1)
            code = response.status
    except urllib.error.HTTPError as error:
        return Health.STARTING, f"HTTP {error.code}"
    except (OSError, ValueError) as error:
        # Connection refused or reset while the server starts, or a timeout.
        return Health.STARTING, str(getattr(error, "reason", error))
    if code != 200:
        return Health.STARTING, f"HTTP {code}"
    if not body.lstrip().startswith(b"{"):
        return Health.READY, "HTTP 200"
    if len(body) > MAX_BODY_BYTES:
        return Health.STARTING, f"health response over {MAX_BODY_BYTES} bytes"
    try:
        document = json.loads(body)
    except ValueError:
        return Health.STARTING, "invalid JSON in the health response"
    status = document.get("status") if isinstance(document, dict) else None
    if not isinstance(status, str):
        return Health.READY, "HTTP 200"
    if status.upper() in _SERVING_STATUSES:
        return Health.READY, status
    if status.upper() in _FAILED_STATUSES:
        return Health.FAILED, status
    return Health.STARTING, status
