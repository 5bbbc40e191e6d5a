"""Lease expiry in the registry copy: which leases have lapsed here (`Expiry`), the queue of
when each must be looked at next (`ExpiryQueue`) with its one timer, and the mass-expiry guards
that decide whether clients still see lapsed endpoints.

The queue holds, for every lease that has not lapsed, an entry due no later than its expiry,
however often it is renewed: a renewal moves the lease's expiry, not its entry; when the entry
comes due the lease is found renewed and scheduled again at its current expiry. Removed and
shortened leases leave stale entries in the heap, skipped when popped; the heap is rebuilt from
the leases when it holds more than twice as many entries (plus a constant), so its size is
bounded by the leases, not by the writes. The lease itself is the endpoint's `expires_at`, read
where the copy holds it: a lease costs one heap entry and no other record.

One timer, set for the earliest entry, hides lapsed endpoints; no loop polls. The guards apply
the reaper's rule (`mass_expiry.mass_expiry_guards`) to the leases that lapsed here and are not
reaped yet: each service's own guard first, then a global one over the services not kept by
theirs. `Registry` tells `Expiry` of every lease it puts, changes or drops; after each pass of
the timer `Expiry` hands back what clients now see differently (`on_expired`) to announce.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from service_discovery.config import Config
from service_discovery.mass_expiry import mass_expiry
from service_discovery.model import Endpoint, Service

log = logging.getLogger(__name__)

_SLACK = 64  # stale entries tolerated beyond the live ones before a rebuild
_TIMER_MIN_DELAY = 0.02  # coalesce expiries that fall close together into one pass
_GUARD_RECHECK_SECONDS = 1.0  # while a mass-expiry guard holds, how often it is re-evaluated

# What a pass of the timer changed for clients: None for everything (the global guard turned),
# else service key -> "expire" (lapsed endpoints left its answers) or "update" (they came back).
ExpiredCallback = Callable[[dict[str, str] | None], None]


class ExpiryQueue:
    """Entries (due, service key, ip), earliest first; which are stale the caller decides."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str, str]] = []

    def __len__(self) -> int:
        """Entries in the heap, stale ones included: at most 2 x leases + 64."""
        return len(self._heap)

    def clear(self) -> None:
        self._heap.clear()

    def push(self, at: float, key: str, ip: str) -> None:
        heapq.heappush(self._heap, (at, key, ip))

    def rebuild(self, entries: Iterator[tuple[float, str, str]]) -> None:
        """Replace every entry by `entries` (one per lease)."""
        self._heap = list(entries)
        heapq.heapify(self._heap)

    def next_due(self) -> float:
        """When the earliest entry comes due (inf: none); a stale one may come first."""
        return self._heap[0][0] if self._heap else float("inf")

    def pop_due(self, now: float) -> Iterator[tuple[str, str]]:
        """(key, ip) of each entry due at `now`, removed. Pushing while iterating is allowed."""
        while self._heap and self._heap[0][0] <= now:
            _, key, ip = heapq.heappop(self._heap)
            yield key, ip


class Leased(Protocol):
    """What expiry reads and sets on one service of the copy (`stored.Stored`)."""

    endpoints: dict[str, Endpoint]  # by ip; an endpoint's lease is its `expires_at`
    hidden: set[str] | frozenset[str]  # ips whose lease lapsed here (set only by `Expiry`)
    leased: int  # how many of its endpoints have a lease
    guarded: bool  # its own mass-expiry guard holds: its lapsed endpoints stay visible
    view: Service | None  # what clients see, rebuilt when None


