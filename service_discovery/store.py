"""PostgreSQL storage: writes go in batches, each one statement and one transaction
(`sd_write_endpoints` for registrations and deregistrations, migration 0011; `sd_write_batch`
for any other, migration 0005) that moves the registry version once per write and notifies
the replicas; every error leaves here as a typed RegistryError (23505 -> AlreadyExists, lost
connection -> StoreUnavailable) whose message says nothing of the database: what PostgreSQL and
the driver said (hosts, ports, constraint names, values) is its `detail`, for the log only
(pgerrors.py).

Writes return what they committed, so the caller can update its own registry copy before
answering (read-your-writes). Reads for serving never come here: they use the copy, which
`reads` loads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from service_discovery import writes
from service_discovery.config import Config
from service_discovery.errors import (
    RegistryError,
    StoreUnavailable,
)
from service_discovery.mass_expiry import mass_expiry_guards
from service_discovery.model import (
    Endpoint,
    LeaseRenewal,
    ReapResult,
    Snapshot,
)
from service_discovery.notify import LEASES_CHANNEL, encode_leases
from service_discovery.pgerrors import UNAVAILABLE_ERRORS as _UNAVAILABLE
from service_discovery.pgerrors import FailureLog, database_address, translate, unavailable
from service_discovery.reads import init_connection, read_snapshot

log = logging.getLogger(__name__)

REAPER_LOCK_KEY = 0x5D_1EA5E  # advisory lock: one reaper at a time across replicas


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pooled connections keep no session state but their limits (no LISTEN, SET or session
    advisory lock: the reaper's lock is transaction-scoped), so skip the reset round trip on
    every release."""


