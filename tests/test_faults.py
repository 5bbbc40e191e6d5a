"""Faults the daemon must survive, against real servers: a database outage (refused and
blackholed, through a TCP proxy the test owns), kill -9 in the middle of writes, a rolling
SIGTERM restart under load, slow and hostile clients, and malformed gRPC messages.

The machine's PostgreSQL server is shared: outages are simulated with `TcpProxy` (which this
test can close, blackhole and cut) and with pg_terminate_backend on this run's own database
only. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest
from helpers import Daemon, dns_a, eventually, put, sample, scrape, with_budgets
from pgproxy import NotificationHold, TcpProxy

from service_discovery.app import run_app
from service_discovery.config import Config
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio


# ---- a TCP proxy in front of PostgreSQL that a test can break ------------------------------
@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    p = TcpProxy(database_url)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


# ---- small clients -------------------------------------------------------------------------
async def timed_put(http: aiohttp.ClientSession, path: str, body: object) -> tuple[int, float]:
    started = time.monotonic()
    resp = await put(http, path, body)
    return resp.status, time.monotonic() - started


def ports_body(n: int) -> dict[str, dict[str, object]]:
    return {f"p{i}": {"protocol": "tcp", "port": 8000 + i} for i in range(n)}


# ---- 1. database outage ----------------------------------------------------------------------
@pytest.mark.parametrize("blackhole", [False, True], ids=["refused", "blackholed"])
@with_budgets
async def test_database_outage_reads_serve_writes_503_then_recover(
    make_config: Callable[..., Config],
    database_url: str,
    proxy: TcpProxy,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
    blackhole: bool,
    budgets: bool,
) -> None:
    """1. writes acknowledged; 2. the database goes away: the proxy closes (connection refused,
    all cut), or it blackholes (accepts and never forwards, also on connections open before:
    only timeouts can notice, and they must); 3. metric 0 and a warning; 4. HTTP, DNS and gRPC
    reads and /ready keep answering (200; its body says database down, copy stale); 5. writes
    answer 503 and UNAVAILABLE (budget: within 2 x DB_TIMEOUT_SECONDS + 1 s); 6. another
    replica writes; 7. the proxy reopens: reconnect, reload (the other replica's write
    appears; /ready's body says up and live), writes work; 8. every acknowledged write is in
    the database."""
    db_timeout = 1.0
    caplog.set_level(logging.WARNING, logger="service_discovery")
    config = make_config(database_url=proxy.url(database_url), db_timeout_seconds=db_timeout)
    async with (
        run_app(config) as app,
        run_app(make_config()) as other,  # another replica, on the database directly
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{app.http_port}") as http,
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{other.http_port}") as http_other,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        # Step 1: acknowledged writes before the outage, visible over HTTP, DNS and gRPC.
        body = {"name": unique_name, "named_ports": ports_body(3)}
        assert (await put(http, "/service", body)).status == 201
        ips = [f"10.9.0.{i}" for i in range(1, 6)]
        for ip in ips:
            assert (await put(http, f"/service/{unique_name}/register", {"ip": ip})).status == 200
        assert await dns_a(app.dns_port, unique_name) == ips
        assert await scrape(http, "sd_sync_listen_connected") == 1

        # Step 2: the database goes away.
        if blackhole:
            proxy.blackhole()
        else:
            await proxy.refuse()

        # Step 3: the outage shows: sync disconnected (a blackhole is found by the LISTEN
        # connection's ping: _PING_SECONDS + DB_TIMEOUT_SECONDS), a warning in the log.
        async def disconnected() -> bool:
            return await scrape(http, "sd_sync_listen_connected") == 0

        await eventually(disconnected, 5 + db_timeout + 5, "sd_sync_listen_connected 0")
        assert any(
            "database connection lost or refused" in r.getMessage() for r in caplog.records
        ), [r.getMessage() for r in caplog.records]

        # Step 4: reads keep working from memory: /ready 200 (saying the copy is stale, and
        # since when, as the metric does), HTTP, DNS (UDP and TCP), gRPC.
        async with http.get("/ready") as resp:
            assert resp.status == 200
            state = await resp.json()
        assert state["ready"] and state["database"] == "down" and state["copy"] == "stale", state
        assert state["stale_seconds"] > 0 and not state["draining"], state
        assert await scrape(http, "sd_sync_stale_seconds") > 0
        async with http.get(f"/service/{unique_name}") as resp:
            assert resp.status == 200
            svc = await resp.json()
        assert sorted(e["ip"] for e in svc["endpoints"]) == ips
        assert len(svc["named_ports"]) == 3
        assert await dns_a(app.dns_port, unique_name) == ips
        assert await dns_a(app.dns_port, unique_name, tcp=True) == ips
        got = await stub.GetService(pb.GetServiceRequest(service_name=unique_name), timeout=3)
        assert sorted(e.ip for e in got.service.endpoints) == ips

        # Step 5: writes fail fast with 503 / UNAVAILABLE, never hanging past the timeout.
        # (A pool acquire and a statement may each take DB_TIMEOUT_SECONDS; allow both.)
        limit = 2 * db_timeout + 1.0
        before = await scrape(http, "sd_store_unavailable_total")
        for i in range(3):
            status, took = await timed_put(
                http, f"/service/{unique_name}/register", {"ip": f"10.9.1.{i}"}
            )
            assert status == 503, (status, took)
            assert not budgets or took < limit, (status, took)
            status, took = await timed_put(http, "/service", {"name": f"{unique_name}-x{i}"})
            assert status == 503, (status, took)
            assert not budgets or took < limit, (status, took)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateService(
                pb.CreateServiceRequest(service=pb.Service(name=f"{unique_name}-g")), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not budgets or time.monotonic() - started < limit
        assert await scrape(http, "sd_store_unavailable_total") >= before + 7

        # Step 6: meanwhile another replica writes (its notifications cannot reach us).
        path = f"/service/{unique_name}/register"
        assert (await put(http_other, path, {"ip": "10.9.2.1"})).status == 200

        # Step 7: the database comes back: reconnect with backoff, reload (the write of step 6
        # appears although its notification was lost), writes work again.
        await proxy.restore()

        async def reconnected() -> bool:
            return await scrape(http, "sd_sync_listen_connected") == 1

        await eventually(reconnected, 15, "sd_sync_listen_connected 1 after the outage")
        async with http.get("/ready") as resp:
            state = await resp.json()
        assert state["database"] == "up" and state["copy"] == "live", state
        assert state["stale_seconds"] == 0, state
        assert await scrape(http, "sd_sync_stale_seconds") == 0
        assert await scrape(http, "sd_sync_listen_reconnects_total") >= 1
        assert await dns_a(app.dns_port, unique_name) == [*ips, "10.9.2.1"]

        async def writable() -> bool:
            st, _ = await timed_put(http, f"/service/{unique_name}/register", {"ip": "10.9.3.1"})
            return st == 200

        await eventually(writable, 15, "writes accepted again", interval=0.2)

        # Step 8: every write acknowledged before the outage is in the database; none of the
        # refused ones is.
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                """SELECT host(e.ip) AS ip FROM endpoints e JOIN services s
                   ON s.id = e.service_id WHERE s.name = $1""",
                unique_name,
            )
            ports = await conn.fetchval(
                """SELECT count(*) FROM named_ports p JOIN services s ON s.id = p.service_id
                   WHERE s.name = $1""",
                unique_name,
            )
            refused = await conn.fetchval(
                "SELECT count(*) FROM services WHERE name LIKE $1", f"{unique_name}-%"
            )
        finally:
            await conn.close()
        assert sorted(r["ip"] for r in rows) == sorted([*ips, "10.9.2.1", "10.9.3.1"])
        assert ports == 3 and refused == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
    ]


async def test_database_errors_tell_clients_nothing_of_the_database(
    make_config: Callable[..., Config],
    new_database: Callable[..., contextlib.AbstractContextManager[str]],
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. a database of its own, with two rules the model does not know (a CHECK constraint and
    a unique index, as an operator or a newer schema might add); 2. the daemon reaches it
    through a proxy; 3. a write breaking each rule is 400 invalid_input / 409 already_exists
    (INVALID_ARGUMENT / ALREADY_EXISTS over gRPC), and neither the body nor the gRPC details
    name the constraint, the index or the values, while the log does; 4. the proxy refuses:
    writes are 503 unavailable / UNAVAILABLE saying only that the database is unavailable, no
    host, port or driver error, while the log has them."""
    caplog.set_level(logging.WARNING, logger="service_discovery")
    with new_database("sd_leak") as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "ALTER TABLE services ADD CONSTRAINT sd_secret_rule CHECK (name NOT LIKE 'no-%')"
            )
            await conn.execute(
                "CREATE UNIQUE INDEX sd_secret_owner ON services ((attributes->>'owner'))"
            )
        finally:
            await conn.close()
        proxy = TcpProxy(url)
        await proxy.start()
        config = make_config(database_url=proxy.url(url), db_timeout_seconds=1.0)
        try:
            async with (
                run_app(config) as app,
                aiohttp.ClientSession(base_url=f"http://127.0.0.1:{app.http_port}") as http,
                grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel,
            ):
                stub = pb_grpc.DiscoveryServiceStub(channel)
                owned = {"owner": "team-secret-value"}
                ok = {"name": unique_name, "attributes": owned}
                assert (await put(http, "/service", ok)).status == 201
                leaks = ["sd_secret", "team-secret-value", "no-", "violates", "Key (", "services"]

                async def refused(body: dict, status: int, code: grpc.StatusCode) -> str:
                    resp = await put(http, "/service", body)
                    answer = await resp.json()
                    assert resp.status == status, answer
                    service = pb.Service(name=body["name"], attributes=body.get("attributes"))
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.CreateService(pb.CreateServiceRequest(service=service))
                    assert err.value.code() == code
                    said = json.dumps(answer) + (err.value.details() or "")
                    assert not [leak for leak in leaks if leak in said], said
                    return str(answer["error"])

                rejected = {"name": f"no-{unique_name}"}
                assert await refused(rejected, 400, grpc.StatusCode.INVALID_ARGUMENT) == (
                    "invalid_input"
                )
                twin = {"name": f"{unique_name}-twin", "attributes": owned}
                assert await refused(twin, 409, grpc.StatusCode.ALREADY_EXISTS) == (
                    "already_exists"
                )
                logged = caplog.text
                assert "sd_secret_rule" in logged and "sd_secret_owner" in logged

                await proxy.refuse()
                caplog.clear()
                leaks = [str(proxy.port), "127.0.0.1", "Errno", "refused", "Connect call"]
                resp = await put(http, "/service", {"name": f"{unique_name}-late"})
                answer = await resp.json()
                assert (resp.status, answer["error"]) == (503, "unavailable"), answer
                assert answer["message"] == "the database is unavailable"
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.CreateService(
                        pb.CreateServiceRequest(service=pb.Service(name=f"{unique_name}-g"))
                    )
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                said = json.dumps(answer) + (err.value.details() or "")
                assert not [leak for leak in leaks if leak in said], said
                assert str(proxy.port) in caplog.text
        finally:
            await proxy.close()


