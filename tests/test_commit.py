"""Group commit against the run's PostgreSQL: writes that queue while a batch is written go
together in the next one, each with its own outcome, writes to one service in arrival order,
versions and the copies of other replicas as before.

To make a batch of known writes, a first write is held inside PostgreSQL by a row lock taken
from a connection of the test (`gate`); the writes sent meanwhile queue behind it and, once the
lock is released, are written as one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import pytest
from helpers import eventually, put, sample

from service_discovery import writes
from service_discovery.app import App, run_app
from service_discovery.config import Config
from service_discovery.errors import AlreadyExists, InvalidInput, LimitExceeded, NotFound
from service_discovery.model import EndpointSpec

pytestmark = pytest.mark.asyncio

_LOCK_WAITERS = """SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'"""


@pytest.fixture
async def app(make_config: Callable[..., Config]) -> AsyncIterator[App]:
    config = make_config(max_endpoints_per_service=3)
    async with run_app(config) as started:
        yield started


@pytest.fixture
async def http(app: App) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{app.http_port}") as session:
        yield session


async def answer(
    http: aiohttp.ClientSession, method: str, path: str, body: object = None
) -> tuple[int, Any]:
    """(status, JSON body or None) of one request."""
    resp = await put(http, path, body) if method == "PUT" else await http.delete(path)
    return resp.status, None if resp.status == 204 else await resp.json()


async def submit(app: App, write: writes.Write) -> writes.Committed:
    assert app.commit is not None
    return await app.commit.submit(write)


def waiting(app: App) -> float:
    return sample(app.metrics, "sd_write_waiting")


@asynccontextmanager
async def gate(app: App, database_url: str, http: aiohttp.ClientSession, name: str) -> Any:
    """Hold a write inside PostgreSQL (it waits for the row lock of service `name`, which this
    takes) until the block ends; writes sent meanwhile queue for the next batch. Yields a
    function that waits until `n` writes wait in all (the held one included)."""
    assert (await put(http, "/service", {"name": name})).status == 201
    conn = await asyncpg.connect(database_url)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1 FROM services WHERE name = $1 FOR UPDATE", name)
        held = asyncio.create_task(put(http, f"/service/{name}/register", {"ip": "10.255.0.1"}))

        async def locked() -> bool:
            # from another connection: pg_stat_activity is frozen inside a transaction
            probe = await asyncpg.connect(database_url)
            try:
                return bool(await probe.fetchval(_LOCK_WAITERS))
            finally:
                await probe.close()

        await eventually(locked, 10, "the first write waits for the lock", 0.01)

        async def queued(n: int) -> None:
            await eventually(lambda: waiting(app) >= n, 10, f"{n} writes waiting", 0.01)

        yield queued
        await tx.rollback()
        assert (await held).status == 200
    finally:
        await conn.close()


