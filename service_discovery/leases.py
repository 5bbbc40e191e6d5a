"""Endpoint leases: batched heartbeats and the reaper.

Heartbeats are cheap because they are coalesced: every renewal that arrives within
SD_LEASE_FLUSH_INTERVAL_SECONDS is written by one UPDATE and announced by one NOTIFY, and each
caller is answered only after that statement committed (a 200 means the lease is durable).

The reaper runs on every replica; a transaction-scoped advisory lock lets one of them delete
expired rows per round. It refuses when too many leases lapse at once (`store.mass_expiry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service_discovery.cache import Registry
from service_discovery.config import Config
from service_discovery.errors import NotFound, RegistryError
from service_discovery.metrics import Metrics
from service_discovery.store import Store

log = logging.getLogger(__name__)


class Leases:
    def __init__(self, config: Config, store: Store, registry: Registry, metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self._batch: dict[tuple[str, str], asyncio.Future[float]] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._guard_logged = False

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="sd-reaper")

    async def stop(self) -> None:
        for task in (self._reaper, self._flush_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def renew(self, service: str, ip: str) -> float:
        """Queue a renewal and wait until its batch is committed; returns the new expiry."""
        key = (service.lower(), ip)
        fut = self._batch.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._batch[key] = fut
        if self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_later(), name="sd-lease-flush")
        # shield: one caller giving up must not cancel the others' shared result
        return await asyncio.shield(fut)

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(self._config.lease_flush_interval_seconds)
        finally:
            self._flush_task = None
        batch, self._batch = self._batch, {}
        try:
            renewals = await self._store.renew_leases(list(batch))
        except RegistryError as exc:
            for fut in batch.values():
                if not fut.done():
                    fut.set_exception(exc)
            return
        except Exception as exc:
            log.exception("lease flush failed")
            for fut in batch.values():
                if not fut.done():
                    fut.set_exception(exc)
            return
        self._metrics.lease_flushes.inc()
        self._metrics.lease_heartbeats.inc(len(renewals))
        self._registry.renew(renewals)
        by_key = {(r.service, r.ip): r.expires_at for r in renewals}
        for key, fut in batch.items():
            if fut.done():
                continue
            if key in by_key:
                fut.set_result(by_key[key])
            else:
                fut.set_exception(NotFound(f"endpoint {key[1]} of service {key[0]!r} not found"))
        for fut in batch.values():
            # a result nobody awaited any more must not log "exception never retrieved"
            if fut.done() and not fut.cancelled():
                fut.exception()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.lease_reap_interval_seconds)
            try:
                await self.reap_once()
            except RegistryError as exc:
                log.debug("reaper skipped a round: %s", exc)
            except Exception:
                log.exception("reaper failed")
                self._metrics.internal_errors.labels("reaper").inc()

    async def reap_once(self) -> None:
        result = await self._store.reap_expired(
            self._config.lease_mass_expiry_share, self._config.lease_mass_expiry_min
        )
        if result is None:
            return
        if result.guarded:
            self._metrics.lease_mass_expiry.inc()
            if not self._guard_logged:
                log.error(
                    "reaper: mass lease expiry refused (over %.0f%% of %d leases lapsed at once);"
                    " endpoints are kept until renewed or deregistered",
                    self._config.lease_mass_expiry_share * 100,
                    result.leased,
                )
            self._guard_logged = True
            return
        self._guard_logged = False
        if result.removed:
            self._metrics.lease_expired.inc(result.removed)
            log.info("reaper: removed %d expired endpoints", result.removed)