@with_budgets
async def test_listen_backend_terminated_reloads(
    make_config: Callable[..., Config], database_url: str, unique_name: str, budgets: bool
) -> None:
    """1. a replica is ready; 2. pg_terminate_backend on its LISTEN connection (this run's own
    database only); 3. the replica reconnects and reloads: a write made through another replica
    in between shows up; 4. the pool's connections are terminated too: the next write may get
    503 but never hangs (budget: 3.5 s), and a retry succeeds."""
    async with (
        run_app(make_config(db_timeout_seconds=1.0)) as app,
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{app.http_port}") as http,
    ):
        assert (await put(http, "/service", {"name": unique_name})).status == 201
        assert app.sync is not None
        pid = app.sync.listen_pid()
        assert pid is not None
        conn = await asyncpg.connect(database_url)
        try:
            # One transaction: the backends die first, and the change is notified at commit,
            # while the replica is still reconnecting, so only a reload can bring it in.
            async with conn.transaction():
                # Every backend of this run's database but ours: the replica's LISTEN
                # connection and its pool (and those of tests that already finished).
                killed = await conn.fetchval(
                    """SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
                       FROM pg_stat_activity
                       WHERE datname = current_database() AND pid <> pg_backend_pid()"""
                )
                assert killed >= 1
                await conn.execute(
                    """INSERT INTO endpoints (service_id, ip)
                       SELECT id, '10.8.0.1' FROM services WHERE name = $1""",
                    unique_name,
                )
                await conn.execute(
                    "SELECT sd_bump(id, name, '10.8.0.1') FROM services WHERE name = $1",
                    unique_name,
                )
        finally:
            await conn.close()

        async def reloaded() -> bool:
            async with http.get(f"/service/{unique_name}") as resp:
                body = await resp.json()
            return [e["ip"] for e in body["endpoints"]] == ["10.8.0.1"]

        await eventually(reloaded, 10, "the write made while disconnected shows after reload")
        assert app.sync.listen_pid() != pid
        for _ in range(3):
            status, took = await timed_put(
                http, f"/service/{unique_name}/register", {"ip": "10.8.0.2"}
            )
            assert not budgets or took < 3.5, took
            if status == 200:
                break
            assert status == 503
        assert status == 200