async def test_one_bad_write_among_good_ones_fails_alone(
    app: App, http: aiohttp.ClientSession, database_url: str, unique_name: str
) -> None:
    """1. a full service (3 endpoints, the limit here) and an empty one;
    2. seven writes in one batch: two good registrations, a registration to a missing service
       (404), a duplicate service (409), a fourth endpoint (422), a deregistration of a missing
       endpoint (404) and new ports (200);
    3. each gets its own answer; the good ones are visible with distinct indexes, the others
       left no trace."""
    full, empty = f"{unique_name}-full", f"{unique_name}-empty"
    for name in (full, empty):
        assert (await put(http, "/service", {"name": name})).status == 201
    for i in range(3):
        assert (await put(http, f"/service/{full}/register", {"ip": f"10.0.0.{i}"})).status == 200
    calls = [
        ("PUT", f"/service/{empty}/register", {"ip": "10.1.0.1"}, 200),
        ("PUT", f"/service/{unique_name}-missing/register", {"ip": "10.1.0.2"}, 404),
        ("PUT", "/service", {"name": full.upper()}, 409),
        ("PUT", f"/service/{full}/register", {"ip": "10.1.0.3"}, 422),
        ("DELETE", f"/service/{empty}/endpoints/10.9.9.9", None, 404),
        ("PUT", f"/service/{empty}/register", {"ip": "10.1.0.4", "tags": ["b"]}, 200),
        ("PUT", f"/service/{full}/ports", {"http": {"port": 80}}, 200),
    ]
    async with gate(app, database_url, http, f"{unique_name}-gate") as queued:
        batches = sample(
            app.metrics, "sd_write_batch_writes_count"
        )  # the gate's write is in flight
        tasks = [asyncio.create_task(answer(http, m, p, b)) for m, p, b, _ in calls]
        await queued(1 + len(calls))
    answers = await asyncio.gather(*tasks)
    assert [status for status, _ in answers] == [want for *_, want in calls], answers
    assert answers[3][1]["error"] == "limit_exceeded" and "3 endpoints" in answers[3][1]["message"]
    assert answers[2][1]["error"] == "already_exists"
    # the gate's write, then these seven together
    assert sample(app.metrics, "sd_write_batch_writes_count") == batches + 2

    async with http.get(f"/service/{empty}") as resp:
        svc = await resp.json()
    assert sorted(e["ip"] for e in svc["endpoints"]) == ["10.1.0.1", "10.1.0.4"]
    async with http.get(f"/service/{full}") as resp:
        svc = await resp.json()
    assert [e["ip"] for e in svc["endpoints"]] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert svc["named_ports"]["http"]["port"] == 80
    conn = await asyncpg.connect(database_url)
    try:
        missing = await conn.fetchval(
            "SELECT count(*) FROM services WHERE name = $1", f"{unique_name}-missing"
        )
        versions = await conn.fetch(
            "SELECT name, version FROM services WHERE name = ANY($1)", [full, empty]
        )
    finally:
        await conn.close()
    assert missing == 0
    # the registry version moved once per good write: the indexes are distinct
    assert len({r["version"] for r in versions}) == 2


async def test_writes_to_one_service_apply_in_arrival_order(
    app: App, http: aiohttp.ClientSession, database_url: str, unique_name: str
) -> None:
    """1. six writes to one service queue behind a held batch, in a known order: register an
    endpoint, re-register it with other tags, deregister it, register it again, add a port,
    register a second endpoint; 2. they commit as one batch with increasing versions, in that
    order; 3. the copy and the database end in the state the last of them left."""
    assert (await put(http, "/service", {"name": unique_name})).status == 201
    ip = "10.2.0.1"
    ordered: list[writes.Write] = [
        writes.Register(unique_name, EndpointSpec(ip, ("one",))),
        writes.Register(unique_name, EndpointSpec(ip, ("two",))),
        writes.Deregister(unique_name, ip),
        writes.Register(unique_name, EndpointSpec(ip, ("three",), 300)),
        writes.AddPorts(unique_name, {"dns": _port("dns", 53)}),
        writes.Register(unique_name, EndpointSpec("10.2.0.2")),
    ]
    async with gate(app, database_url, http, f"{unique_name}-gate") as queued:
        # tasks start in creation order, so the writes queue in this order
        tasks = [asyncio.create_task(submit(app, w)) for w in ordered]
        await queued(1 + len(ordered))
    done = await asyncio.gather(*tasks)
    versions = [d.version for d in done]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    # each names the version before it: a chain a replica can follow
    assert [d.prev_version for d in done[1:]] == versions[:-1]
    assert done[1].stored[0].tags == ("two",) and done[2].removed == (ip,)

    async with http.get(f"/service/{unique_name}") as resp:
        svc = await resp.json()
        assert int(resp.headers["X-Index"]) == versions[-1]
    assert [(e["ip"], e["tags"], e.get("ttl_seconds")) for e in svc["endpoints"]] == [
        (ip, ["three"], 300),
        ("10.2.0.2", [], None),
    ]
    assert list(svc["named_ports"]) == ["dns"]
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            """SELECT e.tags, s.version FROM endpoints e JOIN services s ON s.id = e.service_id
               WHERE s.name = $1 AND e.ip = $2""",
            unique_name,
            ip,
        )
    finally:
        await conn.close()
    assert (row["tags"], row["version"]) == (["three"], versions[-1])


