"""What several test modules need, written once: free loopback ports, the daemon as a
subprocess, a PUT as the design's clients send it, polling until something holds, and metric
values read through prometheus_client's public API."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service_discovery.metrics import Metrics


# ---- ports and HTTP --------------------------------------------------------------------------
def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (DNS listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of a GET (errors included), None when nothing answers: a kubelet's probe."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


async def put(
    http: aiohttp.ClientSession, path: str, body: object = None
) -> aiohttp.ClientResponse:
    """PUT as the design's clients do (`curl -d`: a JSON text, no JSON content type); bytes and
    str go as they are, None sends no body. The answer comes back read, so `.status`, `.json()`
    and `.text()` work after its connection is back in the pool."""
    data = body if body is None or isinstance(body, bytes | str) else json.dumps(body)
    resp = await http.put(path, data=data)
    await resp.read()
    return resp


async def put_ok(http: aiohttp.ClientSession, path: str, body: object = None) -> Any:
    """`put` that must succeed (200 or 201); the answer's JSON."""
    resp = await put(http, path, body)
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()


# ---- DNS -------------------------------------------------------------------------------------
ZONE = "svc.cluster.local"


async def dns_a(port: int, name: str, *, tcp: bool = False, timeout: float = 2.0) -> list[str]:
    """The A records of `<name>.<zone>` (raises on timeout; asserts NOERROR)."""
    q = dns.message.make_query(f"{name}.{ZONE}", "A")
    if not tcp:
        resp = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=timeout)
        tcp = bool(resp.flags & dns.flags.TC)  # too many records for UDP: retry as stubs do
    if tcp:
        resp = await dns.asyncquery.tcp(q, "127.0.0.1", port=port, timeout=timeout)
    assert resp.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(resp.rcode())
    return sorted(rr.address for rrset in resp.answer for rr in rrset)


# ---- waiting ---------------------------------------------------------------------------------
async def eventually(
    check: Callable[[], object],
    timeout: float = 5.0,
    what: str = "condition",
    interval: float = 0.02,
) -> float:
    """Poll `check` (plain or async) until it returns something true; the seconds it took.

    A guard, not a measurement: `timeout` is set far above the time the thing should take and
    only fails a test where it never happens. How fast it happens is a bench's question."""
    started = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"not within {timeout}s: {what}"
        await asyncio.sleep(interval)


# Wall-clock budgets ("a refused write answers within 2 x DB_TIMEOUT_SECONDS + 1 s") measure the
# machine as much as the code, and fail a correct daemon on a loaded one. A scenario that states
# budgets takes a `budgets` argument from this mark: the default suite runs it for its behaviour
# (budgets False), `make slow` runs it again with its budgets checked. Pure speed (CPU, latency)
# belongs in bench/ instead.
with_budgets = pytest.mark.parametrize(
    "budgets",
    [pytest.param(False, id="behaviour"), pytest.param(True, id="budgets", marks=pytest.mark.slow)],
)


# ---- metrics ---------------------------------------------------------------------------------
def prometheus(metrics: Metrics) -> CollectorRegistry:
    """The CollectorRegistry a Metrics object exports (the one line to change if it moves)."""
    return metrics.collector_registry


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The current value of one sample, e.g. `sample(m, "sd_grpc_calls_total", method="Watch",
    code="OK")`, 0 for a labelled child not created yet. Front-ends that count in plain
    integers on their hot path are flushed first, as a scrape does."""
    for flush in metrics.before_render:
        flush()
    registry = prometheus(metrics)
    value = registry.get_sample_value(name, labels)
    if value is not None:
        return value
    families = {family.name for family in registry.collect()}
    assert any(name == f or name.startswith(f + "_") for f in families), f"no metric {name}"
    return 0.0


async def scrape(http: aiohttp.ClientSession, name: str, **labels: str) -> float:
    """One sample's value as GET /metrics shows it: for a daemon in another process, or where the
    exposition itself is under test."""
    async with http.get("/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"{name} {labels or ''} not in /metrics")


# ---- the daemon as a subprocess ----------------------------------------------------------------
SERVE = (sys.executable, "-m", "service_discovery", "serve")


@dataclass
class Daemon:
    """`service-discovery serve` as a subprocess on loopback ports of its own (kept across
    restarts), its output appended to `log`; stopped by its PID.

    The process gets this environment, then quick-shutdown defaults, its address and ports, and
    `env` over all of it (a None value removes a variable: `{"DATABASE_URL": None}` runs on the
    embedded server). With `inherit=False` it gets only `env` and its ports, as a kubelet gives
    a container only what the Pod spec says.

    `with Daemon(...) as d:` (or `async with`) starts it, waits until /ready answers 200 and
    stops it on the way out; tests that restart or kill it call the methods themselves."""

    log: Path
    env: Mapping[str, str | None] = field(default_factory=dict)
    argv: Sequence[str] = SERVE
    inherit: bool = True
    cwd: Path | None = None
    http_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def environment(self) -> dict[str, str]:
        env: dict[str, str | None] = {}
        if self.inherit:
            env.update(os.environ)
            env.update(SHUTDOWN_DRAIN_SECONDS="0", SHUTDOWN_TIMEOUT_SECONDS="5")
        env.update(
            BIND_ADDRESS="127.0.0.1",
            HTTP_PORT=str(self.http_port),
            DNS_PORT=str(self.dns_port),
            GRPC_PORT=str(self.grpc_port),
        )
        env.update(self.env)
        return {k: v for k, v in env.items() if v is not None}

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                list(self.argv),
                env=self.environment(),
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self, last: int = 4000) -> str:
        """The end of the log, for failure messages."""
        return self.log.read_text(errors="replace")[-last:]

    def _alive(self) -> None:
        assert self.proc is not None, "not started"
        code = self.proc.poll()
        assert code is None, f"pid {self.proc.pid} exited {code}:\n{self.output()}"

    def wait_ready_sync(
        self, timeout: float = 30, path: str = "/ready", interval: float = 0.05
    ) -> None:
        """Block until `path` answers 200 (for tests that are not async)."""
        deadline = time.monotonic() + timeout
        while http_status(self.base + path) != 200:
            self._alive()
            assert time.monotonic() < deadline, f"not ready within {timeout}s:\n{self.output()}"
            time.sleep(interval)

    async def wait_ready(self, timeout: float = 30) -> None:
        """Wait until /ready answers 200, without blocking the event loop."""
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                self._alive()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.base + "/ready") as resp:
                        return resp.status == 200
                return False

            await eventually(ready, timeout, "daemon ready", interval=0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the process, if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """Its exit code, once it has exited (within `timeout`, a guard)."""
        proc = self.proc
        assert proc is not None
        await eventually(lambda: proc.poll() is not None, timeout, f"pid {proc.pid} exited", 0.05)
        return proc.returncode

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM whatever still runs, SIGKILL it after `timeout`: the end of every test that
        starts one."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Daemon:
        self.start()
        try:
            self.wait_ready_sync()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Daemon:
        self.start()
        try:
            await self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