# ---- 2. no partial writes ----------------------------------------------------------------------
async def test_kill_9_mid_writes_loses_no_acknowledged_write(
    database_url: str, tmp_path: Path
) -> None:
    """1. start the daemon; 2. 20 clients create services with 4 named ports and register 3
    endpoints each, recording every acknowledged write; 3. kill -9 while they run; 4. restart;
    5. every acknowledged service and endpoint is there, and no service in the database lacks a
    port (one transaction per API call); registry versions are consistent."""
    prefix = f"k9-{uuid.uuid4().hex[:6]}"
    daemon = Daemon(tmp_path / "daemon.log", {"DATABASE_URL": database_url})
    acked_services: set[str] = set()
    acked_endpoints: set[tuple[str, str]] = set()
    try:
        daemon.start()
        await daemon.wait_ready()

        async def client(n: int, http: aiohttp.ClientSession) -> None:
            for i in range(10_000):  # bounded; the kill ends it long before
                name = f"{prefix}-{n}-{i}"
                try:
                    body = {"name": name, "named_ports": ports_body(4)}
                    st = (await put(http, "/service", body)).status
                    if st != 201:
                        return
                    acked_services.add(name)
                    for j in range(3):
                        ip = f"10.{n}.{i % 256}.{j + 1}"
                        st = (await put(http, f"/service/{name}/register", {"ip": ip})).status
                        if st != 200:
                            return
                        acked_endpoints.add((name, ip))
                except aiohttp.ClientError:
                    return  # the daemon died under us: this write was not acknowledged

        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(base_url=daemon.base, timeout=timeout) as http:
            clients = [asyncio.create_task(client(n, http)) for n in range(20)]
            # Kill in the middle of the stream, at a random moment after writes are flowing.
            await eventually(lambda: len(acked_endpoints) >= 100, 30, "writes flowing")
            await asyncio.sleep(random.uniform(0.0, 0.5))
            daemon.kill(signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*clients), 20)
        assert await daemon.wait_exit(5) == -signal.SIGKILL
        assert len(acked_services) >= 20

        daemon.start()
        await daemon.wait_ready()
        async with aiohttp.ClientSession(base_url=daemon.base) as http:
            async with http.get("/services") as resp:
                listed = {s["name"]: s for s in await resp.json()}
            for name in acked_services:
                assert name in listed, f"acknowledged service {name} lost"
                assert len(listed[name]["named_ports"]) == 4, listed[name]
            for name, ip in acked_endpoints:
                async with http.get(f"/service/{name}") as resp:
                    ips = {e["ip"] for e in (await resp.json())["endpoints"]}
                assert ip in ips, f"acknowledged endpoint {name}/{ip} lost"

        conn = await asyncpg.connect(database_url)
        try:
            partial = await conn.fetch(
                """SELECT s.name, count(p.name) AS ports FROM services s
                   LEFT JOIN named_ports p ON p.service_id = s.id
                   WHERE s.name LIKE $1 GROUP BY s.name HAVING count(p.name) <> 4""",
                f"{prefix}-%",
            )
            versions = await conn.fetchrow(
                """SELECT (SELECT version FROM registry_state) AS registry,
                          max(version) AS top, count(*) AS n, count(DISTINCT version) AS distinct_
                   FROM services WHERE name LIKE $1""",
                f"{prefix}-%",
            )
        finally:
            await conn.close()
        assert partial == [], f"half-written services: {partial}"
        # Every change took its own registry version: no two services share one, none is ahead.
        assert versions["top"] <= versions["registry"]
        assert versions["distinct_"] == versions["n"]
        assert "Traceback" not in daemon.log.read_text()
    finally:
        daemon.stop()