async def test_a_write_that_fails_the_whole_statement_fails_alone(
    app: App, http: aiohttp.ClientSession, database_url: str, unique_name: str
) -> None:
    """A write the model would have refused (an address PostgreSQL cannot parse) fails the
    batch's statement; the batch is then written one write at a time: that write alone fails
    (400), the others commit, and the retry is counted."""
    assert (await put(http, "/service", {"name": unique_name})).status == 201
    retries = sample(app.metrics, "sd_write_batch_retries_total")
    batch: list[writes.Write] = [
        writes.Register(unique_name, EndpointSpec("10.3.0.1")),
        writes.Register(unique_name, EndpointSpec("not-an-address")),
        writes.Register(f"{unique_name}-missing", EndpointSpec("10.3.0.2")),
        writes.Register(unique_name, EndpointSpec("10.3.0.3")),
    ]
    async with gate(app, database_url, http, f"{unique_name}-gate") as queued:
        tasks = [asyncio.create_task(submit(app, w)) for w in batch]
        await queued(1 + len(batch))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], InvalidInput), results[1]
    assert isinstance(results[2], NotFound), results[2]
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[3], BaseException)
    assert sample(app.metrics, "sd_write_batch_retries_total") == retries + 1
    async with http.get(f"/service/{unique_name}") as resp:
        ips = [e["ip"] for e in (await resp.json())["endpoints"]]
    assert ips == ["10.3.0.1", "10.3.0.3"]


async def test_another_replica_follows_a_batch(
    app: App,
    http: aiohttp.ClientSession,
    make_config: Callable[..., Config],
    database_url: str,
    unique_name: str,
) -> None:
    """1. a second replica on the same database; 2. a batch through the first one creates a
    service, registers endpoints in it, adds a port and deletes another service; 3. the second
    replica's copy reaches the same state and the same indexes (through batched NOTIFYs)."""
    other = f"{unique_name}-other"
    assert (await put(http, "/service", {"name": other})).status == 201
    async with run_app(make_config()) as replica:
        calls = [
            ("/service", {"name": unique_name}),
            *((f"/service/{unique_name}/register", {"ip": f"10.4.0.{i}"}) for i in range(3)),
            (f"/service/{unique_name}/ports", {"http": {"port": 80}}),
        ]
        async with gate(app, database_url, http, f"{unique_name}-gate") as queued:
            creation = asyncio.create_task(answer(http, "PUT", *calls[0]))
            await queued(2)  # the service exists before the writes into it queue
            tasks = [asyncio.create_task(answer(http, "PUT", *c)) for c in calls[1:]]
            tasks.append(asyncio.create_task(answer(http, "DELETE", f"/service/{other}")))
            await queued(2 + len(tasks))
        assert (await creation)[0] == 201
        assert [s for s, _ in await asyncio.gather(*tasks)] == [200] * 4 + [204]
        mine = app.registry.get(unique_name)
        assert mine is not None

        async def caught_up() -> bool:
            theirs = replica.registry.get(unique_name)
            return theirs is not None and theirs.version == mine.version

        await eventually(caught_up, 10, "the other replica has the batch")
        theirs = replica.registry.get(unique_name)
        assert theirs is not None
        # (in the order each copy learnt them: patched in, or read whole)
        assert set(theirs.endpoints) == set(mine.endpoints) and len(theirs.endpoints) == 3
        assert theirs.named_ports == mine.named_ports

        async def deleted() -> bool:
            return replica.registry.get(other) is None

        await eventually(deleted, 10, "the other replica saw the deletion")
        # (a replica that reads a deletion records the version it read it at)
        assert replica.registry.index(other) >= app.registry.index(other)


def _port(name: str, port: int) -> Any:
    from service_discovery.model import NamedPort

    return NamedPort(name, "udp", port)


