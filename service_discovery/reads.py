"""Reading the registry out of PostgreSQL: the queries a registry copy is loaded and patched
with (services at one registry version, single endpoint rows), and the connection setup that the
sync's LISTEN connection and the store's pool share (codecs).

Writers use `read_services` too, to return what they committed (read-your-writes).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from typing import Any

import asyncpg
from asyncpg import Record

from service_discovery.errors import StoreUnavailable
from service_discovery.model import Endpoint, NamedPort, Service, Snapshot
from service_discovery.notify import NotifyKey
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
_ALL_ENDPOINTS_SQL = _ENDPOINTS_SQL.format(where="").replace("ORDER BY e.service_id, e.ip", "")


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
        endpoints.setdefault(r["service_id"], []).append(_endpoint(r))
    out: dict[str, Service] = {}
    for r in srows:
        svc = _service(r, ports, endpoints.get(r["id"], []))
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


async def stream_snapshot(
    conn: asyncpg.Connection, chunk_rows: int, timeout: float
) -> AsyncGenerator[tuple[int, list[Service]]]:
    """The whole registry in one REPEATABLE READ snapshot, as (its registry version, some of its
    services), the rows read `chunk_rows` at a time; every service is handed out once.

    The rows come through server-side cursors and `timeout` bounds each round trip (no
    progress), not the whole read: a large registry takes as long as it takes, and the caller's
    loop serves everything else between chunks. Endpoints come in the table's order (a
    sequential scan: sorting a million rows costs PostgreSQL seconds), so the services are
    handed out at the end, about `chunk_rows` endpoints' worth at a time (before that, an
    empty list after each chunk: the caller's turn).
    """
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            version = await conn.fetchval("SELECT version FROM registry_state", timeout=timeout)
            heads: list[Record] = []
            async for rows in _chunks(conn, _SERVICES_SQL.format(where=""), chunk_rows, timeout):
                heads += rows
            ports: dict[Any, dict[str, NamedPort]] = {}
            async for rows in _chunks(conn, _PORTS_SQL.format(where=""), chunk_rows, timeout):
                for r in rows:
                    ports.setdefault(r[0], {})[r[1]] = NamedPort(r[1], r[2], r[3], r[4], r[5])
            endpoints: dict[Any, list[Endpoint]] = {}
            async for rows in _chunks(conn, _ALL_ENDPOINTS_SQL, chunk_rows, timeout):
                for r in rows:
                    ep = Endpoint(r[1], tuple(r[2]), r[3], r[4], r[5])
                    if (eps := endpoints.get(r[0])) is None:
                        endpoints[r[0]] = [ep]
                    else:
                        eps.append(ep)
                yield version, []  # the caller's turn between chunks
        out: list[Service] = []
        size = 0
        for head in heads:
            eps = endpoints.pop(head[0], [])
            out.append(_service(head, ports, eps))
            size += len(eps) + 1
            if size >= chunk_rows:
                yield version, out
                out, size = [], 0
        yield version, out
    except UNAVAILABLE_ERRORS as exc:
        raise unavailable(exc) from exc


async def _chunks(
    conn: asyncpg.Connection, sql: str, size: int, timeout: float
) -> AsyncIterator[list[Record]]:
    """The rows of `sql`, `size` at a time, through a cursor (inside the caller's transaction).
    The next chunk is asked for before this one is handed out: PostgreSQL reads and sends it
    while the caller builds objects from this one."""
    cursor = await conn.cursor(sql, timeout=timeout)
    ahead: asyncio.Future[list[Record]] | None = asyncio.ensure_future(
        cursor.fetch(size, timeout=timeout)
    )
    try:
        while ahead is not None:
            rows = await ahead
            ahead = None
            if len(rows) == size:
                ahead = asyncio.ensure_future(cursor.fetch(size, timeout=timeout))
                await asyncio.sleep(0)  # it sends the request now
            if rows:
                yield rows
    finally:
        if ahead is not None and not ahead.done():
            ahead.cancel()  # the caller gave up (an error, or stopping): the connection goes


def _endpoint(r: Record) -> Endpoint:
    return Endpoint(r["ip"], tuple(r["tags"]), r["ttl_seconds"], r["expires_at"], r["instance_id"])


def _service(r: Record, ports: dict[Any, dict[str, NamedPort]], eps: list[Endpoint]) -> Service:
    return Service(
        id=str(r["id"]),
        name=r["name"],
        attributes=r["attributes"],
        named_ports=ports.get(r["id"], {}),
        endpoints=tuple(eps),
        version=r["version"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


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


async def read_notify_key(conn: asyncpg.Connection, timeout: float) -> NotifyKey:
    """The keys `sd_changes` payloads are tagged with (only the daemon's roles can read them)."""
    row = await conn.fetchrow("SELECT k1, k2 FROM sd_notify_key", timeout=timeout)
    if row is None:
        raise StoreUnavailable("sd_notify_key is empty: run the migrations")
    return NotifyKey(bytes(row["k1"]), bytes(row["k2"]))
