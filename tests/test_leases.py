"""Leases end to end: heartbeats, lapse on every replica and front-end, the reaper under two
replicas, and the mass-expiry guard (including a real database outage through a cuttable proxy).

Each test has a database of its own: the reaper and the guard look at every lease in the
database, so leases of other tests must not be counted.
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
import dns.rdatatype
import grpc
import psycopg2
import pytest
from helpers import eventually, put, sample, scrape, with_budgets
from pgproxy import TcpProxy

from service_discovery.app import App, run_app
from service_discovery.config import Config
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc
from service_discovery.store import REAPER_LOCK_KEY

pytestmark = pytest.mark.asyncio

ZONE = "svc.cluster.local"


# ---- fixtures and helpers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def lease_database(new_database: Callable[..., Any]) -> Iterator[str]:
    """A migrated database for this module's tests."""
    with new_database("sd_lease") as url:
        yield url


@pytest.fixture
def lease_db(lease_database: str) -> str:
    """The module's database, emptied: no lease of another test is counted."""
    conn = psycopg2.connect(lease_database)
    conn.autocommit = True
    try:
        conn.cursor().execute("TRUNCATE services CASCADE")
    finally:
        conn.close()
    return lease_database


@contextlib.asynccontextmanager
async def client(app: App) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)  # every request of a gather in flight at once
    base = f"http://127.0.0.1:{app.http_port}"
    async with aiohttp.ClientSession(base_url=base, connector=connector) as session:
        yield session


async def create(http: aiohttp.ClientSession, name: str) -> None:
    assert (await put(http, "/service", {"name": name})).status == 201


async def register(http: aiohttp.ClientSession, name: str, ip: str, ttl: int | None) -> dict:
    resp = await put(http, f"/service/{name}/register", {"ip": ip, "ttl_seconds": ttl})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def heartbeat(http: aiohttp.ClientSession, name: str, ip: str) -> aiohttp.ClientResponse:
    return await put(http, f"/service/{name}/endpoints/{ip}/heartbeat")


async def http_ips(http: aiohttp.ClientSession, name: str) -> set[str]:
    async with http.get(f"/service/{name}") as resp:
        if resp.status == 404:
            return set()  # not (yet) known to this replica
        assert resp.status == 200, await resp.text()
        return {e["ip"] for e in (await resp.json())["endpoints"]}


async def dns_ips(app: App, name: str) -> set[str]:
    query = dns.message.make_query(f"{name}.{ZONE}", "A")
    answer = await dns.asyncquery.udp(query, "127.0.0.1", port=app.dns_port, timeout=2)
    return {
        rr.address for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset
    }