# ---- 2b. group commit: a batch hit by an outage, kill -9 while batches are in flight ----------
# a batch of one registration calls sd_register, a larger one sd_write_batch
_BATCH_WAITING = """SELECT pid FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'
      AND (query LIKE '%sd_write_batch%' OR query LIKE '%sd_register%')"""


async def _fetchval(database_url: str, sql: str, *args: object) -> object:
    # a connection per probe: pg_stat_activity is frozen inside a transaction
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_batch_hit_by_outage_fails_every_caller_and_leaves_nothing(
    make_config: Callable[..., Config], database_url: str, proxy: TcpProxy, unique_name: str
) -> None:
    """1. a replica through the proxy; services `gate` and `web`;
    2. a write to `gate` waits inside PostgreSQL for `gate`'s row lock (the test holds it);
       meanwhile the test begins creating a service `late` in a transaction it does not commit,
       and four writes queue: two registrations in `web`, a new service `fresh`, and `late`;
    3. the lock is released: the first batch commits and the four go as one batch, which
       writes the registrations and `fresh`, then waits for `late`;
    4. the database goes away (the proxy refuses and cuts every connection, the batch's backend
       is terminated): each of the four callers gets 503;
    5. after recovery none of the four writes is in the database or the copy; writes work."""
    gate, web = f"{unique_name}-gate", f"{unique_name}-web"
    fresh, late = f"{unique_name}-fresh", f"{unique_name}-late"
    config = make_config(database_url=proxy.url(database_url), db_timeout_seconds=2.0)
    blocker = await asyncpg.connect(database_url)
    creator = await asyncpg.connect(database_url)
    async with (
        run_app(config) as app,
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{app.http_port}") as http,
    ):
        try:
            for name in (gate, web):
                assert (await put(http, "/service", {"name": name})).status == 201
            # Step 2.
            held = blocker.transaction()
            await held.start()
            await blocker.execute("SELECT 1 FROM services WHERE name = $1 FOR UPDATE", gate)
            first = asyncio.create_task(put(http, f"/service/{gate}/register", {"ip": "10.7.0.1"}))

            async def first_waits() -> bool:
                return await _fetchval(database_url, _BATCH_WAITING) is not None

            await eventually(first_waits, 10, "the first batch waits for the lock", 0.01)
            creating = creator.transaction()
            await creating.start()
            await creator.execute("INSERT INTO services (name) VALUES ($1)", late)
            writes = [
                put(http, f"/service/{web}/register", {"ip": "10.7.1.1"}),
                put(http, f"/service/{web}/register", {"ip": "10.7.1.2"}),
                put(http, "/service", {"name": fresh}),
                put(http, "/service", {"name": late}),
            ]
            queued = []
            for write in writes:  # one at a time, so they queue in this order
                queued.append(asyncio.create_task(write))
                want = len(queued) + 1

                async def arrived(want: int = want) -> bool:
                    return await scrape(http, "sd_write_waiting") >= want

                await eventually(arrived, 10, f"{want} writes waiting", 0.01)
            # Step 3.
            await held.rollback()
            assert (await first).status == 200

            async def second_waits() -> bool:
                return await _fetchval(database_url, _BATCH_WAITING) is not None

            await eventually(second_waits, 10, "the batch of four waits for `late`", 0.01)
            # Step 4.
            pid = await _fetchval(database_url, _BATCH_WAITING)
            await proxy.refuse()
            assert await _fetchval(database_url, "SELECT pg_terminate_backend($1)", pid)
            answers = await asyncio.wait_for(asyncio.gather(*queued), 10)
            assert [a.status for a in answers] == [503] * 4, [a.status for a in answers]
            await creating.rollback()
            # Step 5.
            await proxy.restore()

            async def writable() -> bool:
                return (
                    await put(http, f"/service/{web}/register", {"ip": "10.7.2.1"})
                ).status == 200

            await eventually(writable, 15, "writes accepted again", interval=0.2)
            rows = await blocker.fetch(
                """SELECT host(e.ip) AS ip FROM endpoints e JOIN services s
                   ON s.id = e.service_id WHERE s.name = $1""",
                web,
            )
            assert [r["ip"] for r in rows] == ["10.7.2.1"]
            assert not await blocker.fetchval(
                "SELECT count(*) FROM services WHERE name = ANY($1)", [fresh, late]
            )
            async with http.get(f"/service/{fresh}") as resp:
                assert resp.status == 404
            async with http.get(f"/service/{web}") as resp:
                assert [e["ip"] for e in (await resp.json())["endpoints"]] == ["10.7.2.1"]
        finally:
            await blocker.close()
            await creator.close()


