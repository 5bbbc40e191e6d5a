"""Loading a large copy streams: probes and DNS are answered meanwhile, /ready waits for the end,
DB_TIMEOUT_SECONDS bounds each round trip rather than the whole load, writes committed during
the load are in the copy after it, and a reload keeps serving the old copy until it is done.

The load is made slow for real: the replica reaches PostgreSQL through a proxy that holds every
read from the server back, and reads a few hundred rows per round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import asyncpg
import dns.asyncquery
import dns.message
import dns.rcode
import psycopg2
import pytest
from helpers import ZONE, dns_a, eventually, sample
from pgproxy import open_upstream, through

from service_discovery.app import App, run_app
from service_discovery.config import Config
from service_discovery.model import EndpointSpec, ServiceSpec

pytestmark = pytest.mark.asyncio

SERVICES, PER_SERVICE = 2000, 10  # 20,000 endpoints
CHUNK_ROWS = 500  # about 50 round trips for the whole load
DELAY = 0.05  # seconds each read from the server is held back: the load takes >= 2.5 s
DB_TIMEOUT = 1.0  # well under the whole load, well over one round trip


class SlowProxy:
    """127.0.0.1:<port> -> the test PostgreSQL, each read from the server held back `DELAY` s."""

    def __init__(self, upstream_url: str) -> None:
        self._upstream = upstream_url
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await open_upstream(self._upstream)
        except OSError:
            writer.transport.abort()
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(_pipe(reader, up_writer, 0.0), _pipe(up_reader, writer, DELAY))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while data := await reader.read(65536):
            if delay:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


@pytest.fixture(scope="module")
def big_url(new_database: Callable[..., Any]) -> Iterator[str]:
    """A database of its own with SERVICES services of PER_SERVICE endpoints and 2 ports each."""
    with new_database("sd_startup") as url:
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO services (name, version) SELECT 'svc-' || i, i "
                "FROM generate_series(1, %s) AS i",
                (SERVICES,),
            )
            cur.execute(
                "INSERT INTO named_ports (service_id, name, protocol, port) "
                "SELECT s.id, p.name, 'tcp', p.port FROM services s, "
                "(VALUES ('http', 8080), ('grpc', 9090)) AS p(name, port)"
            )
            cur.execute(
                "INSERT INTO endpoints (service_id, ip) "
                "SELECT s.id, '10.0.0.0'::inet + ((s.version - 1) * %s + j) "
                "FROM services s, generate_series(0, %s - 1) AS j",
                (PER_SERVICE, PER_SERVICE),
            )
            cur.execute("UPDATE registry_state SET version = %s", (SERVICES,))
        conn.close()
        yield url


@pytest.fixture
async def slow_url(big_url: str) -> AsyncIterator[str]:
    proxy = SlowProxy(big_url)
    await proxy.start()
    try:
        yield through(big_url, proxy.port)
    finally:
        await proxy.close()


def slow_config(make_config: Callable[..., Config], url: str) -> Config:
    return make_config(
        database_url=url, db_snapshot_chunk_rows=CHUNK_ROWS, db_timeout_seconds=DB_TIMEOUT
    )


async def rcode(port: int, name: str) -> int:
    q = dns.message.make_query(f"{name}.{ZONE}", "A")
    resp = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=2)
    return int(resp.rcode())


async def test_probes_answered_while_loading_and_writes_during_the_load_kept(
    make_config: Callable[..., Config], big_url: str, slow_url: str
) -> None:
    """1. a writer replica on the database directly; 2. the slow replica starts: its load takes
    several times DB_TIMEOUT_SECONDS (the proxy holds every round trip back), each round trip
    well under it; 3. while it loads: /healthz answers 200, /ready 503, DNS SERVFAIL, and the
    writer adds a service, an endpoint and deletes a service; 4. the load succeeds at the
    first attempt (no reconnect), /ready turns 200, and the copy has every row and each write."""
    async with run_app(make_config(database_url=big_url)) as writer:
        slow = App(slow_config(make_config, slow_url))
        started = time.monotonic()
        try:
            await slow.start()
            await eventually(lambda: slow.http_port, what="the slow replica listens")
            base = f"http://127.0.0.1:{slow.http_port}"
            healthy = 0
            wrote = False
            async with aiohttp.ClientSession(base_url=base) as http:
                while not slow.sync.synced.is_set():
                    assert time.monotonic() - started < 60, "the load never ended"
                    async with http.get("/healthz") as r:
                        assert r.status == 200
                    async with http.get("/ready") as r:
                        # 200 only once the copy is loaded (it may end between the two)
                        assert r.status == 503 or slow.sync.synced.is_set(), await r.text()
                    if not slow.sync.synced.is_set():
                        healthy += 1
                        servfail = await rcode(slow.dns_port, "svc-1")
                        assert servfail == dns.rcode.SERVFAIL or slow.sync.synced.is_set()
                    if not wrote and slow.registry.service_count() == 0:
                        # the load has begun (LISTEN is up) and nothing is in the copy yet
                        await writer.catalog.create_service(ServiceSpec("late-svc"))
                        await writer.catalog.register("late-svc", EndpointSpec("10.99.0.1"))
                        await writer.catalog.register("svc-7", EndpointSpec("10.99.0.7"))
                        await writer.catalog.delete_service("svc-11")
                        wrote = not slow.sync.synced.is_set()
                    await asyncio.sleep(0.02)
                async with http.get("/ready") as r:
                    assert r.status == 200
            took = time.monotonic() - started
            assert wrote, "the writes were not made while the slow replica was loading"
            assert healthy >= 5, f"only {healthy} probes answered while loading"
            assert took > 2 * DB_TIMEOUT, f"the load took {took:.1f}s: not slow enough to tell"
            assert sample(slow.metrics, "sd_sync_listen_reconnects_total") == 0
            assert sample(slow.metrics, "sd_sync_full_reloads_total") == 1
            # The writes' notifications were queued during the load and applied after it.
            await eventually(lambda: slow.registry.is_live("late-svc", "10.99.0.1"))
            await eventually(lambda: slow.registry.is_live("svc-7", "10.99.0.7"))
            await eventually(lambda: slow.registry.get("svc-11") is None)
            assert slow.registry.service_count() == SERVICES  # + late-svc - svc-11
            assert slow.registry.endpoint_count() == SERVICES * PER_SERVICE - PER_SERVICE + 2
            assert len(await dns_a(slow.dns_port, "svc-1500", tcp=True)) == PER_SERVICE
            assert slow.registry.index(None) == writer.registry.index(None)
        finally:
            await slow.stop()
            await writer.catalog.delete_service("late-svc")
            await writer.catalog.deregister("svc-7", "10.99.0.7")
            await writer.catalog.create_service(ServiceSpec("svc-11"))
            for i in range(PER_SERVICE):
                await writer.catalog.register("svc-11", EndpointSpec(f"10.99.11.{i}"))


async def test_reload_serves_the_old_copy_until_it_is_done(
    make_config: Callable[..., Config], big_url: str, slow_url: str
) -> None:
    """1. the slow replica is loaded; 2. its LISTEN backend is terminated: it reconnects and
    reloads everything, slowly; 3. meanwhile /ready stays 200 and DNS answers every record of a
    service from the old copy, and the writer changes a service; 4. after the reload the copy
    has the change and every other service as before."""
    async with (
        run_app(make_config(database_url=big_url)) as writer,
        run_app(slow_config(make_config, slow_url), ready_timeout=60) as slow,
    ):
        reloads = sample(slow.metrics, "sd_sync_full_reloads_total")
        before = await dns_a(slow.dns_port, "svc-42", tcp=True)
        assert len(before) == PER_SERVICE
        admin = await asyncpg.connect(big_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", slow.sync.listen_pid())
        finally:
            await admin.close()
        await eventually(lambda: not slow.sync.connected, what="the LISTEN connection is lost")
        answered = 0
        wrote = False
        base = f"http://127.0.0.1:{slow.http_port}"
        started = time.monotonic()
        async with aiohttp.ClientSession(base_url=base) as http:
            while sample(slow.metrics, "sd_sync_full_reloads_total") == reloads:
                assert time.monotonic() - started < 60, "the reload never ended"
                async with http.get("/ready") as r:
                    assert r.status == 200
                assert await dns_a(slow.dns_port, "svc-42", tcp=True) == before
                answered += 1
                if not wrote:
                    await writer.catalog.register("svc-43", EndpointSpec("10.99.0.43"))
                    wrote = not slow.sync.connected
                await asyncio.sleep(0.02)
        assert wrote and answered >= 5, (wrote, answered)
        await eventually(lambda: slow.registry.is_live("svc-43", "10.99.0.43"))
        assert slow.registry.service_count() == SERVICES
        assert await dns_a(slow.dns_port, "svc-42", tcp=True) == before
        await writer.catalog.deregister("svc-43", "10.99.0.43")


async def test_stop_during_a_load_ends_it(
    make_config: Callable[..., Config], slow_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """1. the slow replica starts loading; 2. it is stopped halfway: the load is abandoned, the
    sync ends with it (nothing reconnects, nothing is left running at the deadline)."""
    slow = App(slow_config(make_config, slow_url))
    try:
        await slow.start()
        await eventually(lambda: slow.sync.listen_pid() is not None, 20, "LISTEN is up")
        await asyncio.sleep(0.5)  # into the load
        assert not slow.sync.synced.is_set()
    finally:
        await slow.stop()
    assert not [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert sample(slow.metrics, "sd_sync_listen_reconnects_total") == 0
