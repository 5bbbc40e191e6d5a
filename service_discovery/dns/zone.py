"""What the resolver reads: the zone's fixed shape, and the catalog with indexes derived from it.

`Zone` holds what Config decides (origin, NS host, TTLs), built once at start. `ZoneView`
holds the catalog's reads (`CatalogReads`) plus the indexes the resolver derives from them;
each index hears of every change (`changed`) and brings itself up to date when it is next
read, so forward lookups never pay for an index only reverse lookups use. Indexes the resolver
needs later (per-service ones included) belong here, beside the reverse-zone index
(`dns.reverse`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from service_discovery.config import Config
from service_discovery.dns.records import AAAA, IN_ADDR, IP6, A, Name, split_name
from service_discovery.dns.reverse import ReverseIndex
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
    """The catalog plus the indexes derived from it: `reverse`, whether a reverse name leads to
    a live endpoint."""

    def __init__(self, catalog: CatalogReads) -> None:
        self.catalog = catalog
        self.reverse = ReverseIndex(catalog.find, catalog.services)

    def changed(self, key: str | None) -> None:
        """Service `key` changed (None: anything may have): tell the indexes."""
        self.reverse.changed(key)