async def test_reload_after_reconnect_keeps_this_replicas_later_writes(
    make_config: Callable[..., Config], database_url: str, unique_name: str
) -> None:
    """Read-your-writes across a reconnect of the sync (the race behind a flaky run of the
    outage test above, made to happen every time):
    1. a replica whose connections go through a proxy that can hold back notifications;
       a service;
    2. the test locks `named_ports`; the replica's LISTEN backend is terminated: it reconnects,
       LISTENs, and its reload takes its snapshot, then waits for the lock;
    3. notifications are held; a registration commits after that snapshot, is acknowledged,
       and the copy shows it;
    4. the lock is released: the reload applies its older snapshot;
    5. the copy still shows the registration, while its notification is still held back and
       after it is let through."""
    ip = "10.7.9.1"
    blocker = await asyncpg.connect(database_url)
    try:
        async with (
            NotificationHold(database_url) as hold,
            run_app(make_config(database_url=hold.url)) as app,
            aiohttp.ClientSession(base_url=f"http://127.0.0.1:{app.http_port}") as http,
        ):

            async def endpoints() -> list[str]:
                async with http.get(f"/service/{unique_name}") as resp:
                    return [e["ip"] for e in (await resp.json())["endpoints"]]

            assert (await put(http, "/service", {"name": unique_name})).status == 201
            reloads = sample(app.metrics, "sd_sync_full_reloads_total")
            # Step 2.
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute("LOCK TABLE named_ports IN ACCESS EXCLUSIVE MODE")
            pid = app.sync.listen_pid()
            assert await _fetchval(database_url, "SELECT pg_terminate_backend($1)", pid)

            async def reload_waits() -> bool:
                return (
                    await _fetchval(
                        database_url,
                        """SELECT pid FROM pg_stat_activity
                           WHERE datname = current_database() AND wait_event_type = 'Lock'
                             AND query LIKE '%FROM named_ports p%'""",
                    )
                    is not None
                )

            await eventually(reload_waits, 10, "the reload waits for named_ports", 0.01)
            # Step 3.
            hold.holding = True
            assert (await put(http, f"/service/{unique_name}/register", {"ip": ip})).status == 200
            assert await endpoints() == [ip]
            # Step 4.
            await locked.rollback()
            await eventually(
                lambda: sample(app.metrics, "sd_sync_full_reloads_total") > reloads,
                10,
                "the reload ends",
            )
            # Step 5.
            assert await endpoints() == [ip], "an acknowledged write went missing from the copy"
            hold.release()
            await eventually(lambda: app.sync.connected, 10, "the sync is up")
            assert await endpoints() == [ip]
    finally:
        await blocker.close()


async def test_kill_9_while_batches_are_in_flight(database_url: str, tmp_path: Path) -> None:
    """1. start the daemon; 2. 50 clients each create services with 4 named ports, register 3
    endpoints in each, add a port, and deregister one endpoint, recording every acknowledged
    write; 3. once batches of several writes are being written (sd_write_waiting > 1), kill -9;
    4. restart; 5. every acknowledged write is there, no service is half written (4 or 5
    ports, one transaction per batch), and versions are distinct."""
    prefix = f"k9b-{uuid.uuid4().hex[:6]}"
    daemon = Daemon(tmp_path / "daemon.log", {"DATABASE_URL": database_url})
    services: dict[str, int] = {}  # acknowledged service -> ports acknowledged
    endpoints: set[tuple[str, str]] = set()
    leaving: set[tuple[str, str]] = set()  # deregistrations sent (acknowledged or not)
    gone: set[tuple[str, str]] = set()  # acknowledged deregistrations
    try:
        daemon.start()
        await daemon.wait_ready()

        async def client(n: int, http: aiohttp.ClientSession) -> None:
            for i in range(10_000):  # bounded; the kill ends it long before
                name = f"{prefix}-{n}-{i}"
                try:
                    body = {"name": name, "named_ports": ports_body(4)}
                    if (await put(http, "/service", body)).status != 201:
                        return
                    services[name] = 4
                    for j in range(3):
                        ip = f"10.{n}.{i % 256}.{j + 1}"
                        if (await put(http, f"/service/{name}/register", {"ip": ip})).status != 200:
                            return
                        endpoints.add((name, ip))
                    more = {"extra": {"protocol": "udp", "port": 53}}
                    if (await put(http, f"/service/{name}/ports", more)).status != 200:
                        return
                    services[name] = 5
                    leaving.add((name, f"10.{n}.{i % 256}.1"))
                    async with http.delete(f"/service/{name}/endpoints/10.{n}.{i % 256}.1") as r:
                        if r.status != 204:
                            return
                    gone.add((name, f"10.{n}.{i % 256}.1"))
                except aiohttp.ClientError:
                    return  # the daemon died under us: this write was not acknowledged

        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(base_url=daemon.base, timeout=timeout) as http:
            clients = [asyncio.create_task(client(n, http)) for n in range(50)]
            await eventually(lambda: len(endpoints) >= 300, 60, "writes flowing")

            async def batching() -> bool:
                return await scrape(http, "sd_write_waiting") > 1

            await eventually(batching, 30, "batches of several writes in flight", 0.005)
            daemon.kill(signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*clients), 20)
        assert await daemon.wait_exit(5) == -signal.SIGKILL

        daemon.start()
        await daemon.wait_ready()
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                """SELECT s.name, s.version,
                          (SELECT count(*) FROM named_ports p WHERE p.service_id = s.id) AS ports,
                          ARRAY(SELECT host(e.ip) FROM endpoints e WHERE e.service_id = s.id)
                              AS ips
                   FROM services s WHERE s.name LIKE $1""",
                f"{prefix}-%",
            )
            registry = await conn.fetchval("SELECT version FROM registry_state")
        finally:
            await conn.close()
        stored = {r["name"]: r for r in rows}
        for name, ports in services.items():
            assert name in stored, f"acknowledged service {name} lost"
            assert stored[name]["ports"] >= ports, f"acknowledged ports of {name} lost"
        for name, ip in endpoints - leaving:
            assert ip in stored[name]["ips"], f"acknowledged endpoint {name}/{ip} lost"
        for name, ip in gone:
            assert ip not in stored[name]["ips"], f"acknowledged deregistration {name}/{ip} lost"
        half = [r["name"] for r in rows if r["ports"] not in (4, 5)]
        assert half == [], f"half-written services: {half}"
        versions = [r["version"] for r in rows]
        assert len(set(versions)) == len(versions) and max(versions) <= registry
        async with aiohttp.ClientSession(base_url=daemon.base) as http:
            async with http.get("/services") as resp:
                listed = {s["name"] for s in await resp.json()}
        assert set(services) <= listed
        assert "Traceback" not in daemon.log.read_text()
    finally:
        daemon.stop()


