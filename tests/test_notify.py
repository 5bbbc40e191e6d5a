"""The NOTIFY payload codec: what sd_bump and a batch of writes send decodes, and payloads fit
a NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from service_discovery.model import Endpoint, LeaseRenewal, Service
from service_discovery.notify import (
    CHANGES_CHANNEL,
    LEASES_PER_NOTIFICATION,
    REGISTRY_CHANNEL,
    Bump,
    NotifyKey,
    decode_bumps,
    decode_changes,
    decode_leases,
    encode_leases,
)

_NOTIFY_LIMIT = 8000  # bytes: PostgreSQL refuses a longer payload


@pytest.mark.parametrize(
    ("payload", "bump"),
    [
        ('{"s" : "web", "v" : 7, "pv" : 6, "ip" : "10.0.0.1"}', Bump("web", 7, 6, "10.0.0.1")),
        ('{"s" : "web", "v" : 7, "pv" : null, "ip" : null}', Bump("web", 7, None, None)),
        (
            '{"s" : "web", "v" : 9, "pv" : 8, "ip" : "2001:db8::1"}',
            Bump("web", 9, 8, "2001:db8::1"),
        ),
    ],
)
def test_registry_payloads_decode(payload: str, bump: Bump) -> None:
    assert decode_bumps(payload) == [bump]


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "[]",
        "null",
        '{"v": 1}',
        '{"s": "web", "v": "x"}',
        '{"s": "web", "v": 7, "pv": 6}',  # a key missing
        '{"s": "web", "v": 7, "pv": 6, "ip": null, "x": 1}',  # a key too many
        '{"s": "web", "v": 7.5, "pv": 6, "ip": null}',
        '{"s": "web", "v": true, "pv": 0, "ip": null}',
        '{"s": "web", "v": 0, "pv": null, "ip": null}',
        '{"s": "web", "v": 9223372036854775808, "pv": 6, "ip": null}',  # past bigint
        '{"s": "web", "v": NaN, "pv": 6, "ip": null}',
        '{"s": "web", "v": 7, "pv": 7, "ip": null}',  # pv must be below v
        '{"s": "web", "v": 7, "pv": -1, "ip": null}',
        '{"s": "web", "v": 7, "pv": null, "ip": "10.0.0.1"}',  # a deletion names no endpoint
        '{"s": "Web", "v": 7, "pv": 6, "ip": null}',  # keys are lowercased
        '{"s": "-web", "v": 7, "pv": 6, "ip": null}',
        '{"s": 7, "v": 7, "pv": 6, "ip": null}',
        '{"s": "web", "v": 7, "pv": 6, "ip": "10.0.0.256"}',
        '{"s": "web", "v": 7, "pv": 6, "ip": " 10.0.0.1"}',  # not host() output
        '{"s": "web", "v": 7, "pv": 6, "ip": "2001:DB8::1"}',
        '{"s": "web", "v": 7, "pv": 6, "ip": 167772161}',
        '{"b": []}',  # batches: every change checked, the payload dropped whole
        '{"b": [["web", 7, 6, null], ["web", 8, 7]]}',
        '{"b": [["web", 7, 6, null], ["web", NaN, 7, null]]}',
        '{"b": [["web", 7, 6, null]], "s": "web"}',
        '{"b": {"web": [7, 6, null]}}',
        '{"b": [["web", 7, 6, "10.0.0.1"], ["Web", 8, 7, null]]}',
    ],
)
def test_malformed_registry_payloads_raise_value_error(payload: str) -> None:
    with pytest.raises(ValueError):
        decode_bumps(payload)


def test_lease_payloads_round_trip_and_fit_a_notify() -> None:
    """1. the longest renewals: a 63-character name, a full IPv6 address, a long float;
    2. encoded LEASES_PER_NOTIFICATION to a payload, each under PostgreSQL's limit;
    3. decoded back, they are the renewals sent."""
    name = "a" * 63
    renewals = [
        LeaseRenewal(
            name, f"2001:db8:ffff:ffff:ffff:ffff:ffff:{0x1000 + i:x}", 1_700_000_000.12345 + i
        )
        for i in range(2 * LEASES_PER_NOTIFICATION + 1)
    ]
    payloads = encode_leases(renewals)
    assert len(payloads) == 3
    assert all(len(p.encode()) < _NOTIFY_LIMIT for p in payloads)
    now = 1_700_000_000.0
    assert [r for p in payloads for r in decode_leases(p, now)] == renewals


@pytest.mark.parametrize(
    "payload",
    [
        "{}",
        "[]",
        "[[1, 2]]",
        "[1]",
        "not json",
        '[["web", "10.0.0.1", NaN]]',
        '[["web", "10.0.0.1", Infinity]]',
        '[["web", "10.0.0.1", -Infinity]]',
        '[["web", "10.0.0.1", 1e400]]',  # overflows to inf
        '[["web", "10.0.0.1", 1e300]]',  # a lease no one can renew that far
        '[["web", "10.0.0.1", 0]]',
        '[["web", "10.0.0.1", "1700000000"]]',
        '[["web", "10.0.0.1", true]]',
        '[["web", "10.0.0.1", 1700000000, 1]]',
        '[["Web", "10.0.0.1", 1700000000]]',
        '[["web", "10.0.0.01", 1700000000]]',
        '[["web", "::FFFF:10.0.0.1", 1700000000]]',
        '[["web", "10.0.0.1", 1700000000], ["web", "10.0.0.2", NaN]]',  # dropped whole
        "[" + ", ".join(['["web", "10.0.0.1", 1700000000]'] * (LEASES_PER_NOTIFICATION + 1)) + "]",
    ],
)
def test_malformed_lease_payloads_raise_value_error(payload: str) -> None:
    with pytest.raises(ValueError):
        decode_leases(payload, 1_700_000_000.0)


def test_lease_expiries_up_to_the_longest_lease_from_now_decode() -> None:
    now = time.time()
    week = 7 * 24 * 3600
    payload = f'[["web", "10.0.0.1", {now + week}], ["web", "::ffff:10.0.0.1", {now - 5}]]'
    assert [r.expires_at for r in decode_leases(payload, now)] == [now + week, now - 5]


async def test_what_sd_bump_sends_decodes(database_url: str, unique_name: str) -> None:
    """1. LISTEN on sd_registry; 2. create a service and bump it as the store does (sd_bump);
    3. the payload decodes to its name and versions; 4. delete it: the payload has no previous
    version."""
    conn = await asyncpg.connect(database_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await conn.add_listener(REGISTRY_CHANNEL, lambda *args: heard.put_nowait(args[3]))
        async with conn.transaction():
            sid = await conn.fetchval(
                "INSERT INTO services (name) VALUES ($1) RETURNING id", unique_name
            )
            version = await conn.fetchval("SELECT sd_bump($1, $2)", sid, unique_name)
        bumps = decode_bumps(await asyncio.wait_for(heard.get(), 10))
        assert bumps == [Bump(unique_name, version, 0, None)]
        async with conn.transaction():
            await conn.execute("DELETE FROM services WHERE id = $1", sid)
            deleted = await conn.fetchval("SELECT sd_bump($1, $2)", sid, unique_name)
        bumps = decode_bumps(await asyncio.wait_for(heard.get(), 10))
        assert bumps == [Bump(unique_name, deleted, None, None)]
    finally:
        await conn.close()


async def test_what_a_batch_of_writes_sends_decodes_and_fits(database_url: str) -> None:
    """1. LISTEN on sd_registry; 2. one sd_write_batch call creates a service with the longest
    name and registers 300 endpoints with full IPv6 addresses in it; 3. the changes arrive in
    several payloads, each under PostgreSQL's limit; 4. decoded, they are the batch's changes
    in order: consecutive versions, each naming the one before, with its endpoint."""
    name = "b" + uuid.uuid4().hex + "b" * 30  # 63 characters
    ips = [f"2001:db8:ffff:ffff:ffff:ffff:ffff:{0xF000 + i:x}" for i in range(300)]
    ops = [{"k": "create", "s": name}] + [
        {"k": "register", "s": name, "ip": ip, "t": [], "ttl": None} for ip in ips
    ]
    conn = await asyncpg.connect(database_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await conn.add_listener(REGISTRY_CHANNEL, lambda *args: heard.put_nowait(args[3]))
        rows = await conn.fetch("SELECT * FROM sd_write_batch($1::jsonb, 100000)", json.dumps(ops))
        assert [r["code"] for r in rows] == ["ok"] * len(ops)
        payloads = []
        bumps: list[Bump] = []
        while len(bumps) < len(ops):
            payloads.append(await asyncio.wait_for(heard.get(), 10))
            bumps.extend(decode_bumps(payloads[-1]))
    finally:
        await conn.close()
    assert len(payloads) > 1
    assert all(len(p.encode()) < _NOTIFY_LIMIT for p in payloads)
    first = rows[0]["version"]
    assert bumps[0] == Bump(name, first, 0, None)
    assert bumps[1:] == [Bump(name, first + 1 + i, first + i, ip) for i, ip in enumerate(ips)]


@contextlib.asynccontextmanager
async def _hearing_changes(
    database_url: str,
) -> AsyncIterator[tuple[asyncpg.Connection, NotifyKey, asyncio.Queue[str]]]:
    """A connection LISTENing on sd_changes, the database's tag keys, and the payloads heard."""
    conn = await asyncpg.connect(database_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        row = await conn.fetchrow("SELECT k1, k2 FROM sd_notify_key")
        await conn.add_listener(CHANGES_CHANNEL, lambda *args: heard.put_nowait(args[3]))
        yield conn, NotifyKey(bytes(row["k1"]), bytes(row["k2"])), heard
    finally:
        await conn.close()


async def _write_batch(conn: asyncpg.Connection, ops: list[dict[str, object]]) -> list[Any]:
    """sd_write_batch's rows for `ops`, every write succeeded."""
    rows = await conn.fetch("SELECT * FROM sd_write_batch($1::jsonb, 100)", json.dumps(ops))
    assert [r["code"] for r in rows] == ["ok"] * len(ops)
    return rows


async def test_sd_changes_carries_each_change_with_what_it_left(database_url: str) -> None:
    """1. LISTEN on sd_changes; 2. one batch creates a service with a port, registers two
    endpoints (one leased, with tags), deregisters one, and bulk-registers two more; then
    sd_bump alone deletes the service; 3. every payload's tag matches the database's key;
    4. the endpoint changes carry their rows (null once deregistered), the whole-service
    changes carry the service as the batch left it, the deletion carries null."""
    name = "c" + uuid.uuid4().hex
    ops = [
        {"k": "create", "s": name, "a": {"team": "x"}, "p": [["http", "tcp", 80, 1, 1]]},
        {"k": "register", "s": name, "ip": "10.1.0.1", "t": ["blue", "x=1"], "ttl": 60},
        {"k": "register", "s": name, "ip": "2001:db8::2", "t": [], "ttl": None},
        {"k": "deregister", "s": name, "ip": "2001:db8::2"},
        {"k": "bulk", "s": name, "r": False, "e": [["10.1.0.3", [], None], ["10.1.0.4", [], None]]},
    ]
    async with _hearing_changes(database_url) as (conn, key, heard):
        rows = await _write_batch(conn, ops)
        bumps = decode_changes(await asyncio.wait_for(heard.get(), 10), key)
        async with conn.transaction():
            sid = await conn.fetchval("SELECT id FROM services WHERE name = $1", name)
            await conn.execute("DELETE FROM services WHERE id = $1", sid)
            deleted = await conn.fetchval("SELECT sd_bump($1, $2)", sid, name)
        gone = decode_changes(await asyncio.wait_for(heard.get(), 10), key)
    v = rows[0]["version"]
    assert [(b.version, b.prev_version, b.ip, b.carried) for b in bumps] == [
        (v, 0, None, True),
        (v + 1, v, "10.1.0.1", True),
        (v + 2, v + 1, "2001:db8::2", True),
        (v + 3, v + 2, "2001:db8::2", True),
        (v + 4, v + 3, None, True),
    ]
    leased = bumps[1].data
    assert isinstance(leased, Endpoint) and leased.tags == ("blue", "x=1")
    assert leased.ttl_seconds == 60 and leased.expires_at is not None
    assert bumps[2].data is None and bumps[3].data is None  # gone by the batch's end
    for whole in (bumps[0], bumps[4]):  # the service as the batch left it
        svc = whole.data
        assert isinstance(svc, Service) and svc.version == whole.version
        assert svc.attributes == {"team": "x"} and list(svc.named_ports) == ["http"]
        assert sorted(e.ip for e in svc.endpoints) == ["10.1.0.1", "10.1.0.3", "10.1.0.4"]
    assert gone == [Bump(name, deleted, None, None, True, None)]


async def test_sd_changes_payloads_fit_and_large_services_go_without_data(
    database_url: str,
) -> None:
    """1. a batch makes 40 whole-service changes to services of 30 endpoints with long tags
    (each near the size carried) and one to a service of 31 endpoints; 2. every payload is
    under PostgreSQL's limit; 3. the 30-endpoint services came with their data, the
    31-endpoint one without, its creation too (the data is what the batch left; a replica
    reads it)."""
    tags = ["t" * 24]
    names = ["f" + uuid.uuid4().hex[:12] + f"-{i}" for i in range(41)]
    ops: list[dict[str, object]] = []
    for i, name in enumerate(names):
        count = 31 if i == 40 else 30
        endpoints = [[f"2001:db8::{i:x}:{j:x}", tags, None] for j in range(count)]
        ops.append({"k": "create", "s": name})
        ops.append({"k": "bulk", "s": name, "r": False, "e": endpoints})
    async with _hearing_changes(database_url) as (conn, key, heard):
        await _write_batch(conn, ops)
        payloads: list[str] = []
        bumps: list[Bump] = []
        while len(bumps) < len(ops):
            payloads.append(await asyncio.wait_for(heard.get(), 10))
            bumps.extend(decode_changes(payloads[-1], key))
    print("largest payload", max(len(p.encode()) for p in payloads), "bytes")
    assert max(len(p.encode()) for p in payloads) < _NOTIFY_LIMIT
    carried = [b.service for b in bumps if b.carried]
    assert carried == [n for n in names[:40] for _ in range(2)]
    assert [b.service for b in bumps[-2:] if not b.carried] == [names[40]] * 2
