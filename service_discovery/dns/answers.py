"""The cache of encoded answers, keyed by the question's bytes, and its invalidation.

Two bounded maps. `stable` holds answers about an existing service (positive and NODATA),
dropped when that service changes. `volatile` holds everything that any write may change:
NXDOMAIN (a write can create the name), the apex SOA (its serial is the registry version), NS,
reverse names; it is cleared on every change. A flood of names that do not exist therefore
fills only `volatile`, capped at a quarter of the size. NODATA answers in `stable` carry the
SOA serial of when they were built: a serial that lags in a negative answer is harmless (it
only sets the negative TTL), and the SOA query itself is always current.

The key is the question as sent on the wire (lowercased name, type, class) plus one byte for
"the query had EDNS0". The handler reads `stable` and `volatile` directly on its hot path;
only this class writes them, and never replaces them.

When a map is full its oldest answer goes, found in O(1) from a queue of keys in the order they
were stored. (A dict's own first key is not O(1) to find once many have been deleted from its
front: `next(iter(d))` walks over every deleted slot, 10 us per eviction at 12,500 answers, paid
by every miss of a flood of random names.)
"""

from __future__ import annotations

from collections import deque

from service_discovery.dns.wire import EncodedAnswer


class AnswerCache:
    __slots__ = (
        "_by_service",
        "_stable_cap",
        "_stable_order",
        "_volatile_cap",
        "_volatile_order",
        "stable",
        "volatile",
    )

    def __init__(self, size: int) -> None:
        self._volatile_cap = size // 4
        self._stable_cap = size - self._volatile_cap
        self.stable: dict[bytes, EncodedAnswer] = {}
        self.volatile: dict[bytes, EncodedAnswer] = {}
        self._by_service: dict[str, set[bytes]] = {}
        # Keys in the order stored. `volatile` loses keys only to eviction and `clear`, so its
        # queue is exact; `stable` also loses them when their service changes, so its queue
        # may hold keys already gone (skipped when met, and dropped when the queue outgrows
        # twice the map).
        self._volatile_order: deque[bytes] = deque()
        self._stable_order: deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self.stable) + len(self.volatile)

    def changed(self, key: str | None) -> None:
        """Service `key` changed (None: anything may have): drop the answers it makes stale."""
        self.volatile.clear()
        self._volatile_order.clear()
        if key is None:
            self.stable.clear()
            self._stable_order.clear()
            self._by_service.clear()
            return
        for cache_key in self._by_service.pop(key, ()):
            self.stable.pop(cache_key, None)

    def store(self, key: bytes, entry: EncodedAnswer) -> None:
        """Keep an answer; when full, the oldest one of its kind goes (insertion order)."""
        dep = entry.depends_on
        if dep is None:
            cache = self.volatile
            if len(cache) >= self._volatile_cap:
                if not self._volatile_cap:
                    return
                del cache[self._volatile_order.popleft()]
            cache[key] = entry
            self._volatile_order.append(key)
            return
        cache = self.stable
        order = self._stable_order
        if len(cache) >= self._stable_cap:
            if not self._stable_cap:
                return
            while True:
                old_key = order.popleft()
                old = cache.pop(old_key, None)
                if old is not None:
                    break
            if old.depends_on is not None:  # always so in `stable`
                keys = self._by_service.get(old.depends_on)
                if keys is not None:
                    keys.discard(old_key)
                    if not keys:
                        del self._by_service[old.depends_on]
        cache[key] = entry
        self._by_service.setdefault(dep, set()).add(key)
        order.append(key)
        if len(order) > 2 * len(cache) + 64:
            self._stable_order = deque(cache)  # the keys still held, in the order stored
