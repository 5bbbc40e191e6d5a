"""The lease-expiry queue of the registry copy: when each lease must be looked at next.

One live entry per lease, however often it is renewed: a renewal moves the lease's expiry (kept
by the caller), not its entry; when the entry comes due the caller finds the lease renewed and
schedules it again at its current expiry. Removed and shortened leases leave stale entries in
the heap, skipped when popped; the heap is rebuilt from the live entries when it holds more than
twice as many (plus a constant), so its size is bounded by the leases, not by the writes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

Lease = tuple[str, str]  # (lowercased service name, ip)
_SLACK = 64  # stale entries tolerated beyond the live ones before a rebuild


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