async def test_endpoint_counts_follow_every_writer(
    app: App, http: aiohttp.ClientSession, database_url: str, unique_name: str
) -> None:
    """The endpoint count kept in each service's row (for the limit) matches its endpoints
    after registrations, re-registrations, deregistrations, a deletion, and a bulk load that
    bypasses the daemon."""
    assert (await put(http, "/service", {"name": unique_name})).status == 201
    for ip in ("10.6.0.1", "10.6.0.2", "10.6.0.1"):
        assert (await put(http, f"/service/{unique_name}/register", {"ip": ip})).status == 200
    assert (await http.delete(f"/service/{unique_name}/endpoints/10.6.0.2")).status == 204
    gone = f"{unique_name}-gone"
    assert (await put(http, "/service", {"name": gone})).status == 201
    assert (await put(http, f"/service/{gone}/register", {"ip": "10.6.1.1"})).status == 200
    assert (await http.delete(f"/service/{gone}")).status == 204
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """INSERT INTO endpoints (service_id, ip)
               SELECT s.id, ('10.6.2.' || g)::inet FROM services s, generate_series(1, 2) g
               WHERE s.name = $1""",
            unique_name,
        )
        wrong = await conn.fetch(
            """SELECT s.name, s.endpoint_count,
                      (SELECT count(*) FROM endpoints e WHERE e.service_id = s.id) AS real
               FROM services s
               WHERE s.endpoint_count <> (SELECT count(*) FROM endpoints e
                                          WHERE e.service_id = s.id)"""
        )
        mine = await conn.fetchval(
            "SELECT endpoint_count FROM services WHERE name = $1", unique_name
        )
    finally:
        await conn.close()
    assert wrong == []
    assert mine == 3


async def test_instance_ids_stay_unique_within_a_batch(
    app: App, http: aiohttp.ClientSession, database_url: str, unique_name: str
) -> None:
    """Instance IDs (the Consul API's ServiceIDs) name one endpoint across the registry, also
    among the writes of one batch: of two registrations giving one ID to different endpoints
    the first wins and the second fails alone (409), as does one taking an ID already stored;
    re-registering an endpoint without an ID keeps its ID."""
    assert (await put(http, "/service", {"name": unique_name})).status == 201
    taken = f"{unique_name}-taken"
    await submit(app, writes.Register(unique_name, EndpointSpec("10.7.0.9", instance_id=taken)))
    fresh = f"{unique_name}-fresh"
    batch: list[writes.Write] = [
        writes.Register(unique_name, EndpointSpec("10.7.0.1", instance_id=fresh)),
        writes.Register(unique_name, EndpointSpec("10.7.0.2", instance_id=fresh)),
        writes.Register(unique_name, EndpointSpec("10.7.0.3", instance_id=taken)),
        writes.Register(unique_name, EndpointSpec("10.7.0.9", ("kept",))),
    ]
    async with gate(app, database_url, http, f"{unique_name}-gate") as queued:
        tasks = [asyncio.create_task(submit(app, w)) for w in batch]
        await queued(1 + len(batch))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert not isinstance(results[0], BaseException)
    assert isinstance(results[1], AlreadyExists) and fresh in results[1].message
    assert isinstance(results[2], AlreadyExists) and taken in results[2].message
    assert not isinstance(results[3], BaseException)
    assert results[3].stored[0].instance_id == taken and results[3].stored[0].tags == ("kept",)
    assert app.catalog.instance(fresh) == (unique_name, "10.7.0.1")
    assert app.catalog.instance(taken) == (unique_name, "10.7.0.9")