# ---- 3. SIGTERM under load -------------------------------------------------------------------
class Balancer:
    """A client-side load balancer: polls /ready of every replica every `poll` seconds and
    routes only to the ready ones. A replica that turns ready again gets fresh connections (an
    HTTP session and a gRPC channel), as a balancer's pool to a new endpoint would."""

    def __init__(self, daemons: list[Daemon], poll: float) -> None:
        self.daemons = daemons
        self.poll = poll
        self.ready = [False] * len(daemons)
        self.misses = [0] * len(daemons)
        self.sessions: list[aiohttp.ClientSession | None] = [None] * len(daemons)
        self.channels: list[grpc.aio.Channel | None] = [None] * len(daemons)
        self._old: list[aiohttp.ClientSession | grpc.aio.Channel] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Balancer:
        await self._check()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for item in [*self.sessions, *self.channels, *self._old]:
            if item is not None:
                await item.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            await self._check()

    async def _check(self) -> None:
        async def probe(d: Daemon) -> bool | None:
            """True: 200; False: 503 or refused (draining or gone); None: no answer in time."""
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as http,
                    http.get(d.base + "/ready") as resp,
                ):
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False
            except TimeoutError:
                return None

        states = await asyncio.gather(*(probe(d) for d in self.daemons))
        for i, up in enumerate(states):
            # As Kubernetes does with failureThreshold 3: a slow probe is not yet an answer,
            # three in a row are; an explicit 503 or a refused connection counts at once.
            self.misses[i] = self.misses[i] + 1 if up is None else 0
            if up is None and self.misses[i] < 3:
                continue
            if up and not self.ready[i]:
                for item in (self.sessions[i], self.channels[i]):
                    if item is not None:
                        self._old.append(item)
                self.sessions[i] = aiohttp.ClientSession(base_url=self.daemons[i].base)
                self.channels[i] = grpc.aio.insecure_channel(
                    f"127.0.0.1:{self.daemons[i].grpc_port}"
                )
            self.ready[i] = bool(up)

    def pick(self) -> int:
        choices = [i for i, up in enumerate(self.ready) if up]
        assert choices, "no replica ready"
        return random.choice(choices)


@dataclass
class Tally:
    ok: Counter[str] = field(default_factory=lambda: Counter())
    failures: list[str] = field(default_factory=list)