class Store:
    """The pool and every write. Each public method is one transaction."""

    def __init__(self, config: Config, url: str) -> None:
        self._config = config
        self._url = url
        self._pool: asyncpg.Pool | None = None
        self._where = database_address(url)
        self._log_failure = FailureLog()

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=self._config.db_pool_min_size,
                max_size=self._config.db_pool_max_size,
                init=self._init_connection,
                reset=_no_reset,
                timeout=self._config.db_timeout_seconds,
                command_timeout=self._config.db_timeout_seconds,
            )
        except _UNAVAILABLE as exc:
            raise unavailable(exc, self._where) from exc
        except asyncpg.PostgresError as exc:  # a wrong password, a database not created yet
            raise unavailable(exc, self._where) from exc

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        """The codecs, and this daemon's limits that the database checks on every write
        (migrations/0006.limits.sql: services, named ports per service)."""
        await init_connection(conn)
        await conn.execute(
            "SELECT set_config('sd.max_services', $1, false), "
            "set_config('sd.max_named_ports', $2, false)",
            str(self._config.max_services),
            str(self._config.max_named_ports),
        )

    async def close(self, timeout: float = 5.0) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout)
            except TimeoutError:
                self._pool.terminate()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction whose failures come out as typed errors, bounded by DB_TIMEOUT_SECONDS."""
        async with self._one() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def _one(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection whose failures come out as typed errors (single statements run
        in their own implicit transaction), their detail logged."""
        if self._pool is None:
            raise StoreUnavailable("database pool is not open")
        try:
            async with self._pool.acquire(timeout=self._config.db_timeout_seconds) as conn:
                yield conn
        except RegistryError:
            raise
        except Exception as exc:
            error = translate(exc, self._where)
            if error is None:
                raise
            self._log_failure(error)
            raise error from exc

    async def write_batch(
        self, batch: Sequence[writes.Write]
    ) -> list[writes.Committed | RegistryError]:
        """Write a batch in one statement (one transaction), in order; each write's outcome in
        its place: what it committed, or the error it alone failed with. StoreUnavailable: the
        database is away (nothing written, or all if the commit itself was cut); another error:
        the statement failed as a whole, nothing written (write them one at a time to know)."""
        if len(batch) == 1 and isinstance(batch[0], writes.Register | writes.Deregister):
            return [await self._write_one(batch[0])]
        limit = self._config.max_endpoints_per_service
        arrays = writes.endpoint_arrays(batch)
        if arrays is not None:  # the common batch, in typed arrays (migration 0011)
            # (addresses as text: asyncpg would parse each one in Python to send it as inet)
            async with self._one() as conn:
                rows = await conn.fetch(
                    "SELECT * FROM sd_write_endpoints($1, $2, $3::text[]::inet[], $4, $5, $6)",
                    *arrays,
                    limit,
                )
            return [writes.endpoint_outcome(w, r) for w, r in zip(batch, rows, strict=True)]
        async with self._one() as conn:
            rows = await conn.fetch(
                "SELECT * FROM sd_write_batch($1::jsonb, $2)",
                [writes.to_json(w) for w in batch],
                limit,
            )
        return [writes.outcome(w, r) for w, r in zip(batch, rows, strict=True)]

    async def _write_one(
        self, write: writes.Register | writes.Deregister
    ) -> writes.Committed | RegistryError:
        """A batch of one registration or deregistration, by the single-statement function made
        for it (`sd_register`, `sd_deregister`): a lone client's latency."""
        try:
            async with self._one() as conn:
                if isinstance(write, writes.Register):
                    spec, limit = write.spec, self._config.max_endpoints_per_service
                    r = await conn.fetchrow(
                        "SELECT * FROM sd_register($1, $2::inet, $3, $4, $5, $6)",
                        *(write.service, spec.ip, list(spec.tags), spec.ttl_seconds, limit),
                        spec.instance_id,
                    )
                else:
                    r = await conn.fetchrow(
                        "SELECT * FROM sd_deregister($1, $2::inet)", write.service, write.ip
                    )
        except StoreUnavailable:
            raise
        except RegistryError as exc:
            return exc
        if isinstance(write, writes.Deregister):
            change: tuple[str, Endpoint | None] = (write.ip, None)
        else:
            cols = ("ip", "tags", "ttl_seconds", "expires_at", "instance_id")
            change = (r["ip"], writes.endpoint_of([r[c] for c in cols]))
        return writes.Committed(
            r["service"], r["version"], r["prev_version"], False, endpoints=(change,)
        )

    async def snapshot(self, names: Iterable[str] | None = None) -> Snapshot:
        """Read services in one snapshot (a writer whose copy missed a change uses this)."""
        if self._pool is None:
            raise StoreUnavailable("database pool is not open")
        try:
            async with self._pool.acquire(timeout=self._config.db_timeout_seconds) as conn:
                return await read_snapshot(conn, names)
        except _UNAVAILABLE as exc:  # no connection from the pool
            error = unavailable(exc, self._where)
            self._log_failure(error)
            raise error from exc
        except StoreUnavailable as error:  # the read itself failed
            self._log_failure(error)
            raise

    async def renew_leases(self, leases: Sequence[tuple[str, str]]) -> list[LeaseRenewal]:
        """Renew many (lowercased service, ip) leases in one transaction and tell the replicas.

        Endpoints that do not exist (or have no lease) are left out of the result: the caller
        answers NotFound for them. Heartbeats do not move the registry version: a renewal
        changes no answer.
        """
        names = [s.lower() for s, _ in leases]
        ips = [ip for _, ip in leases]
        async with self._tx() as conn:
            return await _renew(
                conn,
                """SELECT e.service_id, e.ip
                   FROM unnest($1::text[], $2::inet[]) AS h(name, ip)
                   JOIN services s ON lower(s.name) = h.name
                   JOIN endpoints e ON e.service_id = s.id AND e.ip = h.ip
                   WHERE e.ttl_seconds IS NOT NULL""",
                names,
                ips,
            )

    async def reap_expired(self, share: float, minimum: int) -> ReapResult | None:
        """One reaper sweep: delete lapsed leases, or renew them where a guard holds.

        Returns None when another replica holds the reaper lock (it does this round's work).
        Under mass expiry (`mass_expiry_guards`: a service's own, or everywhere) the lapsed
        leases it covers are not deleted but renewed for their ttl from now, as if their owners
        had sent a heartbeat, so live instances get one full ttl to renew after an outage and
        dead ones lapse again (and are reaped then, if they are few enough).
        """
        async with self._tx() as conn:
            # Transaction-scoped: released at commit or rollback, even if this replica dies.
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", REAPER_LOCK_KEY):
                return None
            counted = await conn.fetch(
                """SELECT e.service_id, s.name, count(*) AS leased,
                          count(*) FILTER (WHERE e.expires_at <= now()) AS expired
                   FROM endpoints e JOIN services s ON s.id = e.service_id
                   WHERE e.expires_at IS NOT NULL GROUP BY e.service_id, s.name"""
            )
            leased = sum(r["leased"] for r in counted)
            if not any(r["expired"] for r in counted):
                return ReapResult(0, leased, False, {})
            counts = {r["service_id"]: (r["expired"], r["leased"]) for r in counted}
            guarded, everywhere = mass_expiry_guards(counts, share, minimum)
            if everywhere:
                renewed = await _renew(
                    conn, "SELECT service_id, ip FROM endpoints WHERE expires_at <= now()"
                )
                return ReapResult(0, leased, True, {}, renewed)
            kept = sorted(guarded)
            renewed = []
            if kept:
                renewed = await _renew(
                    conn,
                    """SELECT service_id, ip FROM endpoints
                       WHERE expires_at <= now() AND service_id = ANY($1::uuid[])""",
                    kept,
                )
            names = sorted(r["name"] for r in counted if r["service_id"] in guarded)
            # Lock the services first, in id order, as every other writer locks its service
            # before its endpoints and the registry version: no lock cycle.
            services = await conn.fetch(
                """SELECT id, name FROM services WHERE id IN
                     (SELECT service_id FROM endpoints WHERE expires_at <= now())
                   AND id <> ALL($1::uuid[])
                   ORDER BY id FOR UPDATE""",
                kept,
            )
            gone = await conn.fetch(
                """DELETE FROM endpoints WHERE service_id = ANY($1) AND expires_at <= now()
                   RETURNING service_id, host(ip) AS ip""",
                [r["id"] for r in services],
            )
            ips: dict[Any, list[str]] = {}
            for r in gone:
                ips.setdefault(r["service_id"], []).append(r["ip"])
            bumped = [(r["id"], r["name"]) for r in services if r["id"] in ips]
            # One endpoint gone: name it, so replicas patch their copy instead of reading the
            # whole service. One statement bumps every service (not a round trip each).
            rows = await conn.fetch(
                """SELECT b.name, sd_bump(b.id, b.name, b.ip) AS version
                   FROM unnest($1::uuid[], $2::text[], $3::inet[]) AS b(id, name, ip)""",
                [sid for sid, _ in bumped],
                [name for _, name in bumped],
                [ips[sid][0] if len(ips[sid]) == 1 else None for sid, _ in bumped],
            )
            versions = {r["name"].lower(): r["version"] for r in rows}
            return ReapResult(len(gone), leased, False, versions, renewed, names)


