"""The registry copy stays fresh: LISTEN/NOTIFY between replicas, and reload after the LISTEN
connection is killed (notifications sent while it was down are lost, so it must reload)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
import asyncpg
import pytest
from helpers import eventually, sample
from pgproxy import NotificationHold

from service_discovery.app import App, run_app
from service_discovery.config import Config
from service_discovery.model import EndpointSpec, NamedPort, ServiceSpec
from service_discovery.notify import CHANGES_CHANNEL, LEASES_CHANNEL, NotifyKey

pytestmark = pytest.mark.asyncio


async def test_write_on_one_replica_reaches_the_other(
    app: App, make_config: Callable[..., Config], unique_name: str
) -> None:
    async with run_app(make_config()) as other:
        await app.catalog.create_service(ServiceSpec(unique_name))
        await app.catalog.register(unique_name, EndpointSpec("10.0.0.7", ("blue",)))
        await eventually(lambda: other.registry.is_live(unique_name, "10.0.0.7"))
        svc = other.registry.get(unique_name)
        assert svc is not None and svc.endpoints[0].tags == ("blue",)
        assert other.registry.index(unique_name) == app.registry.index(unique_name)


async def test_killed_listen_connection_reconnects_and_reloads(
    app: App, make_config: Callable[..., Config], database_url: str, unique_name: str
) -> None:
    """1. kill the LISTEN backend; 2. write while it is down (that NOTIFY is lost to it);
    3. the replica reconnects, reloads, and has the write; 4. later changes still arrive."""
    async with run_app(make_config()) as victim:
        reconnects = sample(victim.metrics, "sd_sync_listen_reconnects_total")
        pid = victim.sync.listen_pid()
        admin = await asyncpg.connect(database_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await app.catalog.create_service(ServiceSpec(unique_name))
        finally:
            await admin.close()
        await eventually(lambda: victim.registry.get(unique_name) is not None, timeout=10)
        await eventually(
            lambda: sample(victim.metrics, "sd_sync_listen_reconnects_total") > reconnects
        )
        assert victim.sync.listen_pid() != pid
        await app.catalog.register(unique_name, EndpointSpec("10.0.0.8"))
        await eventually(lambda: victim.registry.is_live(unique_name, "10.0.0.8"))


async def test_hostile_notifications_are_dropped_and_counted(
    app: App, database_url: str, unique_name: str
) -> None:
    """Any role that can connect may NOTIFY on our channels.
    1. a service with a leased endpoint; note its expiry, index, and the sync's reload count;
    2. another connection sends malformed payloads on both channels: a non-finite or absurd
       expiry, an address the database would refuse, versions that are no bigint, bad names,
       and a well-formed change to a version the service never had (these tagged with the
       real key, as a role that can read it would); changes with made-up data untagged, or
       tagged with another key;
    3. then one well-formed renewal, which proves the sync read past them in order;
    4. every bad payload was counted by channel, none changed the copy, none caused a reload."""
    await app.catalog.create_service(ServiceSpec(unique_name))
    ep = (await app.catalog.register(unique_name, EndpointSpec("10.9.0.1", (), 60))).endpoint
    assert ep.expires_at is not None
    index = app.registry.index(unique_name)
    reloads = sample(app.metrics, "sd_sync_full_reloads_total")
    name, ip = unique_name, "10.9.0.1"
    hostile_leases = [
        f'[["{name}", "{ip}", NaN]]',
        f'[["{name}", "{ip}", Infinity]]',
        f'[["{name}", "{ip}", 1e300]]',
        f'[["{name}", "{ip}", "soon"]]',
        f'[["{name}", "10.9.0.001", {ep.expires_at + 30}]]',
        '{"not": "a list"}',
    ]

    def change(*entry: object) -> str:
        return json.dumps({"b": [list(entry)]})

    admin = await asyncpg.connect(database_url)
    row = await admin.fetchrow("SELECT k1, k2 FROM sd_notify_key")
    key = NotifyKey(bytes(row["k1"]), bytes(row["k2"]))
    forged = change(name, index + 1, index, "10.66.6.6", [["evil"], None, None, None])
    hostile_changes = [
        key.sign(change(name, index + 1, index, "not-an-address")),
        key.sign(change(name, 2**64, index, ip)),
        key.sign(change(name, index + 1, index + 1, ip)),
        key.sign(change("not a name", index + 1, index, None)),
        key.sign("{"),
        key.sign(change(name, index + 1, index, ip, [["t"], "sixty", None, None, "extra"])),
        key.sign(change(name, index + 1, None, None, {"not": "null"})),
        # well formed, but the service never reached that version: patching it in would put
        # the copy ahead of the database and make it skip every real change
        key.sign(change(name, 10**15, index, ip)),
        forged,  # no tag
        NotifyKey(b"k" * 32, b"l" * 32).sign(forged),
        key.tag(forged) + forged.replace("evil", "eviL"),
    ]
    renewed = ep.expires_at + 30
    try:
        for payload in hostile_leases:
            await admin.execute("SELECT pg_notify($1, $2)", LEASES_CHANNEL, payload)
        for payload in hostile_changes:
            await admin.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, payload)
        assert app.registry.endpoint(name, ip) == ep  # nothing applied yet, nor after:
        good = json.dumps([[name, ip, renewed]])
        await admin.execute("SELECT pg_notify($1, $2)", LEASES_CHANNEL, good)
    finally:
        await admin.close()
    await eventually(lambda: (app.registry.endpoint(name, ip) or ep).expires_at == renewed)
    rejected = "sd_sync_notifications_rejected_total"
    assert sample(app.metrics, rejected, channel=LEASES_CHANNEL) == len(hostile_leases)
    assert sample(app.metrics, rejected, channel=CHANGES_CHANNEL) == len(hostile_changes)
    assert sample(app.metrics, "sd_sync_full_reloads_total") == reloads
    assert app.registry.index(name) == index and app.registry.is_live(name, ip)
    assert not app.registry.is_live(name, "10.66.6.6")


async def test_listing_watcher_hears_a_change_that_arrives_after_a_newer_local_write(
    app: App, make_config: Callable[..., Config], database_url: str, unique_name: str
) -> None:
    """Replica A hears notifications through a proxy that can hold them; `app` is replica B.
    1. A holds back what it hears; B creates service `old` (registry version N);
    2. A writes version N+1 (an endpoint of another service) and applies it at once;
    3. A's listing does not claim N+1 yet: N is missing from it, so its index stays below N;
    4. a blocking `/services` query on A waits at that index; A is then released and hears N:
       the query returns at once, with `old` listed and an index past N+1."""
    mine, old = unique_name, unique_name + "-old"
    await app.catalog.create_service(ServiceSpec(mine))
    async with NotificationHold(database_url) as hold:
        async with run_app(make_config(database_url=hold.url)) as a:
            await eventually(lambda: a.registry.get(mine) is not None)
            hold.holding = True
            created = await app.catalog.create_service(ServiceSpec(old))
            await a.catalog.register(mine, EndpointSpec("10.8.0.1"))
            written = a.registry.index(mine)
            assert written > created.version
            assert a.registry.is_live(mine, "10.8.0.1")  # read-your-writes all the same
            async with aiohttp.ClientSession(f"http://127.0.0.1:{a.http_port}") as http:
                async with http.get("/services") as resp:
                    names = {s["name"] for s in await resp.json()}
                    index = int(resp.headers["X-Index"])
                assert old not in names and index < created.version
                path = f"/services?index={index}&wait=10s"
                blocked = asyncio.create_task(http.get(path))
                await asyncio.sleep(0.3)
                assert not blocked.done()
                hold.release()
                async with await asyncio.wait_for(blocked, 2) as resp:
                    names = {s["name"] for s in await resp.json()}
                    assert old in names, "the watcher was not told of the change it missed"
                    assert int(resp.headers["X-Index"]) >= written


async def test_changes_are_applied_from_their_notifications_without_a_read(
    app: App, make_config: Callable[..., Config], unique_name: str
) -> None:
    """Replica A and `app` (B) on one database.
    1. B creates a service with a port, registers a leased endpoint with tags, bulk-registers
       three more, deregisters one and deletes another service;
    2. A's copy follows each step exactly (same endpoints, tags, lease, version);
    3. A read nothing for them (sd_sync_reads_total unchanged): the notifications carried it;
    4. a service of 31 endpoints, too large to carry, is read: the counter moves."""
    name, doomed, big = unique_name, unique_name + "-doomed", unique_name + "-big"
    async with run_app(make_config()) as a:
        text = a.metrics.render().decode()
        # both series exist from the start (an alert on them needs no first read)
        assert 'sd_sync_reads_total{what="endpoint"}' in text
        assert 'sd_sync_reads_total{what="service"}' in text
        reads = sample(a.metrics, "sd_sync_reads_total", what="service") + sample(
            a.metrics, "sd_sync_reads_total", what="endpoint"
        )
        ports = {"http": NamedPort("http", "tcp", 80)}
        await app.catalog.create_service(ServiceSpec(name, named_ports=ports))
        await app.catalog.create_service(ServiceSpec(doomed))
        await app.catalog.register(name, EndpointSpec("10.5.0.1", ("blue",), 60))
        specs = tuple(EndpointSpec(f"10.5.0.{i}") for i in (2, 3, 4))
        await app.catalog.register_many(name, specs)
        await app.catalog.deregister(name, "10.5.0.3")
        await app.catalog.delete_service(doomed)
        await eventually(lambda: a.registry.index() >= app.registry.index(doomed))
        mine, theirs = app.registry.get(name), a.registry.get(name)
        assert theirs is not None and mine is not None
        assert sorted(theirs.endpoints, key=lambda e: e.ip) == sorted(
            mine.endpoints, key=lambda e: e.ip
        )
        assert [e.ip for e in theirs.endpoints if e.expires_at] == ["10.5.0.1"]
        assert theirs.named_ports == mine.named_ports and theirs.version == mine.version
        assert a.registry.get(doomed) is None
        after = sample(a.metrics, "sd_sync_reads_total", what="service") + sample(
            a.metrics, "sd_sync_reads_total", what="endpoint"
        )
        assert after == reads, "a change that fits a notification was read from the database"

        await app.catalog.create_service(ServiceSpec(big))
        many = tuple(EndpointSpec(f"10.6.0.{i}") for i in range(1, 32))
        await app.catalog.register_many(big, many)
        await eventually(lambda: len(getattr(a.registry.get(big), "endpoints", ())) == 31)
        assert sample(a.metrics, "sd_sync_reads_total", what="service") > 0


async def test_a_change_heard_is_announced_with_the_version_it_made(
    app: App, make_config: Callable[..., Config], unique_name: str
) -> None:
    """Replica A hears what `app` (B) writes. 1. A's subscribers note A's registry version
    each time they are told of a change to the service; 2. B creates it, registers an endpoint,
    bulk-registers two and deregisters one; 3. when told of each, A's version already was that
    change's: a watcher answered at that moment gets an index that includes it."""
    async with run_app(make_config()) as a:
        told: list[int] = []
        a.catalog.subscribe(lambda key, _r: told.append(a.registry.version) if key else None)
        created = await app.catalog.create_service(ServiceSpec(unique_name))
        versions = [created.version]
        versions.append((await app.catalog.register(unique_name, EndpointSpec("10.4.0.1"))).index)
        many = (EndpointSpec("10.4.0.2"), EndpointSpec("10.4.0.3"))
        versions.append((await app.catalog.register_many(unique_name, many)).index)
        await app.catalog.deregister(unique_name, "10.4.0.2")
        versions.append(app.registry.index(unique_name))
        await eventually(lambda: a.registry.index(unique_name) == versions[-1])
        assert told == versions