async def test_rolling_sigterm_restart_under_load_no_failed_request(
    database_url: str, tmp_path: Path, unique_name: str
) -> None:
    """1. two replicas (subprocesses, SHUTDOWN_DRAIN_SECONDS 1.5) and a balancer polling /ready
    every 0.1 s (probe timeout 0.5 s); 2. steady load through the balancer: HTTP reads, HTTP
    writes, blocking queries, DNS over UDP and TCP, gRPC GetService; 3. SIGTERM replica 0: it
    exits 0; restart it and wait until the balancer sees it ready; the same for replica 1;
    4. the load ran throughout and not one request failed; 5. every write is in the registry."""
    env = {
        "DATABASE_URL": database_url,
        "SHUTDOWN_DRAIN_SECONDS": "1.5",
        "SHUTDOWN_TIMEOUT_SECONDS": "5",
    }
    daemons = [Daemon(tmp_path / f"replica{i}.log", env) for i in (0, 1)]
    tally = Tally()
    written: list[str] = []
    try:
        for d in daemons:
            d.start()
        for d in daemons:
            await d.wait_ready()
        async with aiohttp.ClientSession(base_url=daemons[0].base) as http:
            assert (await put(http, "/service", {"name": unique_name})).status == 201
            ip = {"ip": "10.7.0.1"}
            assert (await put(http, f"/service/{unique_name}/register", ip)).status == 200
        for d in daemons:  # replicas converge within milliseconds; start once both have it

            async def visible(d: Daemon = d) -> bool:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"{d.base}/service/{unique_name}") as resp,
                ):
                    return resp.status == 200 and bool((await resp.json())["endpoints"])

            await eventually(visible, 5, "the service on every replica")
        stop = asyncio.Event()

        async with Balancer(daemons, poll=0.1) as lb:

            async def worker(kind: str, n: int) -> None:
                for i in range(100_000):  # bounded; `stop` ends it
                    if stop.is_set():
                        return
                    r = -1
                    try:
                        r = lb.pick()
                        await asyncio.wait_for(one(kind, n, i, r), 5)
                        tally.ok[kind] += 1
                    except Exception as exc:  # every failure is the test's finding
                        at = time.monotonic() - t0
                        tally.failures.append(f"{at:.2f}s {kind} -> replica {r}: {exc!r}"[:300])
                    await asyncio.sleep(0.005)

            async def one(kind: str, n: int, i: int, r: int) -> None:
                http, channel = lb.sessions[r], lb.channels[r]
                assert http is not None and channel is not None
                if kind == "read":
                    async with http.get(f"/service/{unique_name}") as resp:
                        assert resp.status == 200, resp.status
                        await resp.read()
                elif kind == "write":
                    ip = f"10.7.{n + 1}.{i % 250 + 1}"
                    path = f"/service/{unique_name}/register"
                    async with http.put(path, json={"ip": ip}) as resp:
                        assert resp.status == 200, (resp.status, await resp.text())
                    written.append(ip)
                elif kind == "watch":
                    async with http.get(f"/service/{unique_name}") as resp:
                        index = resp.headers["X-Index"]
                    path = f"/service/{unique_name}?index={index}&wait=2s"
                    async with http.get(path) as resp:
                        assert resp.status == 200, resp.status
                elif kind in ("dns-udp", "dns-tcp"):
                    ips = await dns_a(lb.daemons[r].dns_port, unique_name, tcp=kind == "dns-tcp")
                    assert "10.7.0.1" in ips, ips
                else:
                    stub = pb_grpc.DiscoveryServiceStub(channel)
                    got = await stub.GetService(
                        pb.GetServiceRequest(service_name=unique_name), timeout=3
                    )
                    assert got.service.name == unique_name

            kinds = ["read"] * 4 + ["write"] * 2 + ["watch"] * 2 + ["dns-udp"] * 2
            kinds += ["dns-tcp", "grpc", "grpc"]
            t0 = time.monotonic()
            workers = [asyncio.create_task(worker(k, n)) for n, k in enumerate(kinds)]
            await asyncio.sleep(1.0)
            for d in daemons:
                d.kill(signal.SIGTERM)
                assert await d.wait_exit(1.5 + 5 + 5) == 0
                d.start()
                await eventually(
                    lambda d=d: lb.ready[daemons.index(d)],
                    30,
                    "the balancer sees the restarted replica ready",
                )
                await asyncio.sleep(1.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), 15)

        assert tally.failures == [], tally.failures[:20]
        for kind in set(kinds):
            assert tally.ok[kind] >= 20, tally.ok
        async with aiohttp.ClientSession(base_url=daemons[1].base) as http:
            async with http.get(f"/service/{unique_name}") as resp:
                ips = {e["ip"] for e in (await resp.json())["endpoints"]}
        assert set(written) <= ips
        for d in daemons:
            text = d.log.read_text()
            assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
    finally:
        for d in daemons:
            d.stop()