async def _renew(conn: asyncpg.Connection, select_sql: str, *args: Any) -> list[LeaseRenewal]:
    """Renew the leases `select_sql` picks (service_id, ip) for their ttl from now(), and send
    the new expiries to every replica on sd_leases (`notify.encode_leases`, delivered at commit).

    Only expires_at changes, and no index covers it, so each renewal is a HOT update: no index
    entry is written. Rows are locked in key order first, so two replicas renewing overlapping
    sets (heartbeats, the reaper) wait for each other instead of deadlocking.
    """
    rows = await conn.fetch(
        f"""WITH picked AS ({select_sql}),
                 locked AS (SELECT e.service_id, e.ip FROM endpoints e
                            JOIN picked p ON p.service_id = e.service_id AND p.ip = e.ip
                            ORDER BY e.service_id, e.ip FOR UPDATE OF e)
            UPDATE endpoints e
            SET expires_at = now() + make_interval(secs => e.ttl_seconds)
            FROM locked l, services s
            WHERE e.service_id = l.service_id AND e.ip = l.ip AND s.id = e.service_id
              AND e.ttl_seconds IS NOT NULL
            RETURNING lower(s.name) AS service, host(e.ip) AS ip,
                      extract(epoch FROM e.expires_at)::float8 AS expires_at""",
        *args,
    )
    renewals = [LeaseRenewal(r["service"], r["ip"], r["expires_at"]) for r in rows]
    if renewals:
        # The renewals travel in the notifications, so no replica reads them back.
        await conn.execute(
            f"SELECT pg_notify('{LEASES_CHANNEL}', p) FROM unnest($1::text[]) AS p",
            encode_leases(renewals),
        )
    return renewals
