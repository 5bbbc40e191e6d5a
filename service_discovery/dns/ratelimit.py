"""Token buckets per client network: how much a /24 (IPv4) or /56 (IPv6) may still cost.

This module owns how a client is named for a limit (`network`) and how much it has left
(`Buckets.take`). The prefixes are those of response-rate limiting in BIND and Knot: a /24 or
/56 is usually one site, and addresses picked at random within one count as one client. The
table of buckets is bounded: a bucket that has refilled to its burst holds nothing worth
keeping and is forgotten first. What each limit protects, and what a client beyond it gets,
is decided by `handler`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from itertools import islice

# A bucket holds this many seconds of its rate: a client may burst to it after a quiet spell.
BURST_SECONDS = 2
# Enough for every site that is active at once; a flood from ever-new spoofed networks makes
# the table forget the oldest half (which then start again from a full bucket), never grow.
MAX_NETWORKS = 16384


def network(host: str) -> str | bytes:
    """The /24 of an IPv4 address (as text: "10.1.2"), or the /56 of an IPv6 one (7 bytes)."""
    if ":" not in host or "." in host:  # IPv4, or IPv4-mapped IPv6 ("::ffff:10.1.2.3")
        return host.rpartition(".")[0]
    try:
        return socket.inet_pton(socket.AF_INET6, host.partition("%")[0])[:7]
    except OSError:
        return host


class Buckets:
    """A token bucket per client network: `rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("_burst", "_clock", "_rate", "_table")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = float(rate)
        self._burst = float(max(burst, 1))
        self._clock = clock
        self._table: dict[str | bytes, list[float]] = {}  # network -> [tokens, when counted]

    def __len__(self) -> int:
        return len(self._table)

    def take(self, host: str) -> bool:
        """Spend one token of `host`'s network: True if it had one, False if it is over."""
        key = network(host)
        now = self._clock()
        bucket = self._table.get(key)
        if bucket is None:
            if len(self._table) >= MAX_NETWORKS:
                self._forget(now)
            self._table[key] = [self._burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def _forget(self, now: float) -> None:
        """Drop the buckets that refilled completely (a new one would be the same); if every
        network is still active, the older half (by first use) goes."""
        rate, burst = self._rate, self._burst
        self._table = {k: b for k, b in self._table.items() if b[0] + (now - b[1]) * rate < burst}
        if len(self._table) >= MAX_NETWORKS:
            for key in list(islice(self._table, len(self._table) // 2)):
                del self._table[key]
