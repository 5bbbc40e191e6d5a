"""Shared bench plumbing: a scratch database and its bulk load, the daemon as a pinned
subprocess, free ports.

Loopback only; every process started here is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# The per-client DNS limits, switched off: a bench measures the daemon, not its defences, unless
# it measures those (bench/abuse.py passes its own settings over these). Loopback load
# generators are one client each and would otherwise be measured against their budget.
LIMITS_OFF = {
    "DNS_MISS_BUDGET_PER_SECOND": "0",
    "DNS_TCP_MAX_CONNECTIONS_PER_CLIENT": "0",
    "DNS_RRL_RESPONSES_PER_SECOND": "0",
}
# Settings a bench sets for its own plumbing, not worth a line of its report.
_PLUMBING = {"database_url", "bind_address", "http_port", "dns_port", "grpc_port", "logger_level"}


def settings_line(env: dict[str, str]) -> str:
    """The settings a daemon with this environment runs with, as far as they differ from the
    defaults (ports and the database left out): what a bench prints with its figures."""
    import dataclasses

    from service_discovery.config import Config

    config, default = Config.from_env(env), Config()
    changed = [
        f"{f.metadata['env']}={'***' if f.metadata['secret'] else getattr(config, f.name)}"
        for f in dataclasses.fields(Config)
        if f.name not in _PLUMBING and getattr(config, f.name) != getattr(default, f.name)
    ]
    return "settings: defaults, except " + (", ".join(changed) if changed else "none")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(base: str, name: str) -> float:
    """An unlabelled sample from the daemon's /metrics at `base` (0 when absent)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def register_many(base: str, targets: list[tuple[str, str]], timeout: float = 600) -> float:
    """Registrations per second: 50 concurrent keep-alive clients registering each (service,
    ip) of `targets` once."""
    import asyncio

    import aiohttp

    queue = iter(targets)

    async def client(session: aiohttp.ClientSession) -> None:
        for service, ip in queue:
            async with session.put(f"/service/{service}/register", json={"ip": ip}) as r:
                assert r.status == 200, await r.text()

    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(base_url=base, connector=connector) as session:
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(session) for _ in range(50))), timeout)
        return len(targets) / (time.perf_counter() - started)


def pin(core: int) -> None:
    """Run this process on one core (load generators stay off the server's core)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > core:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {core})


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def ensure_apt(*packages: str) -> None:
    """Install Debian packages that are missing (the benches use standard tools)."""
    missing = [p for p in packages if not shutil.which(p.split(":")[-1])]
    if missing:
        names = [p.split(":")[0] for p in missing]
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *names], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A fresh migrated database on DATABASE_URL's server (default local 5432), dropped after."""
    import psycopg2

    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"sd_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server)._replace(path="/" + name))
    try:
        from service_discovery import migrate

        migrate.apply(url)
        yield url
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class Daemon:
    """`service-discovery serve` as a subprocess, optionally pinned to one core."""

    def __init__(
        self, database_url: str, core: int | None = None, script: Path | None = None, **env: str
    ) -> None:
        """`script`: a Python file to run instead of `serve` (bench/dns/serve.py, whose
        signals switch the answer cache off); its stdout is discarded."""
        self.http_port = free_port()
        self.dns_port = free_port()
        self.grpc_port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "BIND_ADDRESS": "127.0.0.1",
            "HTTP_PORT": str(self.http_port),
            "DNS_PORT": str(self.dns_port),
            "GRPC_PORT": str(self.grpc_port),
            "SHUTDOWN_DRAIN_SECONDS": "0",
            "LOGGER_LEVEL": "warning",
            **LIMITS_OFF,
            **env,
        }
        cmd = [PY, str(script)] if script else [PY, "-m", "service_discovery", "serve"]
        if core is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(core), *cmd]
        out = subprocess.DEVNULL if script else None
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=out)
        self.base = f"http://127.0.0.1:{self.http_port}"

    def settings(self) -> str:
        """The line to print with a bench's figures: the settings this daemon runs with."""
        return settings_line(self.env)

    def wait_ready(self, timeout: float = 120) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited")
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("daemon not ready in time")

    def _status_mib(self, field: str) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def peak_rss_mib(self) -> float:
        return self._status_mib("VmHWM")

    def rss_mib(self) -> float:
        return self._status_mib("VmRSS")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bulk_load(url: str, services: int, per_service: int) -> float:
    """Bulk-load `services` services with 2 named ports and `per_service` endpoints each; the
    seconds it took. Service v has version v, as if created by the v-th sd_bump; its endpoints
    are 10.0.0.0 + (v - 1) * per_service + j (bench/scale_fleet.py's address plan)."""
    started = time.perf_counter()
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute(
            """INSERT INTO services (name, version)
               SELECT 'svc-' || i, i FROM generate_series(1, %s) AS i""",
            (services,),
        )
        cur.execute(
            """INSERT INTO named_ports (service_id, name, protocol, port)
               SELECT s.id, p.name, 'tcp', p.port FROM services s,
                      (VALUES ('http', 8080), ('grpc', 9090)) AS p(name, port)"""
        )
        cur.execute(
            """INSERT INTO endpoints (service_id, ip)
               SELECT s.id, '10.0.0.0'::inet + ((s.version - 1) * %(p)s + j - 1)
               FROM services s, generate_series(1, %(p)s) AS j ORDER BY s.id""",
            {"p": per_service},
        )
        cur.execute("UPDATE registry_state SET version = %s", (services,))
    conn.close()
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True  # VACUUM runs outside a transaction block
        # now, rather than an autovacuum worker in the middle of a measurement
        conn.cursor().execute("VACUUM ANALYZE")
    finally:
        conn.close()
    return time.perf_counter() - started
