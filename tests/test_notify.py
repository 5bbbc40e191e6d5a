"""The NOTIFY payload codec: what sd_bump sends decodes, and lease payloads fit a NOTIFY."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service_discovery.model import LeaseRenewal
from service_discovery.notify import (
    LEASES_PER_NOTIFICATION,
    REGISTRY_CHANNEL,
    Bump,
    decode_bump,
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
    assert decode_bump(payload) == bump


@pytest.mark.parametrize("payload", ["", "[]", '{"v": 1}', '{"s": "web", "v": "x"}', "null"])
def test_malformed_registry_payloads_raise_value_error(payload: str) -> None:
    with pytest.raises(ValueError):
        decode_bump(payload)


def test_lease_payloads_round_trip_and_fit_a_notify() -> None:
    """1. the longest renewals: a 63-character name, a full IPv6 address, a long float;
    2. encoded LEASES_PER_NOTIFICATION to a payload, each under PostgreSQL's limit;
    3. decoded back, they are the renewals sent."""
    name = "a" * 63
    renewals = [
        LeaseRenewal(name, f"2001:db8:ffff:ffff:ffff:ffff:ffff:{i:04x}", 1_700_000_000.123456 + i)
        for i in range(2 * LEASES_PER_NOTIFICATION + 1)
    ]
    payloads = encode_leases(renewals)
    assert len(payloads) == 3
    assert all(len(p.encode()) < _NOTIFY_LIMIT for p in payloads)
    assert [r for p in payloads for r in decode_leases(p)] == renewals


@pytest.mark.parametrize("payload", ["{}", "[[1, 2]]", "[1]", "not json"])
def test_malformed_lease_payloads_raise_value_error(payload: str) -> None:
    with pytest.raises(ValueError):
        decode_leases(payload)


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
        bump = decode_bump(await asyncio.wait_for(heard.get(), 10))
        assert bump == Bump(unique_name, version, 0, None)
        async with conn.transaction():
            await conn.execute("DELETE FROM services WHERE id = $1", sid)
            deleted = await conn.fetchval("SELECT sd_bump($1, $2)", sid, unique_name)
        bump = decode_bump(await asyncio.wait_for(heard.get(), 10))
        assert bump == Bump(unique_name, deleted, None, None)
    finally:
        await conn.close()
