"""Lease expiry in the registry copy: which leases have lapsed here (`Expiry`), the queue of
when each must be looked at next (`ExpiryQueue`) with its one timer, and the mass-expiry guards
that decide whether clients still see lapsed endpoints.

The queue holds one live entry per lease, however often it is renewed: a renewal moves the
lease's expiry, not its entry; when the entry comes due the lease is found renewed and
scheduled again at its current expiry. Removed and shortened leases leave stale entries in the
heap, skipped when popped; the heap is rebuilt from the live entries when it holds more than
twice as many (plus a constant), so its size is bounded by the leases, not by the writes.

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

Lease = tuple[str, str]  # (lowercased service name, ip)
_SLACK = 64  # stale entries tolerated beyond the live ones before a rebuild
_TIMER_MIN_DELAY = 0.02  # coalesce expiries that fall close together into one pass
_GUARD_RECHECK_SECONDS = 1.0  # while a mass-expiry guard holds, how often it is re-evaluated

# What a pass of the timer changed for clients: None for everything (the global guard turned),
# else service key -> "expire" (lapsed endpoints left its answers) or "update" (they came back).
ExpiredCallback = Callable[[dict[str, str] | None], None]


class ExpiryQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, str, str]] = []
        self._due: dict[Lease, float] = {}  # each lease's live entry

    def __len__(self) -> int:
        """Entries in the heap, stale ones included: at most 2 x leases + 64."""
        return len(self._heap)

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()

    def schedule(self, lease: Lease, at: float) -> None:
        """Make sure `lease` comes due by `at`. A lease with an entry due earlier needs no new
        one (it comes due, and is scheduled again at its expiry then)."""
        due = self._due.get(lease)
        if due is not None and due <= at:
            return
        self._due[lease] = at
        heapq.heappush(self._heap, (at, *lease))
        if len(self._heap) > 2 * len(self._due) + _SLACK:  # O(1) amortised over the pushes
            self._heap = [(t, *held) for held, t in self._due.items()]
            heapq.heapify(self._heap)

    def forget(self, lease: Lease) -> None:
        """`lease` is gone: its entry turns stale."""
        self._due.pop(lease, None)

    def next_due(self) -> float:
        """When the earliest entry comes due (inf: none); a stale one may come first."""
        return self._heap[0][0] if self._heap else float("inf")

    def pop_due(self, now: float) -> Iterator[Lease]:
        """The leases whose entry is due at `now`, each entry removed (schedule again what is
        still leased). Scheduling while iterating is allowed."""
        while self._heap and self._heap[0][0] <= now:
            due, *held = heapq.heappop(self._heap)
            lease = (held[0], held[1])
            if self._due.get(lease) == due:
                del self._due[lease]
                yield lease


class Leased(Protocol):
    """What expiry reads and sets on one service of the copy (`registry._Stored`)."""

    hidden: set[str]  # ips whose lease lapsed here
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
        self._leased: dict[Lease, float] = {}  # each lease's expiry
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

    # ---- what the registry tells it --------------------------------------------------------
    def clear(self) -> None:
        """Forget every lease (a reload puts them all again)."""
        self._leased.clear()
        self._queue.clear()
        self._hidden_total = 0
        self.guarded.clear()

    def track(self, key: str, entry: Leased, e: Endpoint, now: float) -> None:
        """An endpoint was put: hidden at once if its lease has lapsed, else scheduled."""
        if e.expires_at is None:
            return
        self._leased[(key, e.ip)] = e.expires_at
        entry.leased += 1
        if e.expires_at <= now:
            entry.hidden.add(e.ip)
            self._hidden_total += 1
        else:
            self._queue.schedule((key, e.ip), e.expires_at)

    def untrack(self, key: str, entry: Leased, ip: str, removed: bool) -> None:
        """An endpoint is about to be replaced (`track` follows) or is `removed`."""
        if ip in entry.hidden:
            entry.hidden.discard(ip)
            self._hidden_total -= 1
        if self._leased.pop((key, ip), None) is not None:
            entry.leased -= 1
        if removed:
            self._queue.forget((key, ip))

    def drop(self, key: str, entry: Leased, ips: Sequence[str]) -> None:
        """A service left the copy with its endpoints `ips`."""
        for ip in ips:
            self._leased.pop((key, ip), None)
            self._queue.forget((key, ip))
        self._hidden_total -= len(entry.hidden)
        self.guarded.discard(key)

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
            at = self._leased.get((key, ip))
            entry = self._entries.get(key)
            if at is None or entry is None or ip in entry.hidden:
                continue
            if at > now:  # renewed since it was scheduled: due again at its current expiry
                self._queue.schedule((key, ip), at)
                continue
            entry.hidden.add(ip)
            entry.view = None
            self._hidden_total += 1
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
