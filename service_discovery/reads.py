"""Reading the registry out of PostgreSQL: the queries a registry copy is loaded and patched
with (services at one registry version, single endpoint rows), and the connection setup that the
sync's LISTEN connection and the store's pool share (codecs).

Writers use `read_services` too, to return what they committed (read-your-writes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from service_discovery.model import Endpoint, NamedPort, Service, Snapshot
from service_discovery.pgerrors import UNAVAILABLE_ERRORS, database_address, unavailable


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(url: str, timeout: float) -> asyncpg.Connection:
    """A single connection (for LISTEN), with the same codecs as the pool.

    Every statement on it is bounded by `timeout` (command_timeout): a network that goes silent
    in the middle of a read would otherwise leave the sync waiting forever, still "connected".
    """
    try:
        conn = await asyncpg.connect(url, timeout=timeout, command_timeout=timeout)
    except UNAVAILABLE_ERRORS as exc:
        raise unavailable(exc, database_address(url)) from exc
    await init_connection(conn)
    return conn


_SERVICES_SQL = """
SELECT id, name, attributes, version,
       extract(epoch FROM created_at)::float8 AS created_at,
       extract(epoch FROM updated_at)::float8 AS updated_at
FROM services {where}
"""
_PORTS_SQL = """
SELECT p.service_id, p.name, p.protocol, p.port, p.priority, p.weight
FROM named_ports p {where}
"""
_ENDPOINTS_SQL = """
SELECT e.service_id, host(e.ip) AS ip, e.tags, e.ttl_seconds,
       extract(epoch FROM e.expires_at)::float8 AS expires_at, e.instance_id
FROM endpoints e {where}
ORDER BY e.service_id, e.ip
"""


async def read_services(conn: asyncpg.Connection, ids: Sequence[Any] | None) -> dict[str, Service]:
    if ids is None:
        srows = await conn.fetch(_SERVICES_SQL.format(where=""))
        prows = await conn.fetch(_PORTS_SQL.format(where=""))
        erows = await conn.fetch(_ENDPOINTS_SQL.format(where=""))
    else:
        srows = await conn.fetch(_SERVICES_SQL.format(where="WHERE id = ANY($1)"), ids)
        prows = await conn.fetch(_PORTS_SQL.format(where="WHERE service_id = ANY($1)"), ids)
        erows = await conn.fetch(_ENDPOINTS_SQL.format(where="WHERE service_id = ANY($1)"), ids)
    ports: dict[Any, dict[str, NamedPort]] = {}
    for r in prows:
        ports.setdefault(r["service_id"], {})[r["name"]] = NamedPort(
            r["name"], r["protocol"], r["port"], r["priority"], r["weight"]
        )
    endpoints: dict[Any, list[Endpoint]] = {}
    for r in erows:
        endpoints.setdefault(r["service_id"], []).append(
            Endpoint(r["ip"], tuple(r["tags"]), r["ttl_seconds"], r["expires_at"], r["instance_id"])
        )
    out: dict[str, Service] = {}
    for r in srows:
        sid = r["id"]
        svc = Service(
            id=str(sid),
            name=r["name"],
            attributes=r["attributes"],
            named_ports=ports.get(sid, {}),
            endpoints=tuple(endpoints.get(sid, ())),
            version=r["version"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )
        out[svc.key] = svc
    return out


async def read_snapshot(conn: asyncpg.Connection, names: Iterable[str] | None = None) -> Snapshot:
    """The whole registry (names=None) or some services, consistent with one registry version."""
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            version = await conn.fetchval("SELECT version FROM registry_state")
            if names is None:
                services = await read_services(conn, None)
            else:
                ids = await conn.fetch(
                    "SELECT id FROM services WHERE lower(name) = ANY($1::text[])",
                    [n.lower() for n in names],
                )
                services = await read_services(conn, [r["id"] for r in ids])
    except UNAVAILABLE_ERRORS as exc:
        raise unavailable(exc) from exc
    return Snapshot(version=version, services=services)


async def read_endpoints(
    conn: asyncpg.Connection, wanted: Sequence[tuple[str, str]]
) -> tuple[dict[tuple[str, str], Endpoint], dict[str, int]]:
    """The current rows of some (lowercased service name, ip) endpoints (absent ones are gone),
    and the current version of each of their services that still exists."""
    rows = await conn.fetch(
        """SELECT w.name AS service, s.version, host(e.ip) AS ip, e.tags, e.ttl_seconds,
                  extract(epoch FROM e.expires_at)::float8 AS expires_at, e.instance_id
           FROM unnest($1::text[], $2::inet[]) AS w(name, ip)
           JOIN services s ON lower(s.name) = w.name
           LEFT JOIN endpoints e ON e.service_id = s.id AND e.ip = w.ip""",
        [k for k, _ in wanted],
        [ip for _, ip in wanted],
    )
    endpoints = {
        (r["service"], r["ip"]): Endpoint(
            r["ip"], tuple(r["tags"]), r["ttl_seconds"], r["expires_at"], r["instance_id"]
        )
        for r in rows
        if r["ip"] is not None
    }
    return endpoints, {r["service"]: r["version"] for r in rows}
