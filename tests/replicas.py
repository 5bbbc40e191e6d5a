"""What the client tests share: replicas (helpers.Daemon on a given database), the path of the
`sdctl` console script, an address where nothing listens, and the API's own answer to compare
the client's with. Every process is stopped by its PID (helpers.Daemon.stop)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from helpers import Daemon, free_port

SDCTL = str(Path(sys.executable).with_name("sdctl"))


def replica(database_url: str, log: Path, **env: str) -> Daemon:
    """A daemon on `database_url`; DB_TIMEOUT_SECONDS 1, so an outage answers 503 quickly."""
    return Daemon(log, env={"DATABASE_URL": database_url, "DB_TIMEOUT_SECONDS": "1", **env})


def stopped(daemon: Daemon) -> int | None:
    """SIGTERM it and wait: its exit code (0 after a clean shutdown)."""
    daemon.stop()
    return daemon.proc.returncode if daemon.proc is not None else None


def closed_address() -> str:
    """An HTTP address where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


def http_json(url: str, method: str = "GET", token: str | None = None) -> tuple[int, object]:
    """A plain request, for checking what the API itself answers."""
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
