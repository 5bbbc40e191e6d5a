"""Keeps the registry copy fresh: LISTEN on a dedicated connection (a pool would UNLISTEN it),
apply what a notification carries (fetch what it only names), and after every reconnect reload
everything, because notifications sent while we were away are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from typing import Literal

import asyncpg

from service_discovery.config import Config
from service_discovery.errors import StoreUnavailable
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, EndpointChange, LeaseRenewal, Service
from service_discovery.notify import (
    CHANGES_CHANNEL,
    CHANNELS,
    LEASES_CHANNEL,
    Bump,
    NotifyKey,
    decode_changes,
    decode_leases,
)
from service_discovery.reads import (
    connect,
    read_endpoints,
    read_notify_key,
    read_snapshot,
    stream_snapshot,
)
from service_discovery.registry import Registry

log = logging.getLogger(__name__)

# Reconnect attempts: 50 ms, doubling to at most 0.5 s, each drawn at random from its upper half
# (replicas that lost the database together do not knock together). The cap bounds how long the
# copy stays stale once the database accepts connections again, as after a failover; an attempt
# costs the server one connection start, so a few replicas at two a second are harmless.
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 0.5
_PING_SECONDS = 5.0
_REJECT_LOG_SECONDS = 60.0  # at most one WARNING a minute for dropped notifications


class Sync:
    def __init__(self, config: Config, url: str, registry: Registry, metrics: Metrics) -> None:
        self._config = config
        self._url = url
        self._registry = registry
        self._metrics = metrics
        # per service, the notifications not yet applied
        self._pending: dict[str, list[Bump]] = {}
        self._pending_leases: list[LeaseRenewal] = []
        self._wakeup = asyncio.Event()
        self._lost = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._key: NotifyKey | None = None
        self._task: asyncio.Task[None] | None = None
        self._rejected_logged = -_REJECT_LOG_SECONDS
        self.synced = asyncio.Event()
        self.connected = False
        # When the copy was last known current (monotonic); None while it hears every change.
        # Before the first load it has never been current: stale since we started.
        self._stale_since: float | None = time.monotonic()

    async def start(self) -> None:
        """Run in the background; `synced` is set after the first load with LISTEN established."""
        self._task = asyncio.create_task(self._run(), name="sd-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            self._conn.terminate()

    def stale_seconds(self) -> float:
        """Seconds since the copy was last known current: 0 while LISTEN is up and loaded."""
        since = self._stale_since
        return 0.0 if since is None else time.monotonic() - since

    def listen_pid(self) -> int | None:
        """The backend pid of the LISTEN connection (for operators and fault tests)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    async def _run(self) -> None:
        delay = _BACKOFF_FIRST
        first = True
        while True:
            try:
                await self._connect_and_load()
                if not first:
                    self._metrics.sync_reconnects.inc()
                first = False
                delay = _BACKOFF_FIRST
                await self._serve_notifications()
            except asyncio.CancelledError:
                raise
            except (
                StoreUnavailable,
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ) as exc:
                if self.connected or first:
                    log.warning("registry sync: database connection lost or refused: %s", exc)
            except Exception:
                log.exception("registry sync failed; reconnecting")
                self._metrics.internal_errors.labels("sync").inc()
            self._set_connected(False)
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _BACKOFF_MAX)

    def _set_connected(self, up: bool) -> None:
        if up:
            self._stale_since = None
        elif self._stale_since is None:
            self._stale_since = time.monotonic()
        self.connected = up
        self._metrics.sync_connected.set(1 if up else 0)
        self._registry.set_connected(up)  # no lease lapses in a copy that cannot hear renewals

    async def _connect_and_load(self) -> None:
        conn = await connect(self._url, self._config.db_timeout_seconds)
        self._conn = conn
        self._lost.clear()
        conn.add_termination_listener(lambda _c: self._lost.set())
        self._key = await read_notify_key(conn, self._config.db_timeout_seconds)
        for channel in CHANNELS:
            await conn.add_listener(channel, self._on_notify)
        # LISTEN first, then load: a change committed in between is both in the snapshot and
        # notified, and applying it twice is harmless.
        self._pending.clear()
        self._pending_leases.clear()
        started = time.monotonic()
        version, services = await self._load(conn)
        self._metrics.sync_reloads.inc()
        self._set_connected(True)
        took = time.monotonic() - started
        if not self.synced.is_set():
            log.info("registry loaded: %d services at version %d in %.1fs",
                     services, version, took)  # fmt: skip
        else:
            log.info("registry reloaded after reconnect at version %d in %.1fs", version, took)
        self.synced.set()

    async def _load(self, conn: asyncpg.Connection) -> tuple[int, int]:
        """Load the whole registry into the copy as it streams in, a chunk of rows at a time
        (the loop answers probes and queries in between); the version and number of services.

        Service by service, each only if the snapshot has it newer than (or different from)
        the copy: a reload after a reconnect keeps serving the old copy meanwhile, each service
        moving straight from its old state to its new one, and our own writes committed during
        the load are not undone. The copy counts as loaded (`/ready`) only at the end.
        """
        registry = self._registry
        config = self._config
        seen: set[str] = set()
        version = 0
        stream = stream_snapshot(conn, config.db_snapshot_chunk_rows, config.db_timeout_seconds)
        async with contextlib.aclosing(stream):
            async for version, services in stream:
                # The copy lives as long as the process: keep the collector from scanning it
                # again and again as it grows (a full collection of a million objects stalls
                # the loop for tenths of a second). O(1); what is dropped later is freed anyway.
                gc.freeze()
                # Probes and queries between chunks; none between the last one and the end, so a
                # copy of one chunk is replaced in one step (lapses and guards all at once).
                await asyncio.sleep(0)
                for svc in services:
                    key = svc.key
                    seen.add(key)
                    if registry.index(key) <= svc.version:
                        registry.apply(version, key, svc)
        registry.finish_load(version, seen)
        return version, len(seen)

    def _on_notify(self, _conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            if channel == LEASES_CHANNEL:
                self._pending_leases.extend(decode_leases(payload, time.time()))
            else:
                assert self._key is not None  # read before LISTEN
                for bump in decode_changes(payload, self._key):
                    self._pending.setdefault(bump.service, []).append(bump)
        except ValueError as exc:
            # Not what the daemon sends (any role may NOTIFY): acting on it could corrupt the
            # copy or force a reload, so it is dropped, counted, and logged now and then.
            self._metrics.sync_rejected.labels(channel).inc()
            now = time.monotonic()
            if now - self._rejected_logged >= _REJECT_LOG_SECONDS:
                self._rejected_logged = now
                log.warning(
                    "dropped a notification on %s from backend pid %d: %s (counted in "
                    "sd_sync_notifications_rejected_total; logged at most once a minute)",
                    channel,
                    pid,
                    exc,
                )
            return
        self._wakeup.set()

    async def _apply_pending(
        self, conn: asyncpg.Connection, pending: dict[str, list[Bump]]
    ) -> None:
        """Apply what the notifications carry, service by service in version order; fetch the
        endpoints they only name; read whole the services whose notifications do not continue
        our copy (a change we missed) or name a whole-service change without its data."""
        registry = self._registry
        plans: dict[str, list[Bump]] = {}  # per service, its changes to apply in order
        whole: list[str] = []
        for key, bumps in pending.items():
            have = registry.index(key)
            chain = have
            plan: list[Bump] = []
            for b in sorted((b for b in bumps if b.version > have), key=lambda b: b.version):
                # a whole service carried as it was left is exact whatever the copy held before
                exact = b.carried and b.ip is None
                if not exact and (b.ip is None or b.prev_version != chain):
                    whole.append(key)
                    break
                plan.append(b)
                chain = b.version
            else:
                if plan:
                    plans[key] = plan
        wanted = sorted({(k, b.ip) for k, p in plans.items() for b in p if not b.carried and b.ip})
        rows: dict[tuple[str, str], Endpoint] = {}
        if wanted:
            rows, versions = await read_endpoints(conn, wanted)
            self._metrics.sync_reads.labels("endpoint").inc(len(wanted))
            for key in {k for k, _ in wanted}:
                named = max(b.version for b in plans[key] if not b.carried)
                if versions.get(key, named) < named:
                    # The service never reached the version these name: not the database's
                    # (any role may NOTIFY). Patching would put it ahead of the database.
                    self._metrics.sync_rejected.labels(CHANGES_CHANNEL).inc()
                    whole.append(key)
                    del plans[key]
        # In version order across services, each marked as held before it is announced, so a
        # watcher told of a change sees the registry version move with it.
        broken: set[str] = set()
        steps = sorted((b.version, key, b) for key, plan in plans.items() for b in plan)
        for version, key, b in steps:
            if key in broken:
                continue
            if b.ip is None:
                data = b.data if isinstance(b.data, Service) else None
                registry.apply(version, key, data, own=version)
                continue
            got = b.data if b.carried else rows.get((key, b.ip))
            endpoint = got if isinstance(got, Endpoint) else None
            change = EndpointChange(key, version, b.prev_version or 0, b.ip, endpoint)
            if not registry.apply_endpoint(change, own=True):
                whole.append(key)
                broken.add(key)
        if whole:
            snapshot = await read_snapshot(conn, whole)
            self._metrics.sync_reads.labels("service").inc(len(whole))
            for key in whole:
                registry.apply(snapshot.version, key, snapshot.services.get(key))
        # Every change up to the last one applied here has now been applied: notifications come
        # in commit order. Only versions the copy now holds count (a forged version does not).
        registry.advance(
            max(
                (b.version for bs in pending.values() for b in bs
                 if registry.index(b.service) >= b.version),
                default=0,
            )
        )  # fmt: skip

    async def _serve_notifications(self) -> None:
        conn = self._conn
        assert conn is not None
        lost = asyncio.ensure_future(self._lost.wait())
        wake: asyncio.Task[Literal[True]] | None = None
        try:
            while True:
                if wake is None or wake.done():
                    wake = asyncio.ensure_future(self._wakeup.wait())
                done, _ = await asyncio.wait(
                    {wake, lost}, timeout=_PING_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if lost in done:
                    raise StoreUnavailable("LISTEN connection closed")
                if not done:
                    # A silent peer (half-open TCP) delivers no notifications and no error.
                    await conn.fetchval("SELECT 1", timeout=self._config.db_timeout_seconds)
                    continue
                self._wakeup.clear()
                # Everything queued so far is applied together: a burst of writes costs a
                # round trip or two per replica, not one per write.
                pending, self._pending = self._pending, {}
                renewals, self._pending_leases = self._pending_leases, []
                if pending:
                    await self._apply_pending(conn, pending)
                if renewals:  # they arrive with their expiries: nothing to read back
                    self._registry.renew(renewals)
        finally:
            lost.cancel()
            if wake is not None:
                wake.cancel()
