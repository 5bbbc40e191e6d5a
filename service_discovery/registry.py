"""The in-memory registry copy that every read is served from.

Each service is held as `_Stored`: what PostgreSQL last told us, updated in O(1) for a change
of one endpoint. Clients see views (`get`): frozen `Service` objects without endpoints whose lease
has lapsed, built lazily and kept until the service changes. One timer, set for the earliest
lease expiry (`expiry.ExpiryQueue`: one entry per lease, however often renewed), hides lapsed
endpoints; no loop polls. Changes are announced synchronously to subscribers (the DNS answer
cache, gRPC watches) and wake HTTP blocking queries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from service_discovery.config import Config
from service_discovery.expiry import ExpiryQueue
from service_discovery.mass_expiry import mass_expiry
from service_discovery.model import Endpoint, EndpointChange, LeaseRenewal, Service, Snapshot

log = logging.getLogger(__name__)

# A subscriber hears (service key or None for "everything", reason): reason is one of
# "update", "delete", "expire" (a lease lapsed in memory) or "reload".
ChangeCallback = Callable[[str | None, str], None]

_MAX_TOMBSTONES = 10_000
_TIMER_MIN_DELAY = 0.02  # coalesce expiries that fall close together into one pass
_GUARD_RECHECK_SECONDS = 1.0  # while the mass-expiry guard holds, how often it is re-evaluated


class _Stored:
    """One service as the copy holds it: `endpoints` keyed by ip, `hidden` = ips whose lease
    lapsed, `leased` = how many endpoints have a lease, `guarded` = its own mass-expiry guard
    holds (its lapsed endpoints stay visible), `view` = the `Service` clients see, built on
    demand."""

    __slots__ = ("endpoints", "guarded", "hidden", "leased", "service", "view")

    def __init__(self, service: Service) -> None:
        self.service = service  # header fields; its endpoints tuple is not kept current
        self.endpoints: dict[str, Endpoint] = {e.ip: e for e in service.endpoints}
        self.hidden: set[str] = set()
        self.leased = 0
        self.guarded = False
        self.view: Service | None = None

    @property
    def version(self) -> int:
        return self.service.version


def _same(entry: _Stored, svc: Service) -> bool:
    """Whether a full read says exactly what the copy holds."""
    held = entry.service
    return (
        held.name == svc.name
        and held.attributes == svc.attributes
        and held.named_ports == svc.named_ports
        and entry.endpoints == {e.ip: e for e in svc.endpoints}
    )


class Registry:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._entries: dict[str, _Stored] = {}
        self._tombstones: dict[str, int] = {}
        self._by_ip: dict[str, set[str]] = {}
        self._by_instance: dict[str, tuple[str, str]] = {}  # instance ID -> (key, ip)
        self._leased: dict[tuple[str, str], float] = {}
        self._hidden_total = 0
        self._guarded: set[str] = set()  # services whose own mass-expiry guard holds
        self._expiries = ExpiryQueue()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._subscribers: list[ChangeCallback] = []
        self._waiters: dict[str | None, set[asyncio.Future[str]]] = {}
        self._live_changes: dict[str, int] = {}  # key -> lapses and revivals seen
        self._connected = True
        self._closed = False
        # `version`: every change up to it is applied here. This replica's own writes are
        # applied at once, but one whose version is not the next leaves a gap (another replica's
        # change, still on its way through LISTEN): its version waits in `_ahead` until the
        # sync has applied what came before, so a watcher of the registry never skips a change.
        self.version = 0
        self._ahead: set[int] = set()
        self.loaded = False
        self.self_preservation = False
        self.on_guard: Callable[[bool], None] | None = None

    @property
    def closed(self) -> bool:
        """True once `close` ran (shutdown): waits end at once."""
        return self._closed

    # ---- reads ---------------------------------------------------------------------------
    def get(self, name: str) -> Service | None:
        entry = self._entries.get(name.lower())
        return None if entry is None else self._view(entry)

    def services(self) -> list[Service]:
        return [self._view(self._entries[k]) for k in sorted(self._entries)]

    def display_name(self, name: str) -> str | None:
        """A service's name as it was created (lookups ignore case), without building its view."""
        entry = self._entries.get(name.lower())
        return None if entry is None else entry.service.name

    def service_count(self) -> int:
        return len(self._entries)

    def index(self, name: str | None = None) -> int:
        """The Consul-style index: of one service (moves only when it changes), or the registry."""
        if name is None:
            return self.version
        key = name.lower()
        entry = self._entries.get(key)
        return entry.version if entry is not None else self._tombstones.get(key, 0)

    def names_for_ip(self, ip: str) -> tuple[str, ...]:
        return tuple(
            sorted(k for k in self._by_ip.get(ip, ()) if self._visible(self._entries[k], ip))
        )

    def instance(self, instance_id: str) -> tuple[str, str] | None:
        """(service key, ip) of the endpoint registered with this instance ID, lapsed or not."""
        return self._by_instance.get(instance_id)

    def endpoint_count(self) -> int:
        return sum(
            len(e.endpoints) - (0 if self._kept(e) else len(e.hidden))
            for e in self._entries.values()
        )

    def guarded_services(self) -> int:
        """How many services keep their lapsed endpoints by their own mass-expiry guard."""
        return len(self._guarded)

    def is_live(self, name: str, ip: str) -> bool:
        entry = self._entries.get(name.lower())
        return entry is not None and ip in entry.endpoints and self._visible(entry, ip)

    def endpoint(self, name: str, ip: str) -> Endpoint | None:
        """A live endpoint of a service, or None."""
        entry = self._entries.get(name.lower())
        if entry is None or not self._visible(entry, ip):
            return None
        return entry.endpoints.get(ip)

    def lease_queue_size(self) -> int:
        """Entries in the lease-expiry queue: at most twice the leases (plus a small constant),
        however often they are renewed."""
        return len(self._expiries)

    def _kept(self, entry: _Stored) -> bool:
        """Whether a mass-expiry guard (its own, or the global one) keeps its lapsed endpoints."""
        return entry.guarded or self.self_preservation

    def _visible(self, entry: _Stored, ip: str) -> bool:
        return ip not in entry.hidden or self._kept(entry)

    def _view(self, entry: _Stored) -> Service:
        if entry.view is None:
            eps: Iterable[Endpoint] = entry.endpoints.values()
            if entry.hidden and not self._kept(entry):
                eps = [e for e in eps if e.ip not in entry.hidden]
            entry.view = replace(entry.service, endpoints=tuple(eps))
        return entry.view

    # ---- change notification --------------------------------------------------------------
    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    async def wait_for_change(self, name: str | None, index: int, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for something a blocking query on `name` reports.

        For one service: its index passes `index`, or its live endpoints change without the
        index moving (a lease lapsed in memory, or came back). For the registry (`name` None):
        the registry version passes `index`. A reload or `close` ends every wait. Each waiter is
        one future woken by `_announce`; nothing polls.
        """
        if self._closed or timeout <= 0 or self.index(name) > index:
            return
        key = name.lower() if name is not None else None
        lapses = self._live_changes.get(key, 0) if key is not None else 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            fut: asyncio.Future[str] = loop.create_future()
            waiters = self._waiters.setdefault(key, set())
            waiters.add(fut)
            try:
                async with asyncio.timeout_at(deadline):
                    reason = await fut
            except TimeoutError:
                return
            finally:
                waiters.discard(fut)
                if not waiters and self._waiters.get(key) is waiters:
                    del self._waiters[key]
            if self._closed or reason in ("reload", "release") or self.index(name) > index:
                return
            if key is not None and self._live_changes.get(key, 0) != lapses:
                return
            # Nothing this query reports changed (the same version read again, a renewal, or
            # another service's endpoints for a listing): keep waiting.

    def _live_changed(self, key: str) -> None:
        """Count a change of a service's live endpoints that moves no index (a lapse in memory,
        or a lapsed lease renewed), so the blocking queries on it see it."""
        self._live_changes[key] = self._live_changes.get(key, 0) + 1

    def _announce(self, key: str | None, reason: str) -> None:
        """Tell subscribers, then wake the blocking queries on `key` (None: all of them) and on
        the registry as a whole."""
        for cb in list(self._subscribers):
            try:
                cb(key, reason)
            except Exception:
                log.exception("registry subscriber failed")
        self._wake(tuple(self._waiters) if key is None else (key, None), reason)

    def _wake(self, keys: Iterable[str | None], reason: str) -> None:
        for k in keys:
            for fut in self._waiters.get(k, ()):
                if not fut.done():
                    fut.set_result(reason)

    def set_connected(self, connected: bool) -> None:
        """Whether this copy hears every change (its LISTEN connection is up).

        While it does not, leases do not lapse in memory: renewals written through other
        replicas cannot reach us, so a lease that looks lapsed may well be renewed. The reload
        after reconnecting applies every lapse at once (and the mass-expiry guard to them).
        """
        self._connected = connected
        if connected:
            self._schedule()

    # ---- updates from PostgreSQL ----------------------------------------------------------
    def replace_all(self, snapshot: Snapshot) -> None:
        """Load everything (start-up, or after the LISTEN connection came back)."""
        for key in set(self._entries) - set(snapshot.services):
            self._bury(key, snapshot.version)
        self._entries = {}
        self._by_ip.clear()
        self._by_instance.clear()
        self._leased.clear()
        self._expiries.clear()
        self._hidden_total = 0
        self._guarded.clear()
        now = self._clock()
        for key, svc in snapshot.services.items():
            self._put(key, svc, now)
        self._log_guards(sorted(self._guarded), ())
        self.version = max(self.version, snapshot.version)
        # Our writes past the snapshot were replaced by it; the sync applies them again.
        self._ahead.clear()
        self._refresh_guard(now)
        self.loaded = True
        self._schedule()
        self._announce(None, "reload")

    def apply(
        self, snapshot_version: int, key: str, service: Service | None, *, own: int | None = None
    ) -> None:
        """Apply a whole service as read at `snapshot_version` (None: absent there).

        A full read at a version is exact, so it replaces a copy at the same version (which may
        have been patched out of order) and only a newer copy is kept. The registry version
        moves only for `own`, the version of this replica's own write that the read includes
        (see `own`): a read of some services says nothing of the others.
        """
        key = key.lower()
        current = self._entries.get(key)
        if own is not None:
            self.own(own)  # before announcing, so subscribers see the version with the change
        if service is not None:
            if current is not None and current.version > service.version:
                return
            if (
                current is not None
                and current.version == service.version
                and _same(current, service)
            ):
                return  # our own write, heard again: nothing to announce
            self._tombstones.pop(key, None)
            was_guarded = current is not None and current.guarded
            if current is not None:
                self._drop(key, current)
            self._put(key, service, self._clock())
            if self._entries[key].guarded != was_guarded:
                self._log_guards(*(([key], ()) if not was_guarded else ((), [key])))
            reason = "update"
        else:
            if current is None:
                if key not in self._tombstones:  # a service we never held: say so once
                    self._bury(key, snapshot_version)
                    self._announce(key, "delete")
                return
            if current.version > snapshot_version:
                return  # re-created since that read
            self._drop(key, current)
            del self._entries[key]
            self._live_changes.pop(key, None)
            self._bury(key, snapshot_version)
            reason = "delete"
        self._schedule()
        self._announce(key, reason)

    def apply_endpoint(self, change: EndpointChange, *, own: bool = False) -> bool:
        """Apply one endpoint change if the copy holds the version just before it; `own`: it is
        this replica's own write (see `own`).

        Returns False when the copy missed a change in between (the caller reads the service).
        """
        entry = self._entries.get(change.service)
        if entry is None:
            return False
        if entry.version >= change.version:
            if own:
                self.own(change.version)
            return True  # already applied (our own write, heard again)
        if entry.version != change.prev_version:
            return False
        if own:
            self.own(change.version)  # before announcing, as in `apply`
        self._set_endpoint(change.service, entry, change.ip, change.endpoint, self._clock())
        self._judge_logged(change.service, entry)
        entry.service = replace(entry.service, version=change.version)
        entry.view = None
        self._schedule()
        self._announce(change.service, "update")
        return True

    def own(self, version: int) -> None:
        """This replica's own committed change `version` is in the copy (read-your-writes), maybe
        before the LISTEN stream brought earlier changes of other replicas. The registry version
        moves to it only if it is the next one; otherwise once `advance` fills the gap."""
        if version > self.version:
            self._ahead.add(version)
            self._catch_up(self.version)

    def advance(self, version: int) -> None:
        """The sync applied every change up to `version`: NOTIFY delivers changes in commit
        order, which is version order, so nothing before it is missing."""
        if version > self.version:
            self._catch_up(version)

    def _catch_up(self, version: int) -> None:
        """Move the registry version to `version` and through our writes that follow it; wake
        the watchers of the registry."""
        ahead = self._ahead
        while version + 1 in ahead:
            version += 1
        if ahead:
            self._ahead = {v for v in ahead if v > version}
        if version > self.version:
            self.version = version
            self._wake((None,), "update")

    def renew(self, renewals: Iterable[LeaseRenewal]) -> None:
        """New expiry times from heartbeats (or the reaper's guard); the version does not move.

        A renewal of an endpoint this copy does not hold is skipped (its registration, read
        later, carries the expiry), and so is one older than what the copy has (notifications
        may be applied after a fresher read): a renewal never shortens a lease.
        """
        now = self._clock()
        changed: set[str] = set()
        for r in renewals:
            entry = self._entries.get(r.service)
            old = entry.endpoints.get(r.ip) if entry is not None else None
            if entry is None or old is None or old.expires_at is None:
                continue
            if r.expires_at <= old.expires_at:
                continue
            was_hidden = r.ip in entry.hidden
            self._set_endpoint(r.service, entry, r.ip, replace(old, expires_at=r.expires_at), now)
            entry.view = None
            if was_hidden != (r.ip in entry.hidden) and not self._kept(entry):
                changed.add(r.service)
            if self._judge_logged(r.service, entry):
                changed.add(r.service)
        self._schedule()
        for key in changed:
            self._live_changed(key)
            self._announce(key, "update")

    # ---- bookkeeping ---------------------------------------------------------------------
    def _bury(self, key: str, version: int) -> None:
        """Remember a deletion (the index of a deleted service), the oldest forgotten first:
        churn through ever-new names must not grow the copy for ever."""
        self._tombstones.pop(key, None)
        self._tombstones[key] = version
        while len(self._tombstones) > _MAX_TOMBSTONES:
            del self._tombstones[next(iter(self._tombstones))]

    def _put(self, key: str, svc: Service, now: float) -> None:
        entry = _Stored(svc)
        self._entries[key] = entry
        for ip, e in entry.endpoints.items():
            self._by_ip.setdefault(ip, set()).add(key)
            if e.instance_id is not None:
                self._by_instance[e.instance_id] = (key, ip)
            self._track(key, entry, e, now)
        self._judge(key, entry)

    def _drop(self, key: str, entry: _Stored) -> None:
        for ip, e in entry.endpoints.items():
            self._untrack_ip(key, ip)
            self._untrack_instance(key, ip, e)
            self._leased.pop((key, ip), None)
            self._expiries.forget((key, ip))
        self._hidden_total -= len(entry.hidden)
        self._guarded.discard(key)

    def _untrack_ip(self, key: str, ip: str) -> None:
        names = self._by_ip.get(ip)
        if names is not None:
            names.discard(key)
            if not names:
                del self._by_ip[ip]

    def _untrack_instance(self, key: str, ip: str, endpoint: Endpoint | None) -> None:
        if endpoint is not None and endpoint.instance_id is not None:
            if self._by_instance.get(endpoint.instance_id) == (key, ip):
                del self._by_instance[endpoint.instance_id]

    def _set_endpoint(
        self, key: str, entry: _Stored, ip: str, endpoint: Endpoint | None, now: float
    ) -> None:
        if ip in entry.hidden:
            entry.hidden.discard(ip)
            self._hidden_total -= 1
        if self._leased.pop((key, ip), None) is not None:
            entry.leased -= 1
        self._untrack_instance(key, ip, entry.endpoints.get(ip))
        if endpoint is None:
            self._expiries.forget((key, ip))
            entry.endpoints.pop(ip, None)
            self._untrack_ip(key, ip)
            return
        entry.endpoints[ip] = endpoint
        self._by_ip.setdefault(ip, set()).add(key)
        if endpoint.instance_id is not None:
            self._by_instance[endpoint.instance_id] = (key, ip)
        self._track(key, entry, endpoint, now)

    def _track(self, key: str, entry: _Stored, e: Endpoint, now: float) -> None:
        if e.expires_at is None:
            return
        self._leased[(key, e.ip)] = e.expires_at
        entry.leased += 1
        if e.expires_at <= now:
            entry.hidden.add(e.ip)
            self._hidden_total += 1
        else:
            self._expiries.schedule((key, e.ip), e.expires_at)

    # ---- leases ----------------------------------------------------------------------------
    def _judge(self, key: str, entry: _Stored) -> bool:
        """Recompute one service's own mass-expiry guard (`mass_expiry.mass_expiry_guards`, first
        step) from its counts; True if it changed. Its view is rebuilt; the caller announces."""
        guarded = mass_expiry(
            len(entry.hidden),
            entry.leased,
            self._config.lease_mass_expiry_share,
            self._config.lease_mass_expiry_min,
        )
        if guarded == entry.guarded:
            return False
        entry.guarded = guarded
        entry.view = None
        if guarded:
            self._guarded.add(key)
        else:
            self._guarded.discard(key)
        return True

    def _judge_logged(self, key: str, entry: _Stored) -> bool:
        changed = self._judge(key, entry)
        if changed:
            self._log_guards(*(([key], ()) if entry.guarded else ((), [key])))
        return changed

    @staticmethod
    def _log_guards(on: Sequence[str], off: Sequence[str]) -> None:
        if on:
            log.error(
                "mass lease expiry in %d service(s) (%s): keeping their lapsed endpoints "
                "visible (self-preservation, per service) until renewals bring the share down",
                len(on),
                ", ".join(on[:10]) + (", ..." if len(on) > 10 else ""),
            )
        if off:
            log.warning(
                "mass lease expiry over in %d service(s) (%s): their lapsed leases expire again",
                len(off),
                ", ".join(off[:10]) + (", ..." if len(off) > 10 else ""),
            )

    def _refresh_guard(self, now: float) -> bool:
        """Recompute the global mass-expiry guard; True if it changed.

        The same rule as the reaper's (`mass_expiry.mass_expiry_guards`), applied to the leases that
        lapsed here and are not reaped yet, over the services whose own guard does not hold:
        when too many of those lapse together, every endpoint stays visible until renewals (or
        the reaper's renewal under the guard) bring the share down again.
        """
        guarded_entries = [self._entries[k] for k in self._guarded]
        hidden = self._hidden_total - sum(len(e.hidden) for e in guarded_entries)
        leased = len(self._leased) - sum(e.leased for e in guarded_entries)
        guarded = mass_expiry(
            hidden,
            leased,
            self._config.lease_mass_expiry_share,
            self._config.lease_mass_expiry_min,
        )
        if guarded == self.self_preservation:
            return False
        self.self_preservation = guarded
        if guarded:
            log.error(
                "mass lease expiry: %d of %d leased endpoints lapsed together; keeping them all "
                "visible (self-preservation) until renewals bring the share down again",
                hidden,
                leased,
            )
        else:
            log.warning("mass lease expiry over: lapsed leases expire normally again")
        for entry in self._entries.values():
            if entry.hidden:
                entry.view = None
        if self.on_guard is not None:
            self.on_guard(guarded)
        return True

    def _schedule(self) -> None:
        """Arm the one timer for the earliest lease expiry (and, while the mass-expiry guard
        holds, for a re-check within _GUARD_RECHECK_SECONDS, so renewals can end it)."""
        at = self._expiries.next_due()
        if self.self_preservation or self._guarded:
            at = min(at, self._clock() + _GUARD_RECHECK_SECONDS)
        if at == float("inf") or at >= self._timer_at:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a registry used outside the daemon): nothing to arm
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_later(max(at - self._clock(), _TIMER_MIN_DELAY), self._on_timer)

    def _on_timer(self) -> None:
        """Hide the endpoints whose lease lapsed, apply the guard, announce, re-arm."""
        self._timer = None
        self._timer_at = float("inf")
        if not self._connected or self._closed:
            return  # `set_connected(True)` (after the reload) re-arms
        now = self._clock()
        lapsed: set[str] = set()
        for key, ip in self._expiries.pop_due(now):
            at = self._leased.get((key, ip))
            entry = self._entries.get(key)
            if at is None or entry is None or ip in entry.hidden:
                continue
            if at > now:  # renewed since it was scheduled: due again at its current expiry
                self._expiries.schedule((key, ip), at)
                continue
            entry.hidden.add(ip)
            entry.view = None
            self._hidden_total += 1
            lapsed.add(key)
        # Services with new lapses, and those guarded (renewals may have ended their guard).
        on: list[str] = []
        off: list[str] = []
        for key in sorted(lapsed | self._guarded):
            entry = self._entries[key]
            if self._judge(key, entry):
                (on if entry.guarded else off).append(key)
        self._log_guards(on, off)
        if self._refresh_guard(now):
            # The guard turned on (lapsed endpoints are shown again) or off (they go): many
            # services may change at once, so everyone re-reads everything.
            self._announce(None, "reload")
        elif not self.self_preservation:
            # What clients see changed: lapses in unguarded services, and every service whose
            # own guard turned (its lapsed endpoints came back, or went).
            for key in sorted({k for k in lapsed if not self._entries[k].guarded} | {*on, *off}):
                self._live_changed(key)
                self._announce(key, "update" if self._entries[key].guarded else "expire")
        self._schedule()

    def release(self) -> None:
        """Answer every waiting blocking query now, with what it has (shutdown, once listeners
        are closed); the copy stays open for the writes still in flight."""
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result("release")

    def close(self) -> None:
        """Stop the timer and answer every blocking query now (shutdown); later ones return at
        once."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.release()