async def test_a_batch_of_registrations_and_deregistrations_keeps_each_outcome(
    app: App, http: aiohttp.ClientSession, database_url: str, unique_name: str
) -> None:
    """The common batch (registrations without an instance ID and deregistrations of distinct
    endpoints: `sd_write_endpoints`, migration 0011) answers as any other batch:
    1. service `a` holds 10.8.0.1 (with an instance ID) and 10.8.0.2, `b` nothing, `c` is full;
    2. one batch: re-register 10.8.0.1 with tags and a lease, deregister 10.8.0.2, register in
       `b`, deregister a missing endpoint of `b` (404), register in a missing service (404),
       register 10.8.0.3 in `a`: each answer is its own, versions increase in order and each
       names the service's version before it; the answer is what was stored;
    3. a batch that would take `c` over its limit is written write by write: that registration
       fails alone (422), a registration in `b` and a deregistration in `c` after it commit;
       every service's endpoint count matches its endpoints."""
    a, b, c = (f"{unique_name}-{s}" for s in "abc")
    for name in (a, b, c):
        assert (await put(http, "/service", {"name": name})).status == 201
    iid = f"{unique_name}-iid"
    await submit(app, writes.Register(a, EndpointSpec("10.8.0.1", instance_id=iid)))
    await submit(app, writes.Register(a, EndpointSpec("10.8.0.2")))
    for i in range(1, 4):
        await submit(app, writes.Register(c, EndpointSpec(f"10.8.2.{i}")))
    before = {name: app.registry.index(name) for name in (a, b)}
    batch: list[writes.Write] = [
        writes.Register(a, EndpointSpec("10.8.0.1", ("x",), 300)),
        writes.Deregister(a, "10.8.0.2"),
        writes.Register(b, EndpointSpec("10.8.1.1")),
        writes.Deregister(b, "10.8.1.9"),
        writes.Register(f"{unique_name}-missing", EndpointSpec("10.8.9.1")),
        writes.Register(a.upper(), EndpointSpec("10.8.0.3")),
    ]
    assert writes.endpoint_arrays(batch) is not None  # the common batch's function
    async with gate(app, database_url, http, f"{unique_name}-gate") as queued:
        tasks = [asyncio.create_task(submit(app, w)) for w in batch]
        await queued(1 + len(batch))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], NotFound) and "10.8.1.9" in results[3].message
    assert isinstance(results[4], NotFound) and "missing" in results[4].message
    done = [r for r in results if isinstance(r, writes.Committed)]
    assert len(done) == 4
    assert [d.version for d in done] == sorted({d.version for d in done})
    r0, r1, r2, r5 = done
    assert (r0.prev_version, r1.prev_version, r5.prev_version) == (
        before[a],
        r0.version,
        r1.version,
    )
    assert r2.prev_version == before[b] and r1.removed == ("10.8.0.2",)
    assert r5.service == a and r5.stored[0].ip == "10.8.0.3"
    stored = r0.stored[0]
    assert (stored.tags, stored.ttl_seconds, stored.instance_id) == (("x",), 300, iid)
    conn = await asyncpg.connect(database_url)
    try:
        expires = await conn.fetchval(
            """SELECT extract(epoch FROM e.expires_at)::float8 FROM endpoints e
               JOIN services s ON s.id = e.service_id WHERE s.name = $1 AND e.ip = '10.8.0.1'""",
            a,
        )
    finally:
        await conn.close()
    assert stored.expires_at == expires
    assert [e.ip for e in app.registry.get(a).endpoints] == ["10.8.0.1", "10.8.0.3"]  # type: ignore[union-attr]
    assert app.registry.index(a) == r5.version and app.catalog.instance(iid) == (a, "10.8.0.1")

    # Step 3.
    over: list[writes.Write] = [
        writes.Register(c, EndpointSpec("10.8.2.4")),
        writes.Register(b, EndpointSpec("10.8.1.2")),
        writes.Deregister(c, "10.8.2.1"),
    ]
    async with gate(app, database_url, http, f"{unique_name}-gate2") as queued:
        tasks = [asyncio.create_task(submit(app, w)) for w in over]
        await queued(1 + len(over))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], LimitExceeded), results[0]
    assert [type(r) for r in results[1:]] == [writes.Committed] * 2, results
    for name, ips in ((b, ["10.8.1.1", "10.8.1.2"]), (c, ["10.8.2.2", "10.8.2.3"])):
        async with http.get(f"/service/{name}") as resp:
            assert [e["ip"] for e in (await resp.json())["endpoints"]] == ips
    # the endpoint counts (the limit's) moved with the versions, or by the triggers
    conn = await asyncpg.connect(database_url)
    try:
        counts = await conn.fetch(
            """SELECT s.name, s.endpoint_count,
                      (SELECT count(*) FROM endpoints e WHERE e.service_id = s.id) AS real
               FROM services s WHERE s.name = ANY($1)""",
            [a, b, c],
        )
    finally:
        await conn.close()
    assert {r["name"]: (r["endpoint_count"], r["real"]) for r in counts} == {
        a: (2, 2),
        b: (2, 2),
        c: (2, 2),
    }


async def test_only_the_common_batch_goes_to_its_function() -> None:
    """Registrations with an instance ID, two writes of one endpoint (their order matters) and
    any other kind of write go to sd_write_batch."""
    reg = writes.Register("s", EndpointSpec("10.0.0.1"))
    assert writes.endpoint_arrays([reg, writes.Deregister("t", "10.0.0.1")]) is not None
    assert writes.endpoint_arrays([reg, writes.Deregister("S", "10.0.0.1")]) is None
    assert (
        writes.endpoint_arrays([writes.Register("s", EndpointSpec("10.0.0.2", instance_id="i"))])
        is None
    )
    assert writes.endpoint_arrays([reg, writes.DeleteService("s")]) is None