# ---- 4. slow and hostile clients ---------------------------------------------------------------
async def _raw_http(port: int, head: bytes, timeout: float = 3.0) -> tuple[int, float]:
    """Send a raw request head (and maybe a body start); the status answered and how long."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(timeout):
            line = await reader.readline()
        return int(line.split()[1]), time.monotonic() - started
    finally:
        writer.transport.abort()


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True once the server closes the connection (EOF or reset) within `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
        return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


@with_budgets
async def test_slow_and_hostile_clients_do_not_stop_service(
    make_config: Callable[..., Config], unique_name: str, budgets: bool
) -> None:
    """1. a daemon with 1 s HTTP idle and body timeouts and DNS TCP capped at 200 connections
    idle for 1 s at most; 2. 300 slowloris connections trickle header lines and 50 trickle a
    body, while 1,000 idle DNS TCP connections are opened; 3. ordinary HTTP, DNS UDP and gRPC
    clients are answered throughout (budget: 0.5 s each); 4. the server closes the slow HTTP
    connections (the slow bodies get 408) and the idle DNS ones (budget: 8 s for all), and a new
    DNS TCP client is answered again; 5. an oversized body, deep JSON, 1,000 headers and a
    100 kB header line each get a 4xx (budget: 1 s each)."""
    config = make_config(
        http_idle_timeout_seconds=1.0,
        http_body_timeout_seconds=1.0,
        dns_tcp_max_connections=200,
        dns_tcp_idle_seconds=1.0,
    )
    async with (
        run_app(config) as app,
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{app.http_port}") as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel,
    ):
        assert (await put(http, "/service", {"name": unique_name})).status == 201
        path = f"/service/{unique_name}/register"
        assert (await put(http, path, {"ip": "10.6.0.1"})).status == 200
        stub = pb_grpc.DiscoveryServiceStub(channel)

        # Step 2: the hostile crowd.
        slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for _ in range(300):
            slow.append(await asyncio.open_connection("127.0.0.1", app.http_port))
            slow[-1][1].write(b"GET /services HTTP/1.1\r\nHost: x\r\n")
        bodies: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for _ in range(50):
            bodies.append(await asyncio.open_connection("127.0.0.1", app.http_port))
            bodies[-1][1].write(
                b"PUT /service HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
            )
        idle_dns = []
        for _ in range(1000):
            with contextlib.suppress(OSError):
                idle_dns.append(await asyncio.open_connection("127.0.0.1", app.dns_port))
        opened = time.monotonic()

        async def trickle() -> None:
            for i in range(30):  # bounded: 3 s at most
                for _, w in slow:
                    if not w.is_closing():
                        w.write(f"X-Slow-{i}: 1\r\n".encode())
                for _, w in bodies:
                    if not w.is_closing():
                        w.write(b" ")
                await asyncio.sleep(0.1)

        trickler = asyncio.create_task(trickle())

        # Step 3: everyone else is served promptly meanwhile.
        worst = 0.0
        for _ in range(20):
            started = time.monotonic()
            async with http.get(f"/service/{unique_name}") as resp:
                assert resp.status == 200
            assert await dns_a(app.dns_port, unique_name) == ["10.6.0.1"]
            got = await stub.GetService(pb.GetServiceRequest(service_name=unique_name), timeout=2)
            assert got.service.name == unique_name
            worst = max(worst, time.monotonic() - started)
            await asyncio.sleep(0.05)
        assert not budgets or worst < 0.5, worst

        # Step 4: the server sheds them within the timeouts (1 s, plus timer slack).
        closed = await asyncio.gather(*(_closed_by_server(r, 4.0) for r, _ in slow))
        assert all(closed), f"{closed.count(False)} slowloris connections still open"
        answers = await asyncio.gather(
            *(asyncio.wait_for(r.read(200), 4.0) for r, _ in bodies), return_exceptions=True
        )
        assert all(isinstance(a, bytes) and a.startswith(b"HTTP/1.1 408") for a in answers), (
            answers[:3]
        )
        dns_closed = await asyncio.gather(*(_closed_by_server(r, 4.0) for r, _ in idle_dns))
        assert all(dns_closed), f"{dns_closed.count(False)} idle DNS connections still open"
        assert not budgets or time.monotonic() - opened < 8
        trickler.cancel()
        for _, w in [*slow, *bodies, *idle_dns]:
            w.transport.abort()
        assert await dns_a(app.dns_port, unique_name, tcp=True) == ["10.6.0.1"]

        async def no_dns_tcp() -> bool:
            return await scrape(http, "sd_dns_tcp_connections") == 0

        await eventually(no_dns_tcp, 3, "every DNS TCP connection released")

        # Step 5: oversized, deep and header-heavy requests: 4xx, quickly.
        port = app.http_port
        big = config.http_max_body_bytes + 1
        status, took = await _raw_http(
            port, f"PUT /service HTTP/1.1\r\nHost: x\r\nContent-Length: {big}\r\n\r\n".encode()
        )
        assert status == 413 and (not budgets or took < 1), (status, took)
        deep = b"[" * 100_000 + b"]" * 100_000
        status, took = await _raw_http(
            port,
            b"PUT /service HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(deep), deep),
        )
        assert status == 400 and (not budgets or took < 1), (status, took)
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(1000))
        status, took = await _raw_http(
            port, b"GET /services HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"
        )
        assert 400 <= status < 500 and (not budgets or took < 1), (status, took)
        status, took = await _raw_http(
            port, b"GET /services HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        )
        assert 400 <= status < 500 and (not budgets or took < 1), (status, took)
        async with http.get("/healthz") as resp:
            assert resp.status == 200


# ---- 5. malformed gRPC messages --------------------------------------------------------------
@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc", bytes(range(256))],
    ids=["varint-overflow", "length-overflow", "truncated", "all-bytes"],
)
async def test_grpc_garbage_request_is_invalid_argument(
    make_config: Callable[..., Config], garbage: bytes
) -> None:
    """Raw bytes that are no valid protobuf, sent to unary methods through a generic channel
    with identity serializers, get INVALID_ARGUMENT (not INTERNAL, not a hang), and the server
    keeps answering."""
    async with (
        run_app(make_config()) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel,
    ):
        for method in ("GetService", "CreateService", "RegisterEndpoint"):
            call = channel.unary_unary(
                f"/sd.DiscoveryService/{method}",
                request_serializer=None,
                response_deserializer=None,
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(garbage, timeout=3)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.value)
        stub = pb_grpc.DiscoveryServiceStub(channel)
        listed = await stub.ListServices(pb.ListServicesRequest(), timeout=3)
        assert listed is not None