async def grpc_ips(app: App, name: str) -> set[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        try:
            resp = await stub.LookupEndpoints(
                pb.LookupEndpointsRequest(service_name=name), timeout=2
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return set()  # not (yet) known to this replica
            raise
        return {e.ip for e in resp.endpoints}


async def everywhere(app: App, http: aiohttp.ClientSession, name: str) -> dict[str, set[str]]:
    """The live addresses of `name` as HTTP, DNS and gRPC answer them on one replica."""
    return {
        "http": await http_ips(http, name),
        "dns": await dns_ips(app, name),
        "grpc": await grpc_ips(app, name),
    }


async def rows(url: str, name: str) -> dict[str, float | None]:
    """The endpoint rows of a service in PostgreSQL: ip -> expires_at (unix time)."""
    conn = await asyncpg.connect(url)
    try:
        found = await conn.fetch(
            """SELECT host(e.ip) AS ip, extract(epoch FROM e.expires_at)::float8 AS expires_at
               FROM endpoints e JOIN services s ON s.id = e.service_id
               WHERE lower(s.name) = lower($1)""",
            name,
        )
        return {r["ip"]: r["expires_at"] for r in found}
    finally:
        await conn.close()


# ---- heartbeats --------------------------------------------------------------------------------
async def test_heartbeat_answers_and_batching(
    make_config: Callable[..., Config], lease_db: str, unique_name: str
) -> None:
    """1. heartbeats of 40 endpoints, 3 each, all at once: one UPDATE for all of them, and the 3
    of one endpoint share one expiry; 2. the expiry is now + ttl; 3. unknown service, unknown
    endpoint, no lease and a bad address are 404, 404, 409, 400; 4. renewals do not move the
    index."""
    # a wide window, so the 120 requests surely fall into one even on a loaded machine
    config = make_config(database_url=lease_db, lease_flush_interval_seconds=1.0)
    async with run_app(config) as app, client(app) as http:
        await create(http, unique_name)
        ips = [f"10.2.0.{i}" for i in range(1, 41)]
        for ip in ips:
            await register(http, unique_name, ip, 30)
        await register(http, unique_name, "10.2.1.1", None)
        index = int((await http.get(f"/service/{unique_name}")).headers["X-Index"])
        # open the 120 connections beforehand: connecting is the slow part of a burst
        warm = await asyncio.gather(*(http.get("/healthz") for _ in range(120)))
        for resp in warm:
            await resp.read()
        flushes = sample(app.metrics, "sd_lease_flushes_total")
        renewed = sample(app.metrics, "sd_lease_heartbeats_total")

        started = time.time()
        answers = await asyncio.gather(*(heartbeat(http, unique_name, ip) for ip in ips * 3))
        assert [r.status for r in answers] == [200] * 120
        bodies = [await r.json() for r in answers]
        by_ip: dict[str, set[float]] = {}
        for body in bodies:
            by_ip.setdefault(body["ip"], set()).add(body["expires_at"])
        assert all(len(expiries) == 1 for expiries in by_ip.values()), by_ip
        assert sample(app.metrics, "sd_lease_flushes_total") - flushes == 1
        assert sample(app.metrics, "sd_lease_heartbeats_total") - renewed == 40
        expiry = bodies[0]["expires_at"]
        assert started + 30 - 0.1 <= expiry <= time.time() + 30 + 0.1
        assert (await rows(lease_db, unique_name))["10.2.0.1"] == pytest.approx(expiry, abs=1e-3)

        for path, status, code in [
            (f"/service/no-{unique_name}/endpoints/10.2.0.1/heartbeat", 404, "not_found"),
            (f"/service/{unique_name}/endpoints/10.9.9.9/heartbeat", 404, "not_found"),
            (f"/service/{unique_name}/endpoints/10.2.1.1/heartbeat", 409, "conflict"),
            (f"/service/{unique_name}/endpoints/not-an-ip/heartbeat", 400, "invalid_input"),
        ]:
            resp = await put(http, path)
            assert resp.status == status, (path, await resp.text())
            assert (await resp.json())["error"] == code
        assert int((await http.get(f"/service/{unique_name}")).headers["X-Index"]) == index


async def test_renewals_do_not_grow_the_expiry_queue(
    make_config: Callable[..., Config], lease_db: str, unique_name: str
) -> None:
    """1. two replicas; 100 endpoints with week-long leases through one; 2. 20 rounds of
    heartbeats for all of them; 3. on the replica that wrote them and on the one that heard
    them (NOTIFY), the expiry queue holds at most two entries per lease (it held one per
    renewal: 2,100)."""
    config = make_config(database_url=lease_db, lease_flush_interval_seconds=0.01)
    week = 7 * 24 * 3600
    ips = [f"10.4.{i // 200}.{i % 200 + 1}" for i in range(100)]
    async with run_app(config) as a, run_app(config) as b, client(a) as http:
        await create(http, unique_name)
        for ip in ips:
            await register(http, unique_name, ip, week)
        last = 0.0
        for _ in range(20):
            answers = await asyncio.gather(*(heartbeat(http, unique_name, ip) for ip in ips))
            assert {r.status for r in answers} == {200}
            last = max([(await r.json())["expires_at"] for r in answers])
            assert a.registry.lease_queue_size() <= 2 * len(ips)

        def heard_last_round() -> bool:
            svc = b.registry.get(unique_name)
            return svc is not None and max(e.expires_at or 0 for e in svc.endpoints) >= last

        await eventually(heard_last_round)
        for app in (a, b):
            assert app.registry.endpoint_count() == len(ips)
            assert app.registry.lease_queue_size() <= 2 * len(ips)


@pytest.mark.parametrize(
    ("registered", "renewed"),
    [
        ("::ffff:10.2.9.1", "::ffff:a02:901"),
        ("::0.1.0.0", "::1:0"),
        ("2001:DB8::1", "2001:db8:0::1"),
    ],
)
async def test_heartbeat_names_the_address_in_any_spelling(
    app: App, http: aiohttp.ClientSession, unique_name: str, registered: str, renewed: str
) -> None:
    """An endpoint is renewed under any spelling of its address, IPv4-mapped ones included
    (PostgreSQL and Python 3.11 write those differently; a mismatch made every heartbeat 404)."""
    await create(http, unique_name)
    ip = (await register(http, unique_name, registered, 30))["ip"]
    resp = await heartbeat(http, unique_name, renewed)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["ip"] == ip
    assert await http_ips(http, unique_name) == {ip}


# ---- lapse, everywhere -------------------------------------------------------------------------
@with_budgets
async def test_lapsed_lease_leaves_every_front_end_on_every_replica(
    make_config: Callable[..., Config], lease_db: str, unique_name: str, budgets: bool
) -> None:
    """1. two replicas on one database, reapers parked (rows stay); 2. a leased (ttl 1 s) and a
    lease-less endpoint; 3. heartbeats through either replica keep the lease past its ttl;
    4. once they stop, the endpoint leaves HTTP, DNS and gRPC answers on both replicas, not
    before its expiry (budget: within 1 s of it), while its row is still in PostgreSQL and the
    index has not moved; 5. a late heartbeat is 404, and registering again brings it back."""
    config = make_config(database_url=lease_db, lease_reap_interval_seconds=3600)
    leased, fixed = "10.1.0.1", "10.1.0.2"
    async with run_app(config) as a, run_app(config) as b, client(a) as ha, client(b) as hb:
        replicas = [(a, ha), (b, hb)]
        await create(ha, unique_name)
        await register(ha, unique_name, leased, 1)
        await register(ha, unique_name, fixed, None)

        async def both_everywhere() -> bool:
            for app, http in replicas:
                seen = await everywhere(app, http, unique_name)
                if any(ips != {leased, fixed} for ips in seen.values()):
                    return False
            return True

        await eventually(both_everywhere)
        expires_at = 0.0
        for i in range(4):  # 1.6 s of heartbeats, alternating replicas
            resp = await heartbeat(replicas[i % 2][1], unique_name, leased)
            assert resp.status == 200, await resp.text()
            expires_at = (await resp.json())["expires_at"]
            await asyncio.sleep(0.4)
        assert await both_everywhere()
        index = a.registry.index(unique_name)

        gone_at: dict[int, float] = {}
        last_seen: dict[int, dict[str, set[str]]] = {}
        deadline = expires_at + 3
        while len(gone_at) < 2 and time.time() < deadline:
            for n, (app, http) in enumerate(replicas):
                if n not in gone_at:
                    seen = last_seen[n] = await everywhere(app, http, unique_name)
                    if all(ips == {fixed} for ips in seen.values()):
                        gone_at[n] = time.time()
                    else:
                        # a front-end must never lag the others by a whole poll round
                        assert all(leased in ips for ips in seen.values()) or (
                            time.time() >= expires_at
                        ), seen
            await asyncio.sleep(0.02)
        assert len(gone_at) == 2, f"the lapsed endpoint stayed visible: {last_seen}"
        for at in gone_at.values():
            assert expires_at - 0.01 <= at, at - expires_at
            assert not budgets or at <= expires_at + 1.0, at - expires_at
        assert leased in await rows(lease_db, unique_name)  # not reaped: hidden in memory
        assert a.registry.index(unique_name) == b.registry.index(unique_name) == index

        for _app, http in replicas:
            resp = await heartbeat(http, unique_name, leased)
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"
        await register(hb, unique_name, leased, 5)
        await eventually(both_everywhere)


# ---- the reaper --------------------------------------------------------------------------------
async def test_reaper_one_replica_per_round_and_idempotent(
    make_config: Callable[..., Config], lease_db: str, unique_name: str
) -> None:
    """1. two replicas, reapers parked (each round is run by hand); 2. six leases in two
    services lapse; 3. while another session holds the reaper lock, neither replica reaps;
    4. both reap at the same moment: exactly six rows go, and no replica counts more than it
    deleted; 5. another round finds nothing; 6. both copies drop the endpoints, the index moves,
    and the lease-less endpoint stays."""
    config = make_config(database_url=lease_db, lease_reap_interval_seconds=3600)
    other = unique_name + "-b"
    async with run_app(config) as a, run_app(config) as b, client(a) as ha:
        for name in (unique_name, other):
            await create(ha, name)
            for i in range(1, 4):
                await register(ha, name, f"10.3.0.{i}", 1)
        await register(ha, unique_name, "10.3.1.1", None)
        index = a.registry.index(unique_name)
        await asyncio.sleep(1.1)

        admin = await asyncpg.connect(lease_db)
        try:
            await admin.execute("SELECT pg_advisory_lock($1)", REAPER_LOCK_KEY)
            assert await asyncio.gather(a.leases.reap_once(), b.leases.reap_once()) == [None, None]
            assert len(await rows(lease_db, unique_name)) == 4
            await admin.execute("SELECT pg_advisory_unlock($1)", REAPER_LOCK_KEY)
        finally:
            await admin.close()

        results = await asyncio.gather(a.leases.reap_once(), b.leases.reap_once())
        removed = [r.removed for r in results if r is not None]
        assert sum(removed) == 6 and sorted(removed)[-1] == 6, results
        expired = [sample(app.metrics, "sd_lease_expired_total") for app in (a, b)]
        assert sum(expired) == 6
        again = [await a.leases.reap_once(), await b.leases.reap_once()]
        assert [r.removed for r in again if r is not None] == [0, 0]

        assert set(await rows(lease_db, unique_name)) == {"10.3.1.1"}
        assert await rows(lease_db, other) == {}
        for app in (a, b):
            await eventually(lambda app=app: app.registry.index(unique_name) > index)
            svc = app.registry.get(unique_name)
            assert svc is not None and [e.ip for e in svc.endpoints] == ["10.3.1.1"]


async def test_background_reapers_delete_each_lease_once(
    make_config: Callable[..., Config], lease_db: str, unique_name: str
) -> None:
    """Two replicas reaping every 0.1 s: eight lapsed leases are deleted, and the two replicas'
    sd_lease_expired_total add up to exactly eight (no row is deleted or counted twice)."""
    config = make_config(database_url=lease_db, lease_reap_interval_seconds=0.1)
    async with run_app(config) as a, run_app(config) as b, client(a) as ha, client(b) as hb:
        await create(ha, unique_name)
        for i in range(1, 9):
            await register(ha if i % 2 else hb, unique_name, f"10.4.0.{i}", 1)
        await register(ha, unique_name, "10.4.1.1", None)

        async def reaped() -> bool:
            return set(await rows(lease_db, unique_name)) == {"10.4.1.1"}

        await eventually(reaped, timeout=5)
        await asyncio.sleep(0.3)  # a few more rounds on both replicas: nothing more happens
        total = await scrape(ha, "sd_lease_expired_total") + await scrape(
            hb, "sd_lease_expired_total"
        )
        assert total == 8
        for http in (ha, hb):
            assert await http_ips(http, unique_name) == {"10.4.1.1"}
            assert await scrape(http, "sd_lease_mass_expiry_total") == 0


async def test_reaper_sweeps_only_when_the_copy_knows_of_a_lapse(
    make_config: Callable[..., Config], lease_db: str, unique_name: str
) -> None:
    """A sweep scans every leased row, so the reaper skips rounds while its copy knows of no
    lease that has lapsed or is about to (reaping every 0.1 s, so a sweep at least every 3 s):
    1. a service with a 30 s lease: rounds are skipped, and a sweep still comes within the
    30 rounds; 2. a 1 s lease: it is reaped as before; 3. a lapsed row written behind the
    daemon's back (no NOTIFY: the copy never hears of it) is still reaped, by the periodic
    sweep."""
    config = make_config(database_url=lease_db, lease_reap_interval_seconds=0.1)
    async with run_app(config) as app, client(app) as http:
        await create(http, unique_name)
        await register(http, unique_name, "10.4.2.1", 30)

        async def skipped_and_swept() -> bool:
            skipped = await scrape(http, "sd_lease_sweeps_total", outcome="skipped")
            return skipped >= 20 and await scrape(http, "sd_lease_sweeps_total", outcome="swept")

        await eventually(skipped_and_swept, timeout=30, what="rounds skipped, then a sweep")
        await register(http, unique_name, "10.4.2.2", 1)

        async def reaped(ips: set[str]) -> bool:
            return set(await rows(lease_db, unique_name)) == ips

        took = await eventually(lambda: reaped({"10.4.2.1"}), timeout=10, what="1 s lease reaped")
        print(f"the 1 s lease was reaped {took:.2f} s after it was registered")
        conn = await asyncpg.connect(lease_db)
        try:
            await conn.execute(
                """INSERT INTO endpoints (service_id, ip, expires_at, ttl_seconds)
                   SELECT id, '10.4.2.3', now() - interval '1 second', 1 FROM services
                   WHERE lower(name) = lower($1)""",
                unique_name,
            )
        finally:
            await conn.close()
        assert "10.4.2.3" not in await http_ips(http, unique_name)  # the copy never heard
        took = await eventually(lambda: reaped({"10.4.2.1"}), timeout=15, what="unknown row")
        print(f"the row the copy never heard of was reaped after {took:.2f} s")


# ---- the mass-expiry guard ---------------------------------------------------------------------
# sweeps five times a second; more than half of at least ten leases lapsing at once is "mass"
GUARD = {
    "lease_reap_interval_seconds": 0.2,
    "lease_mass_expiry_share": 0.5,
    "lease_mass_expiry_min": 10,
}


async def lease_all(
    http: aiohttp.ClientSession, name: str, ips: list[str]
) -> list[aiohttp.ClientResponse]:
    """Create `name` with a 1 s lease on each of `ips`, all registered at once (so none lapses
    before the renewal even on a slow machine), then renewed together; the renewals' answers."""
    await create(http, name)
    await asyncio.gather(*(register(http, name, ip, 1) for ip in ips))
    answers = await asyncio.gather(*(heartbeat(http, name, ip) for ip in ips))
    assert [r.status for r in answers] == [200] * len(ips)
    return answers


async def test_mass_expiry_keeps_endpoints_then_reaps_the_few_dead(
    make_config: Callable[..., Config], lease_db: str, unique_name: str
) -> None:
    """1. 20 leased endpoints (ttl 1 s) renewed together, then no heartbeat at all; 2. for three
    ttls every one stays in HTTP and DNS answers and in PostgreSQL: each sweep refuses to
    delete, renews them for one more ttl, and counts sd_lease_mass_expiry_total; 3. heartbeats
    resume for 15: the 5 silent ones lapse as a minority and are reaped normally."""
    # the 20 renewals below land in one batch
    config = make_config(database_url=lease_db, lease_flush_interval_seconds=0.5, **GUARD)
    ips = [f"10.5.0.{i}" for i in range(1, 21)]
    async with run_app(config) as app, client(app) as http:
        answers = await lease_all(http, unique_name, ips)
        assert len({(await r.json())["expires_at"] for r in answers}) == 1

        watch_until = time.time() + 3.2
        while time.time() < watch_until:
            assert len(await http_ips(http, unique_name)) == 20
            assert len(await dns_ips(app, unique_name)) == 20
            await asyncio.sleep(0.05)
        assert await scrape(http, "sd_lease_mass_expiry_total") >= 2  # a sweep per lapse, per ttl
        assert await scrape(http, "sd_lease_expired_total") == 0
        stored = await rows(lease_db, unique_name)
        assert len(stored) == 20
        assert min(stored.values()) > time.time() - 1.0  # renewed by the guard, not left lapsed

        alive, silent = ips[:15], ips[15:]

        async def keep_alive() -> None:
            while True:
                for r in await asyncio.gather(*(heartbeat(http, unique_name, ip) for ip in alive)):
                    assert r.status == 200
                await asyncio.sleep(0.3)

        beating = asyncio.create_task(keep_alive())
        try:

            async def silent_reaped() -> bool:
                return set(await rows(lease_db, unique_name)) == set(alive)

            await eventually(silent_reaped, timeout=4)
            assert await http_ips(http, unique_name) == set(alive)
            assert await scrape(http, "sd_lease_expired_total") == len(silent)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


async def test_one_services_mass_expiry_does_not_stop_expiry_elsewhere(
    make_config: Callable[..., Config], lease_db: str, unique_name: str
) -> None:
    """1. `job` has 12 leased endpoints and `web` 10 (ttl 2 s), all renewed in one batch; then
    `job` stops heartbeating altogether and `web` keeps 8 alive: 14 of 22 leases lapse together,
    a mass expiry overall, but in `web` only 2 of 10; 2. `job`'s own guard keeps all 12 in
    answers and in PostgreSQL; 3. `web`'s 2 silent ones are reaped and leave the answers, as if
    `job` did not exist."""
    # the 22 renewals below land in one batch
    config = make_config(database_url=lease_db, lease_flush_interval_seconds=0.5, **GUARD)
    job, web = f"{unique_name}-job", f"{unique_name}-web"
    web_ips = [f"10.7.1.{i}" for i in range(1, 11)]
    alive, silent = web_ips[:8], web_ips[8:]
    leases = [(job, f"10.7.0.{i}") for i in range(1, 13)] + [(web, ip) for ip in web_ips]
    async with run_app(config) as app, client(app) as http:
        await create(http, job)
        await create(http, web)
        # ttl 2 s: none lapses before the renewal below, even on a loaded machine
        await asyncio.gather(*(register(http, name, ip, 2) for name, ip in leases))
        answers = await asyncio.gather(*(heartbeat(http, name, ip) for name, ip in leases))
        assert [r.status for r in answers] == [200] * len(leases)
        assert len({(await r.json())["expires_at"] for r in answers}) == 1

        async def keep_alive() -> None:
            while True:
                for r in await asyncio.gather(*(heartbeat(http, web, ip) for ip in alive)):
                    assert r.status == 200
                await asyncio.sleep(0.2)

        beating = asyncio.create_task(keep_alive())
        try:

            async def silent_reaped() -> bool:
                assert len(await http_ips(http, job)) == 12
                assert len(await dns_ips(app, job)) == 12
                return set(await rows(lease_db, web)) == set(alive)

            await eventually(silent_reaped, timeout=10)
            assert await http_ips(http, web) == set(alive)
            assert await dns_ips(app, web) == set(alive)
            assert len(await rows(lease_db, job)) == 12
            assert await scrape(http, "sd_lease_mass_expiry_total") >= 1
            assert await scrape(http, "sd_lease_expired_total") == len(silent)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


async def test_database_outage_keeps_leases_and_the_guard_renews_them(
    make_config: Callable[..., Config], lease_db: str, unique_name: str
) -> None:
    """1. 20 leased endpoints (ttl 1 s) with heartbeats, through a proxy to PostgreSQL;
    2. the proxy is cut for 2.5 s: heartbeats fail with 503, yet every endpoint stays in HTTP and
    DNS answers (a copy that cannot hear renewals lets nothing lapse); 3. the database comes back
    with every lease lapsed: the first sweep refuses to delete, renews them all and counts
    sd_lease_mass_expiry_total; nothing disappears at any point; 4. heartbeats work again."""
    proxy = TcpProxy(lease_db)
    await proxy.start()
    try:
        via_proxy = proxy.url(lease_db)
        config = make_config(database_url=via_proxy, db_timeout_seconds=1.0, **GUARD)
        ips = [f"10.6.0.{i}" for i in range(1, 21)]
        async with run_app(config) as app, client(app) as http:
            await lease_all(http, unique_name, ips)

            async def all_visible() -> None:
                assert len(await http_ips(http, unique_name)) == 20
                assert len(await dns_ips(app, unique_name)) == 20

            await proxy.refuse()
            cut_until = time.time() + 2.5
            refused = 0
            while time.time() < cut_until:
                await all_visible()
                resp = await heartbeat(http, unique_name, ips[0])
                refused += resp.status == 503
                assert resp.status in (200, 503), await resp.text()  # 200: renewed before the cut
                await asyncio.sleep(0.1)
            assert refused > 0
            await proxy.restore()  # the same port again

            async def guarded() -> bool:
                await all_visible()
                return sample(app.metrics, "sd_lease_mass_expiry_total") >= 1

            await eventually(guarded, timeout=10)
            assert sample(app.metrics, "sd_lease_expired_total") == 0

            async def renewable() -> bool:
                await all_visible()
                return (await heartbeat(http, unique_name, ips[0])).status == 200

            await eventually(renewable, timeout=10)
            assert len(await rows(lease_db, unique_name)) == 20
    finally:
        await proxy.close()
