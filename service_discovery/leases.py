"""Endpoint leases: batched heartbeats and the reaper.

Heartbeats are cheap because they are coalesced: every renewal that arrives within
SD_LEASE_FLUSH_INTERVAL_SECONDS is written by one UPDATE and announced by one NOTIFY, so the
database sees at most one lease transaction per window per replica whatever the heartbeat rate.
Each caller is answered only after its batch committed (a 200 means the lease is durable).

The reaper runs on every replica; a transaction-scoped advisory lock lets one of them do each
round's work. When too many of a service's leases lapse at once, or too many of all the others
(`mass_expiry.mass_expiry_guards`), it deletes none of those and renews them instead (the
self-preservation policy: README.md, "Leases, watches, write protection and limits", its "Mass
expiry: self-preservation" part).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from service_discovery.config import Config
from service_discovery.errors import NotFound, RegistryError, StoreUnavailable
from service_discovery.metrics import Metrics
from service_discovery.model import ReapResult
from service_discovery.registry import Registry
from service_discovery.store import Store

log = logging.getLogger(__name__)

_Key = tuple[str, str]  # (lowercased service name, canonical ip)
MAX_BATCH = 5000  # renewals per UPDATE; a batch this large is written before its window ends
FULL_SWEEP_ROUNDS = 30  # the reaper sweeps at least this often, whatever the copy knows


class Leases:
    """Owns the heartbeat batch and the reaper task of one replica."""

    def __init__(self, config: Config, store: Store, registry: Registry, metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self._batch: dict[_Key, asyncio.Future[float]] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="sd-reaper")

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the reaper, write the renewals still queued (within `timeout`, and never longer
        than DB_TIMEOUT_SECONDS), then cancel what is left."""
        self._stopping = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
            self._start_flush()
        if self._flushes:
            limit = self._config.db_timeout_seconds
            await asyncio.wait(
                self._flushes, timeout=limit if timeout is None else min(timeout, limit)
            )
        for task in list(self._flushes):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- heartbeats ----------------------------------------------------------------------
    async def renew(self, service: str, ip: str) -> float:
        """Queue a renewal and wait until its batch is committed; returns the new expiry.

        Raises NotFound if the endpoint is gone (or has no lease) by the time the batch is
        written, StoreUnavailable if the batch could not be written.
        """
        if self._stopping:
            raise StoreUnavailable("the server is shutting down")
        key = (service.lower(), ip)
        fut = self._batch.get(key)
        if fut is None:
            # Two heartbeats of one endpoint in one window share a single row update.
            fut = asyncio.get_running_loop().create_future()
            self._batch[key] = fut
        if len(self._batch) >= MAX_BATCH:
            # A full batch goes at once: bounded statements, and no wait for the window.
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            self._start_flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                self._config.lease_flush_interval_seconds, self._start_flush
            )
        # shield: one caller giving up (a client disconnect) must not cancel the shared result
        return await asyncio.shield(fut)

    def _start_flush(self) -> None:
        """Close the current window: its batch is written by a task of its own, and the next
        heartbeat opens a new window (a slow database overlaps windows rather than stalling)."""
        self._flush_timer = None
        batch, self._batch = self._batch, {}
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._flush(batch), name="sd-lease-flush")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: dict[_Key, asyncio.Future[float]]) -> None:
        started = time.perf_counter()
        try:
            renewals = await self._store.renew_leases(list(batch))
        except asyncio.CancelledError:
            _fail(batch, lambda: StoreUnavailable("the server is shutting down"))
            raise
        except RegistryError as exc:
            # A fresh exception per caller: one shared instance would collect every caller's
            # traceback as each of them re-raises it.
            error = exc
            _fail(batch, lambda: type(error)(error.message, error.detail))
            return
        except Exception:
            log.exception("lease flush failed")
            self._metrics.internal_errors.labels("leases").inc()
            _fail(batch, lambda: StoreUnavailable("the lease renewal could not be written"))
            return
        self._metrics.lease_flushes.inc()
        self._metrics.lease_flush_latency.observe(time.perf_counter() - started)
        self._metrics.lease_heartbeats.inc(len(renewals))
        self._registry.renew(renewals)
        expiries = {(r.service, r.ip): r.expires_at for r in renewals}
        for key, fut in batch.items():
            if fut.done():
                continue
            if key in expiries:
                fut.set_result(expiries[key])
            else:
                fut.set_exception(
                    NotFound(f"endpoint {key[1]} of service {key[0]!r} not found (register again)")
                )
                fut.exception()  # retrieved: a caller that went away must not log a warning

    # ---- the reaper ----------------------------------------------------------------------
    async def _reap_forever(self) -> None:
        interval = self._config.lease_reap_interval_seconds
        swept = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            # A sweep reads every leased row (no index covers expires_at, so that heartbeats
            # stay HOT updates): 0.3 s at a million endpoints. The copy hears every lease and
            # renewal, so while it knows of none lapsed or about to lapse there is nothing to
            # reap; a sweep every FULL_SWEEP_ROUNDS rounds still covers a copy, or a clock,
            # that is wrong.
            due = self._registry.lease_due(within=max(1.0, interval))
            if not due and time.monotonic() - swept < FULL_SWEEP_ROUNDS * interval:
                self._metrics.lease_sweeps.labels("skipped").inc()
                continue
            swept = time.monotonic()
            self._metrics.lease_sweeps.labels("swept").inc()
            try:
                await self.reap_once()
            except RegistryError as exc:
                # The database is away: nothing can be reaped, and the copies hold their views.
                log.debug("reaper skipped a round: %s", exc)
            except Exception:
                log.exception("reaper failed")
                self._metrics.internal_errors.labels("reaper").inc()

    async def reap_once(self) -> ReapResult | None:
        """One sweep; None when another replica held the reaper lock."""
        result = await self._store.reap_expired(
            self._config.lease_mass_expiry_share, self._config.lease_mass_expiry_min
        )
        if result is None:
            return None
        if result.renewed:
            self._metrics.lease_mass_expiry.inc()
            self._registry.renew(result.renewed)
        if result.guarded:
            log.error(
                "mass lease expiry: more than %.0f%% of %d leased endpoints lapsed in one sweep; "
                "removed none and renewed %d for one more ttl (self-preservation). If they are "
                "really gone, deregister them or raise SD_LEASE_MASS_EXPIRY_SHARE",
                self._config.lease_mass_expiry_share * 100,
                result.leased,
                len(result.renewed),
            )
        elif result.guarded_services:
            names = result.guarded_services
            log.error(
                "mass lease expiry in %d service(s) (%s): more than %.0f%% of each one's leased "
                "endpoints lapsed in one sweep; kept and renewed %d for one more ttl "
                "(self-preservation, per service). If they are really gone, deregister them or "
                "raise SD_LEASE_MASS_EXPIRY_SHARE",
                len(names),
                ", ".join(names[:10]) + (", ..." if len(names) > 10 else ""),
                self._config.lease_mass_expiry_share * 100,
                len(result.renewed),
            )
        if result.removed:
            self._metrics.lease_expired.inc(result.removed)
            log.info("reaper: removed %d expired endpoints", result.removed)
        return result


def _fail(batch: dict[_Key, asyncio.Future[float]], make: Callable[[], Exception]) -> None:
    for fut in batch.values():
        if not fut.done():
            fut.set_exception(make())
            fut.exception()  # retrieved: a caller that went away must not log a warning
