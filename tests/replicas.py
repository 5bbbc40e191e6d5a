"""The daemon as real replicas for the client tests: `service-discovery serve` subprocesses on
fixed loopback ports (kept across restarts), and `sdctl` run as the console script.

Every process started here is stopped by its PID (`stop`, `kill`), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SDCTL = str(Path(sys.executable).with_name("sdctl"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_address() -> str:
    """An HTTP address where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class Replica:
    """One daemon process; `env` adds to (or overrides) the loopback settings."""

    database_url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Replica:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "BIND_ADDRESS": "127.0.0.1",
            "HTTP_PORT": str(self.http_port),
            "DNS_PORT": str(self.dns_port),
            "GRPC_PORT": str(self.grpc_port),
            "SHUTDOWN_DRAIN_SECONDS": "0",
            "SHUTDOWN_TIMEOUT_SECONDS": "5",
            "DB_TIMEOUT_SECONDS": "1",
            **self.env,
        }
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service_discovery", "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> Replica:
        """Poll /ready (blocking: call it through asyncio.to_thread when this process's event
        loop carries the replica's database traffic)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.base + "/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            assert time.monotonic() < deadline, f"replica not ready in {timeout}s"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the process (by its PID) and wait for it; SIGKILL if it does not exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@contextlib.contextmanager
def running(database_url: str, log: Path, **env: str) -> Iterator[Replica]:
    replica = Replica(database_url, log, env=env).start()
    try:
        replica.wait_ready()
        yield replica
    finally:
        replica.stop()


def http_json(url: str, method: str = "GET", token: str | None = None) -> tuple[int, object]:
    """A plain request for checking what the API itself answers."""
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
