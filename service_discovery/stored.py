"""How the registry copy holds one service (`Stored`), and the values its services share.

A million endpoints must fit in a few hundred MiB, so a service is held without what it does not
need: its header fields, its endpoints keyed by address, and a view for clients only once one
reads it (`registry.Registry._view`). The snapshot's `Service` is not kept: its endpoints tuple
would be a second copy, stale after the first change.

`Shared` makes equal immutable values one object: services with the same named ports share one
mapping of them (most services of a deployment offer the same few ports), and so do equal
attribute mappings and equal tag tuples (a few tags, carried by many endpoints). These values
are never mutated once they reach the copy, so sharing them changes nothing a client sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from service_discovery.model import Endpoint, NamedPort, Service

K = TypeVar("K")
V = TypeVar("V")

NO_IPS: frozenset[str] = frozenset()  # `Stored.hidden` while nothing lapsed: one shared object
# Distinct values remembered per kind; beyond it, sharing starts afresh. Small: a table's key
# copies its value's items (some 400 bytes for 5 attributes), pinned while remembered, and the
# values worth sharing (no attributes, the usual ports and tags) come back within a few services.
_MAX_SHARED = 4096


class _Table(dict[K, V]):
    """Remembers one object per value; forgets everything when full (what is already shared
    stays shared; the table only stops pinning values nobody holds any more)."""

    def share(self, key: K, value: V) -> V:
        held = self.get(key)
        if held is not None:
            return held
        if len(self) >= _MAX_SHARED:
            self.clear()
        self[key] = value
        return value


class Shared:
    """The tables of one registry copy: see the module docstring."""

    __slots__ = ("_attributes", "_ports", "_tags")

    def __init__(self) -> None:
        self._ports: _Table[tuple[tuple[str, NamedPort], ...], Mapping[str, NamedPort]] = _Table()
        self._attributes: _Table[tuple[tuple[str, str], ...], Mapping[str, str]] = _Table()
        self._tags: _Table[tuple[str, ...], tuple[str, ...]] = _Table()

    def ports(self, ports: Mapping[str, NamedPort]) -> Mapping[str, NamedPort]:
        return self._ports.share(tuple(ports.items()), ports)

    def attributes(self, attributes: Mapping[str, str]) -> Mapping[str, str]:
        # keyed in order: services that share a mapping list its keys in the same order
        try:
            return self._attributes.share(tuple(attributes.items()), attributes)
        except TypeError:  # a value that is not a string (written around the API): not shared
            return attributes

    def endpoint(self, e: Endpoint) -> Endpoint:
        """`e`, or an equal endpoint whose tags tuple (and its strings) is shared."""
        tags = e.tags
        if not tags:
            return e  # () is one object already
        held = self._tags.share(tags, tags)
        return e if held is tags else e.tagged(held)


class Stored:
    """One service as the copy holds it: its header fields (`Service`'s, without endpoints),
    `endpoints` keyed by ip, `hidden` = ips whose lease lapsed here (`NO_IPS` while none has),
    `leased` = how many endpoints have a lease, `guarded` = its own mass-expiry guard holds (its
    lapsed endpoints stay visible), `view` = the `Service` clients see, built on demand."""

    __slots__ = (
        "attributes", "created_at", "endpoints", "guarded", "hidden", "id", "leased", "name",
        "named_ports", "updated_at", "version", "view",
    )  # fmt: skip

    def __init__(self, svc: Service, shared: Shared) -> None:
        self.id = svc.id
        self.name = svc.name
        self.attributes = shared.attributes(svc.attributes)
        self.named_ports = shared.ports(svc.named_ports)
        self.version = svc.version
        self.created_at = svc.created_at
        self.updated_at = svc.updated_at
        share = shared.endpoint
        self.endpoints: dict[str, Endpoint] = {e.ip: share(e) for e in svc.endpoints}
        self.hidden: set[str] | frozenset[str] = NO_IPS
        self.leased = 0
        self.guarded = False
        self.view: Service | None = None

    def same(self, svc: Service) -> bool:
        """Whether a full read says exactly what is held."""
        return (
            self.name == svc.name
            and self.attributes == svc.attributes
            and self.named_ports == svc.named_ports
            and len(self.endpoints) == len(svc.endpoints)
            and all(self.endpoints.get(e.ip) == e for e in svc.endpoints)
        )

    def build_view(self, kept: bool) -> Service:
        """The `Service` clients see: every endpoint if `kept` (a mass-expiry guard holds),
        else those whose lease has not lapsed."""
        eps = self.endpoints.values()
        hidden = self.hidden
        endpoints = tuple(e for e in eps if e.ip not in hidden) if hidden and not kept else eps
        return Service(
            self.id, self.name, self.attributes, self.named_ports, tuple(endpoints),
            self.version, self.created_at, self.updated_at,
        )  # fmt: skip


def index_ip(by_ip: dict[str, str | tuple[str, ...]], ip: str, key: str) -> None:
    """Add `key` to the services of `ip` in an index by address: one key is held as itself, more
    as a tuple (an address in two services is rare), never as a set per address."""
    held = by_ip.get(ip)
    if held is None:
        by_ip[ip] = key
    elif isinstance(held, str):
        if held != key:
            by_ip[ip] = (held, key)
    elif key not in held:
        by_ip[ip] = (*held, key)


def unindex_ip(by_ip: dict[str, str | tuple[str, ...]], ip: str, key: str) -> None:
    held = by_ip.get(ip)
    if held is None:
        return
    if isinstance(held, str):
        if held == key:
            del by_ip[ip]
        return
    rest = tuple(k for k in held if k != key)
    by_ip[ip] = rest[0] if len(rest) == 1 else rest