class Expiry:
    """The leases of one registry copy; see the module docstring."""

    def __init__(
        self,
        config: Config,
        clock: Callable[[], float],
        entries: Mapping[str, Leased],
        on_expired: ExpiredCallback,
    ) -> None:
        self._config = config
        self._clock = clock
        self._entries = entries  # the registry's services, by key (the same dict, kept current)
        self._on_expired = on_expired
        self._leases = 0  # endpoints with a lease, lapsed or not
        self._hidden_total = 0
        self._queue = ExpiryQueue()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._connected = True
        self._closed = False
        self.guarded: set[str] = set()  # services whose own mass-expiry guard holds
        self.self_preservation = False  # the global guard holds
        self.on_guard: Callable[[bool], None] | None = None

    def kept(self, entry: Leased) -> bool:
        """Whether a mass-expiry guard (its own, or the global one) keeps its lapsed endpoints."""
        return entry.guarded or self.self_preservation

    def queue_size(self) -> int:
        return len(self._queue)

    def due(self, by: float) -> bool:
        """Whether a lease may have lapsed by `by`: one lapsed here, an entry due by then (a
        stale one counts), or a copy that does not hear every change."""
        return not self._connected or self._hidden_total > 0 or self._queue.next_due() <= by

    # ---- what the registry tells it --------------------------------------------------------
    def clear(self) -> None:
        """Forget every lease (a reload puts them all again)."""
        self._leases = 0
        self._queue.clear()
        self._hidden_total = 0
        self.guarded.clear()

    def put(
        self, key: str, entry: Leased, ip: str, old: Endpoint | None, new: Endpoint | None,
        now: float,
    ) -> None:  # fmt: skip
        """Endpoint `ip` of service `key` went from `old` to `new` (None: absent), which
        `entry.endpoints` already holds: a new lease is hidden at once if it has lapsed, else
        scheduled, unless the old lease's entry (due no later than its expiry) already comes
        due in time."""
        queued = float("inf")  # when the entry of `old`'s lease comes due at the latest
        if old is not None and old.expires_at is not None:
            self._leases -= 1
            entry.leased -= 1
            if ip in entry.hidden:
                self._unhide(entry, ip)
            else:
                queued = old.expires_at
        if new is None or new.expires_at is None:
            return
        self._leases += 1
        entry.leased += 1
        at = new.expires_at
        if at <= now:
            self._hide(entry, ip)
        elif queued > at:
            self._queue.push(at, key, ip)
            if len(self._queue) > 2 * self._leases + _SLACK:  # O(1) amortised over the pushes
                self._queue.rebuild(self._due_entries())

    def drop(self, key: str, entry: Leased) -> None:
        """A service left the copy (its queue entries turn stale)."""
        self._leases -= entry.leased
        self._hidden_total -= len(entry.hidden)
        self.guarded.discard(key)

    def _hide(self, entry: Leased, ip: str) -> None:
        hidden = entry.hidden
        if isinstance(hidden, set):
            hidden.add(ip)
        else:
            entry.hidden = {ip}  # a service's first lapse: until now it shared `NO_IPS`
        self._hidden_total += 1

    def _unhide(self, entry: Leased, ip: str) -> None:
        hidden = entry.hidden
        if isinstance(hidden, set):
            hidden.discard(ip)
            if not hidden:
                entry.hidden = frozenset()  # the empty one, shared: a set costs 200 bytes
        self._hidden_total -= 1

    def _due_entries(self) -> Iterator[tuple[float, str, str]]:
        """One queue entry per lease that has not lapsed, at its expiry."""
        for key, entry in self._entries.items():
            if entry.leased:
                hidden = entry.hidden
                for ip, e in entry.endpoints.items():
                    if e.expires_at is not None and ip not in hidden:
                        yield e.expires_at, key, ip

    # ---- the guards --------------------------------------------------------------------------
    def judge(self, key: str, entry: Leased, *, logged: bool = True) -> bool:
        """Recompute one service's own mass-expiry guard (`mass_expiry_guards`, first step)
        from its counts; True if it changed. Its view is rebuilt; the caller announces."""
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
            self.guarded.add(key)
        else:
            self.guarded.discard(key)
        if logged:
            log_guards(*(([key], ()) if guarded else ((), [key])))
        return True

    def refresh_guard(self) -> bool:
        """Recompute the global mass-expiry guard; True if it changed.

        The same rule as the reaper's (`mass_expiry_guards`), applied to the leases that lapsed
        here and are not reaped yet, over the services whose own guard does not hold: when too
        many of those lapse together, every endpoint stays visible until renewals (or the
        reaper's renewal under the guard) bring the share down again.
        """
        guarded_entries = [self._entries[k] for k in self.guarded]
        hidden = self._hidden_total - sum(len(e.hidden) for e in guarded_entries)
        leased = self._leases - sum(e.leased for e in guarded_entries)
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

    # ---- the timer ---------------------------------------------------------------------------
    def set_connected(self, connected: bool) -> None:
        """Whether the copy hears every change (see `Registry.set_connected`): while it does
        not, nothing lapses."""
        self._connected = connected
        if connected:
            self.schedule()

    def schedule(self) -> None:
        """Arm the one timer for the earliest lease expiry (and, while a mass-expiry guard
        holds, for a re-check within _GUARD_RECHECK_SECONDS, so renewals can end it)."""
        at = self._queue.next_due()
        if self.self_preservation or self.guarded:
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

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        """Hide the endpoints whose lease lapsed, apply the guards, report, re-arm."""
        self._timer = None
        self._timer_at = float("inf")
        if not self._connected or self._closed:
            return  # `set_connected(True)` (after the reload) re-arms
        now = self._clock()
        lapsed: set[str] = set()
        for key, ip in self._queue.pop_due(now):
            entry = self._entries.get(key)
            e = entry.endpoints.get(ip) if entry is not None else None
            if entry is None or e is None or e.expires_at is None or ip in entry.hidden:
                continue  # a stale entry: the lease is gone, or lapsed already
            if e.expires_at > now:  # renewed since it was scheduled: due again at its expiry
                self._queue.push(e.expires_at, key, ip)
                continue
            self._hide(entry, ip)
            entry.view = None
            lapsed.add(key)
        # Services with new lapses, and those guarded (renewals may have ended their guard).
        on: list[str] = []
        off: list[str] = []
        for key in sorted(lapsed | self.guarded):
            entry = self._entries[key]
            if self.judge(key, entry, logged=False):
                (on if entry.guarded else off).append(key)
        log_guards(on, off)
        if self.refresh_guard():
            # The guard turned on (lapsed endpoints are shown again) or off (they go): many
            # services may change at once, so everyone re-reads everything.
            self._on_expired(None)
        elif not self.self_preservation:
            # What clients see changed: lapses in unguarded services, and every service whose
            # own guard turned (its lapsed endpoints came back, or went).
            changed = {k for k in lapsed if not self._entries[k].guarded} | {*on, *off}
            self._on_expired(
                {k: "update" if self._entries[k].guarded else "expire" for k in sorted(changed)}
            )
        self.schedule()


def log_guards(on: Sequence[str], off: Sequence[str]) -> None:
    """One log line for the services whose own guard turned on, one for those it turned off."""
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
