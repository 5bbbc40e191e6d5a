"""What the resolver reads: the zone's fixed shape, and the catalog with indexes derived from it.

`Zone` holds what Config decides (origin, NS host, TTLs), built once at start. `ZoneView`
holds the catalog's reads (`CatalogReads`) plus the indexes the resolver derives from them;
each index is dropped when a change makes it stale (`changed`), so forward lookups never pay
for an index only reverse lookups use. Indexes the resolver needs later (per-service ones
included) belong here, beside the reverse-zone index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from service_discovery.config import Config
from service_discovery.dns.records import AAAA, IN_ADDR, IP6, A, Name, reverse_name, split_name
from service_discovery.model import Service

# We claim the /24 (IPv4) or /64 (IPv6) around each live endpoint as a reverse zone: unknown
# addresses next to ours get NXDOMAIN (a forwarder for in-addr.arpa works), the rest REFUSED.
V4_ZONE_LABELS = 3 + len(IN_ADDR)
V4_NAME_LABELS = 4 + len(IN_ADDR)
V6_ZONE_LABELS = 16 + len(IP6)
V6_NAME_LABELS = 32 + len(IP6)


class CatalogReads(Protocol):
    """The reads DNS makes, as service_discovery.catalog.Catalog offers them to front-ends."""

    @property
    def loaded(self) -> bool: ...
    @property
    def version(self) -> int: ...
    def find(self, name: str, /) -> Service | None: ...
    def services(self) -> list[Service]: ...
    def names_for_ip(self, ip: str, /) -> tuple[str, ...]: ...
    def subscribe(self, callback: Callable[[str | None, str], None], /) -> Callable[[], None]: ...


class Zone:
    """The zone as Config shapes it: built once at start and handed to every resolution."""

    __slots__ = (
        "consul_names", "depth", "negative_ttl", "ns", "ns_glue", "ns_rel", "origin", "rname",
        "ttl",
    )  # fmt: skip

    def __init__(self, config: Config) -> None:
        self.origin: Name = split_name(config.dns_domain)
        self.depth = len(self.origin)
        self.ttl = config.dns_ttl
        self.negative_ttl = config.negative_ttl
        self.consul_names = config.dns_consul_names  # <svc>.service.<zone> and the like
        self.ns: Name = split_name(config.ns_name)
        self.rname: Name = ("hostmaster", *self.origin)
        own = config.own_address
        self.ns_glue = (AAAA if ":" in own else A, own)
        # The NS host answers inside the zone only if its name is in the zone.
        self.ns_rel: Name | None = (
            self.ns[: -self.depth]
            if self.ns[-self.depth :] == self.origin and len(self.ns) > self.depth
            else None
        )


class ZoneView:
    """The catalog plus an index derived from it: which reverse zones hold live endpoints.

    The index is built on the first reverse lookup after a change (`changed` drops it).
    """

    def __init__(self, catalog: CatalogReads) -> None:
        self.catalog = catalog
        self._reverse: dict[Name, set[Name]] | None = None

    def changed(self, key: str | None) -> None:
        """Service `key` changed (None: anything may have): drop what it makes stale."""
        self._reverse = None

    def reverse_zone(self, zone: Name) -> set[Name] | None:
        """The reverse names of live endpoints inside `zone`, or None if we do not serve it."""
        if self._reverse is None:
            index: dict[Name, set[Name]] = {}
            for svc in self.catalog.services():
                for e in svc.endpoints:
                    name = reverse_name(e.ip)
                    size = V6_ZONE_LABELS if name[-2:] == IP6 else V4_ZONE_LABELS
                    index.setdefault(name[-size:], set()).add(name)
            self._reverse = index
        return self._reverse.get(zone)
