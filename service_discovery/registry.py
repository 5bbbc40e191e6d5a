"""The in-memory registry copy that every read is served from.

Each service is held as `stored.Stored`: what PostgreSQL last told us, updated in O(1) for a
change of one endpoint. Clients see views (`get`): frozen `Service` objects without endpoints
whose lease has lapsed, built lazily and kept until the service changes. The index of services
by address (PTR answers) is built on the first question that needs it, then kept current.
Lapsing is `expiry.Expiry`'s job (its queue, its one timer, the mass-expiry guards); telling of
changes is `announce.Announcer`'s (subscribers such as the DNS answer cache, called
synchronously, and HTTP blocking queries); this module holds the services, applies what
PostgreSQL says, and keeps the registry version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable

from service_discovery.announce import Announcer, ChangeCallback
from service_discovery.config import Config
from service_discovery.expiry import Expiry, log_guards
from service_discovery.model import Endpoint, EndpointChange, LeaseRenewal, Service, Snapshot
from service_discovery.stored import Shared, Stored, index_ip, unindex_ip

_MAX_TOMBSTONES = 10_000


class Registry:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._entries: dict[str, Stored] = {}
        self._shared = Shared()
        self._tombstones: dict[str, int] = {}
        # ip -> the key of the service that has it, or the keys of those that have it (rare):
        # no set per address. None until a PTR question needs it (forward-only replicas never
        # pay for it), then kept current and rebuilt by every reload.
        self._by_ip: dict[str, str | tuple[str, ...]] | None = None
        self._by_instance: dict[str, tuple[str, str]] = {}  # instance ID -> (key, ip)
        self._expiry = Expiry(config, clock, self._entries, self._expired)
        self._changes = Announcer(self.index)
        # `version`: every change up to it is applied here. This replica's own writes are
        # applied at once, but one whose version is not the next leaves a gap (another replica's
        # change, still on its way through LISTEN): its version waits in `_ahead` until the
        # sync has applied what came before, so a watcher of the registry never skips a change.
        self.version = 0
        self._ahead: set[int] = set()
        self.loaded = False

    @property
    def closed(self) -> bool:
        """True once `close` ran (shutdown): waits end at once."""
        return self._changes.closed

    @property
    def self_preservation(self) -> bool:
        """The global mass-expiry guard holds: every lapsed endpoint stays visible."""
        return self._expiry.self_preservation

    @property
    def on_guard(self) -> Callable[[bool], None] | None:
        """Called with True or False when the global mass-expiry guard turns."""
        return self._expiry.on_guard

    @on_guard.setter
    def on_guard(self, callback: Callable[[bool], None] | None) -> None:
        self._expiry.on_guard = callback

    # ---- reads ---------------------------------------------------------------------------
    def get(self, name: str) -> Service | None:
        entry = self._entries.get(name.lower())
        return None if entry is None else self._view(entry)

    def services(self) -> list[Service]:
        return [self._view(self._entries[k]) for k in sorted(self._entries)]

    def display_name(self, name: str) -> str | None:
        """A service's name as it was created (lookups ignore case), without building its view."""
        entry = self._entries.get(name.lower())
        return None if entry is None else entry.name

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
        keys = self._ips().get(ip)
        if keys is None:
            return ()
        entries = self._entries
        if isinstance(keys, str):
            return (keys,) if self._visible(entries[keys], ip) else ()
        return tuple(sorted(k for k in keys if self._visible(entries[k], ip)))

    def instance(self, instance_id: str) -> tuple[str, str] | None:
        """(service key, ip) of the endpoint registered with this instance ID, lapsed or not."""
        return self._by_instance.get(instance_id)

    def endpoint_count(self) -> int:
        return sum(
            len(e.endpoints) - (0 if self._expiry.kept(e) else len(e.hidden))
            for e in self._entries.values()
        )

    def guarded_services(self) -> int:
        """How many services keep their lapsed endpoints by their own mass-expiry guard."""
        return len(self._expiry.guarded)

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
        return self._expiry.queue_size()

    def _ips(self) -> dict[str, str | tuple[str, ...]]:
        """The index of services by address, built now if it is not (see `_by_ip`)."""
        by_ip = self._by_ip
        if by_ip is None:
            by_ip = self._by_ip = {}
            for key, entry in self._entries.items():
                for ip in entry.endpoints:
                    index_ip(by_ip, ip, key)
        return by_ip

    def _visible(self, entry: Stored, ip: str) -> bool:
        return ip not in entry.hidden or self._expiry.kept(entry)

    def _view(self, entry: Stored) -> Service:
        view = entry.view
        if view is None:
            view = entry.view = entry.build_view(self._expiry.kept(entry))
        return view

    def lease_due(self, within: float) -> bool:
        """Whether, as far as this copy knows, a lease lapsed or lapses within `within` s."""
        return not self.loaded or self._expiry.due(self._clock() + within)

    # ---- change notification --------------------------------------------------------------
    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        return self._changes.subscribe(callback)

    async def wait_for_change(self, name: str | None, index: int, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for something a blocking query on `name` reports:
        see `announce.Announcer.wait`."""
        await self._changes.wait(name, index, timeout)

    def set_connected(self, connected: bool) -> None:
        """Whether this copy hears every change (its LISTEN connection is up).

        While it does not, leases do not lapse in memory: renewals written through other
        replicas cannot reach us, so a lease that looks lapsed may well be renewed. The reload
        after reconnecting applies every lapse at once (and the mass-expiry guard to them).
        """
        self._expiry.set_connected(connected)

    # ---- updates from PostgreSQL ----------------------------------------------------------
    def replace_all(self, snapshot: Snapshot) -> None:
        """Load everything (start-up, or after LISTEN came back) but our writes past it."""
        v, now = snapshot.version, self._clock()
        services = {k: s for k, s in snapshot.services.items() if self._tombstones.get(k, 0) <= v}
        for key, entry in self._entries.items():
            if entry.version > v:  # committed while it was read, exact: kept (read-your-writes)
                services[key] = entry.build_view(kept=True)  # every endpoint, lapsed or not
            elif key not in services:
                self._bury(key, v)
        self._entries.clear()  # the same dict: `_expiry` reads it
        by_ip, self._by_ip = self._by_ip, None  # rebuilt below if it was in use
        self._by_instance.clear()
        self._expiry.clear()
        for key, svc in services.items():
            self._put(key, svc, now)
        if by_ip is not None:
            self._ips()  # built here, as the reload is O(n) anyway, rather than by a query
        log_guards(sorted(self._expiry.guarded), ())
        self._catch_up(max(self.version, v))  # our later writes wait in `_ahead`, as before
        self._expiry.refresh_guard()
        self.loaded = True
        self._expiry.schedule()
        self._changes.announce(None, "reload")

    def finish_load(self, version: int, keys: Collection[str]) -> None:
        """The end of a load put in service by service (`apply`, as sync streams a snapshot at
        registry `version` in): drop what the snapshot (`keys`) lacks, the global guard over
        every lease at once, /ready, the version, and a "reload" for everyone."""
        for key in [k for k in self._entries if k not in keys]:
            self.apply(version, key, None)  # kept if re-created by our own write since
        self._expiry.refresh_guard()
        self.loaded = True
        self.advance(version)
        self._expiry.schedule()
        self._changes.announce(None, "reload")

    def apply(
        self, snapshot_version: int, key: str, service: Service | None, *, own: int | None = None
    ) -> None:
        """Apply a whole service as read at `snapshot_version` (None: absent there).

        A full read at a version is exact, so it replaces a copy at the same version (which may
        have been patched out of order) and only a newer copy is kept. The registry version
        moves only for `own`, a change the read includes (this replica's write, or one the
        sync heard: see `own`): a read of some services says nothing of the others.
        """
        key = key.lower()
        current = self._entries.get(key)
        if own is not None:
            self.own(own)  # before announcing, so subscribers see the version with the change
        if service is not None:
            if current is not None and current.version > service.version:
                return
            if current is not None and current.version == service.version and current.same(service):
                return  # our own write, heard again: nothing to announce
            self._tombstones.pop(key, None)
            was_guarded = current is not None and current.guarded
            if current is not None:
                self._drop(key, current)
            self._put(key, service, self._clock())
            if self._entries[key].guarded != was_guarded:
                log_guards(*(([key], ()) if not was_guarded else ((), [key])))
            reason = "update"
        else:
            if current is None:
                if key not in self._tombstones:  # a service we never held: say so once
                    self._bury(key, snapshot_version)
                    self._changes.announce(key, "delete")
                return
            if current.version > snapshot_version:
                return  # re-created since that read
            self._drop(key, current)
            del self._entries[key]
            self._changes.forget(key)
            self._bury(key, snapshot_version)
            reason = "delete"
        self._expiry.schedule()
        self._changes.announce(key, reason)

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
        self._expiry.judge(change.service, entry)
        entry.version = change.version
        entry.view = None
        self._expiry.schedule()
        self._changes.announce(change.service, "update")
        return True

    def own(self, version: int) -> None:
        """Committed change `version` is in the copy: this replica's own (read-your-writes), or
        one the sync applied, maybe before earlier changes of other services. The registry version
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
        """Move the registry version to `version`, on through our writes after it; wake watchers."""
        ahead = self._ahead
        while version + 1 in ahead:
            version += 1
        if ahead:
            self._ahead = {v for v in ahead if v > version}
        if version > self.version:
            self.version = version
            self._changes.wake((None,), "update")

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
            self._set_endpoint(r.service, entry, r.ip, old.renewed(r.expires_at), now)
            entry.view = None
            if was_hidden != (r.ip in entry.hidden) and not self._expiry.kept(entry):
                changed.add(r.service)
            if self._expiry.judge(r.service, entry):
                changed.add(r.service)
        self._expiry.schedule()
        for key in changed:
            self._changes.live_changed(key)
            self._changes.announce(key, "update")

    # ---- bookkeeping ---------------------------------------------------------------------
    def _bury(self, key: str, version: int) -> None:
        """Remember a deletion (the index of a deleted service), the oldest forgotten first:
        churn through ever-new names must not grow the copy for ever."""
        self._tombstones.pop(key, None)
        self._tombstones[key] = version
        while len(self._tombstones) > _MAX_TOMBSTONES:
            del self._tombstones[next(iter(self._tombstones))]

    def _put(self, key: str, svc: Service, now: float) -> None:
        if key == svc.name:
            key = svc.name  # one string for both (a key is a lowercase name: often the name)
        entry = Stored(svc, self._shared)
        self._entries[key] = entry
        by_ip, by_instance, put = self._by_ip, self._by_instance, self._expiry.put
        for ip, e in entry.endpoints.items():
            if by_ip is not None:
                index_ip(by_ip, ip, key)
            if e.instance_id is not None:
                by_instance[e.instance_id] = (key, ip)
            put(key, entry, ip, None, e, now)
        self._expiry.judge(key, entry, logged=False)

    def _drop(self, key: str, entry: Stored) -> None:
        for ip, e in entry.endpoints.items():
            if self._by_ip is not None:
                unindex_ip(self._by_ip, ip, key)
            self._untrack_instance(key, ip, e)
        self._expiry.drop(key, entry)

    def _untrack_instance(self, key: str, ip: str, endpoint: Endpoint | None) -> None:
        if endpoint is not None and endpoint.instance_id is not None:
            if self._by_instance.get(endpoint.instance_id) == (key, ip):
                del self._by_instance[endpoint.instance_id]

    def _set_endpoint(
        self, key: str, entry: Stored, ip: str, endpoint: Endpoint | None, now: float
    ) -> None:
        old = entry.endpoints.get(ip)
        self._untrack_instance(key, ip, old)
        if endpoint is None:
            entry.endpoints.pop(ip, None)
            if self._by_ip is not None:
                unindex_ip(self._by_ip, ip, key)
        else:
            endpoint = entry.endpoints[ip] = self._shared.endpoint(endpoint)
            if self._by_ip is not None:
                index_ip(self._by_ip, ip, key)
            if endpoint.instance_id is not None:
                self._by_instance[endpoint.instance_id] = (key, ip)
        self._expiry.put(key, entry, ip, old, endpoint, now)

    def _expired(self, changed: dict[str, str] | None) -> None:
        """What a pass of the expiry timer changed for clients (None: everything)."""
        if changed is None:
            self._changes.announce(None, "reload")
            return
        for key, reason in changed.items():
            self._changes.live_changed(key)
            self._changes.announce(key, reason)

    def release(self) -> None:
        """Answer every waiting blocking query now, with what it has (shutdown, once listeners
        are closed); the copy stays open for the writes still in flight."""
        self._changes.release()

    def close(self) -> None:
        """Stop the timer and answer every blocking query now (shutdown); later ones return at
        once."""
        self._expiry.close()
        self._changes.close()
