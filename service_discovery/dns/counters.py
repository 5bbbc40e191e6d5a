"""The DNS query counters: plain ints on the hot path, added to the Prometheus metrics later.

A prometheus `inc` takes a lock (~1 us), more than a cached answer costs to serve, so the
handler adds to plain integers and `flush` moves what was counted into the `Metrics` every
second and at stop. Query counts are kept in cells (one-item lists) per (transport, type,
rcode); each cached answer holds its pair of cells, so a hit is one addition. What the limits
did is counted the same way, in a cell per (limit, action).
"""

from __future__ import annotations

from service_discovery.dns.records import RCODE_NAMES, TYPE_NAMES
from service_discovery.metrics import Metrics

Labels = tuple[str, str, str]  # transport, query type, rcode
LIMITS = ("misses", "rrl", "tcp_connections", "tcp_per_client", "tcp_write_timeout")
ACTIONS = ("truncated", "dropped", "refused", "closed")


class Counters:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._cells: dict[Labels, list[int]] = {}
        self._flushed: dict[Labels, int] = {}
        self._pairs: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        self.hits = self.misses = self.truncated = self.dropped = self.uncached = 0
        self._flushed_simple = [0, 0, 0, 0]
        self._limited: dict[tuple[str, str], list[int]] = {}
        self._limited_flushed: dict[tuple[str, str], int] = {}

    def limited(self, limit: str, action: str) -> list[int]:
        """The cell counting what `limit` did (`action`) to a query or connection."""
        assert limit in LIMITS and action in ACTIONS, (limit, action)  # fixed label values
        cell = self._limited.get((limit, action))
        if cell is None:
            cell = self._limited[(limit, action)] = [0]
        return cell

    def cell(self, transport: str, qtype: int, rcode: int) -> list[int]:
        # Labels come from fixed tables, so hostile query types cannot add label values.
        labels = (transport, TYPE_NAMES.get(qtype, "other"), RCODE_NAMES.get(rcode, "other"))
        cell = self._cells.get(labels)
        if cell is None:
            cell = self._cells[labels] = [0]
        return cell

    def cells_for(self, qtype: int, rcode: int) -> tuple[list[int], list[int]]:
        """The (udp, tcp) cells an answer of this type and rcode counts its responses in."""
        key = (TYPE_NAMES.get(qtype, "other"), rcode)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = (
                self.cell("udp", qtype, rcode),
                self.cell("tcp", qtype, rcode),
            )
        return pair

    def flush(self) -> None:
        """Add what was counted since the last flush to the Prometheus metrics."""
        m = self._metrics
        for labels, cell in self._cells.items():
            delta = cell[0] - self._flushed.get(labels, 0)
            if delta:
                m.dns_queries.labels(*labels).inc(delta)
                self._flushed[labels] = cell[0]
        # Hits are not counted on the hot path: every response adds one to a query cell, and
        # each is an error (never cached), a miss or a hit.
        self.hits = sum(c[0] for c in self._cells.values()) - self.misses - self.uncached
        now = [self.hits, self.misses, self.truncated, self.dropped]
        counters = (m.dns_cache_hits, m.dns_cache_misses, m.dns_truncated, m.dns_dropped)
        for i, counter in enumerate(counters):
            if now[i] != self._flushed_simple[i]:
                counter.inc(now[i] - self._flushed_simple[i])
        self._flushed_simple = now
        for pair, cell in self._limited.items():
            delta = cell[0] - self._limited_flushed.get(pair, 0)
            if delta:
                m.dns_limited.labels(*pair).inc(delta)
                self._limited_flushed[pair] = cell[0]
