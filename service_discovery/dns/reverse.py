"""The reverse-zone index: whether a reverse name leads to some live endpoint's address.

A reverse lookup asks it of the zone (a /24 or /64 around a live endpoint is ours, anything
else is REFUSED) and, for IPv6, of a name between the zone and a full address (an empty
non-terminal: NODATA, else NXDOMAIN). Live addresses are kept as integers in one sorted list per
family, with repeats (an address live in two services is there twice), so either question is
one bisection: O(log n), whatever the name.

The index follows the catalog service by service: a change marks its service stale, and the
next reverse lookup re-indexes only the stale services (a set difference over each one's live
addresses, what rebuilding its view costs anyway). Only a change of everything (a reload, the
global mass-expiry guard turning), or more than _MAX_STALE services changing between two reverse
lookups, drops it whole. It is built on the first reverse lookup, so forward-only traffic never
pays for it.
"""

from __future__ import annotations

import socket
from array import array
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, MutableSequence

from service_discovery.dns.records import IN_ADDR, IP6, Name
from service_discovery.model import Endpoint, Service

_MAX_STALE = 10_000  # beyond this many changed services, rebuilding is cheaper than tracking
_HEX = frozenset("0123456789abcdef")
_V4 = "I" if array("I").itemsize >= 4 else "L"  # an unsigned type of 32 bits at least


def _number(ip: str) -> tuple[bool, int]:
    """(is IPv6, the address as an integer) of a canonical address."""
    if ":" in ip:
        return True, int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
    return False, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")


def span(name: Name) -> tuple[bool, int, int] | None:
    """The addresses under a reverse name, as (is IPv6, first, last); None if `name` is not a
    reverse name of 1 to 4 octets or 1 to 32 nibbles, written as PTR names write them."""
    labels = name[:-2]
    count = len(labels)
    if name[-2:] == IP6:
        if not 0 < count <= 32 or not all(len(x) == 1 and x in _HEX for x in labels):
            return None
        prefix, shift = int("".join(reversed(labels)), 16), 4 * (32 - count)
        return True, prefix << shift, ((prefix + 1) << shift) - 1
    if name[-2:] == IN_ADDR:
        if not 0 < count <= 4:
            return None
        prefix = 0
        for label in reversed(labels):
            if not (label.isascii() and label.isdigit() and len(label) <= 3):
                return None
            if (len(label) > 1 and label[0] == "0") or int(label) > 255:
                return None  # "01" is not how an octet is written in a PTR name
            prefix = prefix << 8 | int(label)
        shift = 8 * (4 - count)
        return False, prefix << shift, ((prefix + 1) << shift) - 1
    return None


class ReverseIndex:
    """Live addresses by family, sorted; see the module docstring."""

    def __init__(
        self, find: Callable[[str], Service | None], services: Callable[[], list[Service]]
    ) -> None:
        self._find = find  # the catalog's reads: a service's view (live endpoints only)
        self._services = services
        self._built = False
        self._stale: set[str] = set()
        # service key -> the endpoints indexed (its view's own tuple, not a copy)
        self._indexed: dict[str, tuple[Endpoint, ...]] = {}
        # IPv4 addresses packed 4 bytes each, not an int object (32 bytes) and a pointer each
        self._v4: MutableSequence[int] = array(_V4)
        self._v6: list[int] = []

    def changed(self, key: str | None) -> None:
        """Service `key` changed (None: anything may have)."""
        if not self._built:
            return
        if key is None or len(self._stale) >= _MAX_STALE:
            self._built = False
            self._stale.clear()
            self._indexed.clear()
            self._v4, self._v6 = array(_V4), []
            return
        self._stale.add(key)

    def covers(self, name: Name) -> bool:
        """Whether some live endpoint's address lies under the reverse name `name`."""
        found = span(name)
        if found is None:
            return False
        v6, first, last = found
        self._refresh()
        numbers = self._v6 if v6 else self._v4
        at = bisect_left(numbers, first)
        return at < len(numbers) and numbers[at] <= last

    def _refresh(self) -> None:
        if not self._built:
            self._build()
            return
        for key in self._stale:
            svc = self._find(key)
            held = svc.endpoints if svc is not None else ()
            now = {e.ip for e in held}
            old = {e.ip for e in self._indexed.pop(key, ())}
            if now:
                self._indexed[key] = held
            for ip in old - now:
                v6, number = _number(ip)
                numbers = self._v6 if v6 else self._v4
                del numbers[bisect_left(numbers, number)]
            for ip in now - old:
                v6, number = _number(ip)
                insort(self._v6 if v6 else self._v4, number)
        self._stale.clear()

    def _build(self) -> None:
        v4: list[int] = []
        v6: list[int] = []
        for svc in self._services():
            if svc.endpoints:
                self._indexed[svc.key] = svc.endpoints
            # an address held by two services is indexed twice: each removal takes one
            _add_all({e.ip for e in svc.endpoints}, v4, v6)
        v4.sort()
        v6.sort()
        self._v4, self._v6 = array(_V4, v4), v6
        self._built = True


def _add_all(ips: Iterable[str], v4: list[int], v6: list[int]) -> None:
    for ip in ips:
        is_v6, number = _number(ip)
        (v6 if is_v6 else v4).append(number)
