"""The in-memory registry copy that every read is served from.

It holds each service as PostgreSQL last told us (`_full`) and the view clients see (`get`):
the same service without endpoints whose lease has lapsed. One timer, set for the earliest
lease expiry, updates views; no loop polls. Changes are announced synchronously to subscribers
(the DNS answer cache, gRPC watches) and wake HTTP blocking queries.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from service_discovery.config import Config
from service_discovery.model import Service
from service_discovery.store import LeaseRenewal, Snapshot, mass_expiry

log = logging.getLogger(__name__)

# A subscriber hears (service key or None for "everything", reason): reason is one of
# "update", "delete", "expire" (a lease lapsed in memory) or "reload".
ChangeCallback = Callable[[str | None, str], None]

_TIMER_MIN_DELAY = 0.02  # coalesce expiries that fall close together into one pass


class Registry:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._full: dict[str, Service] = {}
        self._views: dict[str, Service] = {}
        self._tombstones: dict[str, int] = {}
        self._by_ip: dict[str, set[str]] = {}
        self._leased: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._subscribers: list[ChangeCallback] = []
        self._waiters: dict[str | None, set[asyncio.Future[None]]] = {}
        self.version = 0
        self.loaded = False
        self.self_preservation = False
        self.on_guard: Callable[[bool], None] | None = None

    # ---- reads ---------------------------------------------------------------------------
    def get(self, name: str) -> Service | None:
        return self._views.get(name.lower())

    def services(self) -> list[Service]:
        return [self._views[k] for k in sorted(self._views)]

    def index(self, name: str | None = None) -> int:
        """The Consul-style index: of one service (moves only when it changes), or the registry."""
        if name is None:
            return self.version
        key = name.lower()
        svc = self._full.get(key)
        return svc.version if svc is not None else self._tombstones.get(key, 0)

    def names_for_ip(self, ip: str) -> tuple[str, ...]:
        return tuple(sorted(self._by_ip.get(ip, ())))

    def endpoint_count(self) -> int:
        return sum(len(s.endpoints) for s in self._views.values())

    def is_live(self, name: str, ip: str) -> bool:
        svc = self.get(name)
        return svc is not None and any(e.ip == ip for e in svc.endpoints)

    # ---- change notification --------------------------------------------------------------
    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    async def wait_for_change(self, name: str | None, index: int, timeout: float) -> None:
        """Return once the index passes `index`, the service's view changes, or `timeout` ends."""
        if self.index(name) > index or timeout <= 0:
            return
        key = name.lower() if name is not None else None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, set())
        waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            waiters.discard(fut)
            if not waiters:
                self._waiters.pop(key, None)

    def _announce(self, key: str | None, reason: str) -> None:
        for cb in list(self._subscribers):
            try:
                cb(key, reason)
            except Exception:
                log.exception("registry subscriber failed")
        keys = (None,) if key is None else (key, None)
        if key is None:
            keys = tuple(self._waiters)
        for k in keys:
            for fut in self._waiters.get(k, ()):
                if not fut.done():
                    fut.set_result(None)

    # ---- updates from PostgreSQL ----------------------------------------------------------
    def replace_all(self, snapshot: Snapshot) -> None:
        """Load everything (start-up, or after the LISTEN connection came back)."""
        for key in set(self._full) - set(snapshot.services):
            self._tombstones[key] = snapshot.version
        self._full = dict(snapshot.services)
        self._leased.clear()
        self._heap.clear()
        for key, svc in self._full.items():
            self._track_leases(key, svc)
        self.version = max(self.version, snapshot.version)
        self._refresh_guard()
        self._rebuild_views(self._full)
        self.loaded = True
        self._schedule()
        self._announce(None, "reload")

    def apply(self, snapshot_version: int, key: str, service: Service | None) -> None:
        """Apply one service as read at `snapshot_version` (None: absent), unless we hold newer."""
        key = key.lower()
        current = self._full.get(key)
        self.version = max(self.version, snapshot_version)
        if service is not None:
            if current is not None and current.version >= service.version:
                return
            self._full[key] = service
            self._tombstones.pop(key, None)
            self._untrack_leases(key, current)
            self._track_leases(key, service)
            reason = "update"
        else:
            if current is None or current.version > snapshot_version:
                self._tombstones[key] = max(self._tombstones.get(key, 0), snapshot_version)
                if current is None:
                    self._announce(key, "delete")
                return
            del self._full[key]
            self._tombstones[key] = snapshot_version
            self._untrack_leases(key, current)
            reason = "delete"
        self._rebuild_views([key])
        self._schedule()
        self._announce(key, reason)

    def renew(self, renewals: Iterable[LeaseRenewal]) -> None:
        """New expiry times from heartbeats; the registry version does not move."""
        by_service: dict[str, dict[str, float]] = {}
        for r in renewals:
            by_service.setdefault(r.service, {})[r.ip] = r.expires_at
        for key, expiries in by_service.items():
            svc = self._full.get(key)
            if svc is None:
                continue
            endpoints = tuple(
                replace(e, expires_at=expiries[e.ip]) if e.ip in expiries else e
                for e in svc.endpoints
            )
            self._full[key] = replace(svc, endpoints=endpoints)
            for ip, at in expiries.items():
                if (key, ip) in self._leased:
                    self._leased[(key, ip)] = at
            heapq.heappush(self._heap, (min(expiries.values()), key))
            before = self._views.get(key)
            self._rebuild_views([key])
            if before is None or before.endpoints != self._views[key].endpoints:
                self._announce(key, "update")
        self._schedule()

    # ---- leases --------------------------------------------------------------------------
    def _track_leases(self, key: str, svc: Service) -> None:
        soonest = None
        for e in svc.endpoints:
            if e.expires_at is not None:
                self._leased[(key, e.ip)] = e.expires_at
                soonest = e.expires_at if soonest is None else min(soonest, e.expires_at)
        if soonest is not None:
            heapq.heappush(self._heap, (soonest, key))

    def _untrack_leases(self, key: str, svc: Service | None) -> None:
        if svc is not None:
            for e in svc.endpoints:
                if e.expires_at is not None:
                    self._leased.pop((key, e.ip), None)

    def _refresh_guard(self) -> bool:
        """Recompute the mass-expiry guard; True if it changed."""
        now = self._clock()
        expired = sum(1 for at in self._leased.values() if at <= now)
        guarded = mass_expiry(
            expired,
            len(self._leased),
            self._config.lease_mass_expiry_share,
            self._config.lease_mass_expiry_min,
        )
        if guarded == self.self_preservation:
            return False
        self.self_preservation = guarded
        if guarded:
            log.error(
                "mass lease expiry: %d of %d leased endpoints lapsed together; keeping them "
                "visible (self-preservation) until renewals resume or they are deregistered",
                expired,
                len(self._leased),
            )
        else:
            log.warning("mass lease expiry over: lapsed leases expire normally again")
        if self.on_guard is not None:
            self.on_guard(guarded)
        return True

    def _view(self, svc: Service, now: float) -> Service:
        if self.self_preservation or not any(e.expired(now) for e in svc.endpoints):
            return svc
        return replace(svc, endpoints=tuple(e for e in svc.endpoints if not e.expired(now)))

    def _rebuild_views(self, keys: Iterable[str]) -> None:
        now = self._clock()
        for key in keys:
            old = self._views.pop(key, None)
            if old is not None:
                for e in old.endpoints:
                    names = self._by_ip.get(e.ip)
                    if names is not None:
                        names.discard(key)
                        if not names:
                            del self._by_ip[e.ip]
            svc = self._full.get(key)
            if svc is None:
                continue
            view = self._view(svc, now)
            self._views[key] = view
            for e in view.endpoints:
                self._by_ip.setdefault(e.ip, set()).add(key)

    def _schedule(self) -> None:
        if not self._heap:
            return
        at = self._heap[0][0]
        if at >= self._timer_at:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(at - self._clock(), _TIMER_MIN_DELAY)
        self._timer_at = at
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = self._clock()
        due: set[str] = set()
        while self._heap and self._heap[0][0] <= now:
            due.add(heapq.heappop(self._heap)[1])
        if self._refresh_guard():
            due = set(self._full)
        before = {k: self._views.get(k) for k in due}
        self._rebuild_views(due)
        for key in due:
            old, new = before[key], self._views.get(key)
            if old is not None and new is not None and old.endpoints != new.endpoints:
                self._announce(key, "expire")
            # re-arm for leases of this service that lapse later
            later = [e.expires_at for e in self._full[key].endpoints if e.expires_at] if (
                key in self._full
            ) else []
            later = [t for t in later if t > now]
            if later:
                heapq.heappush(self._heap, (min(later), key))
        if self.self_preservation and self._leased:
            # keep re-checking while the guard holds, so renewals end it
            heapq.heappush(self._heap, (now + 1.0, next(iter(self._full), "")))
        self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
