"""What the resolver reads: the zone's fixed shape, and the catalog with indexes derived from it.

`Zone` holds what Config decides (origin, NS host, TTLs), built once at start. `ZoneView`
holds the catalog's reads (`CatalogReads`) plus the indexes the resolver derives from them:
one `ServiceIndex` per service (its addresses by family, tag -> addresses, the protocols of its
named ports) and the reverse-zone index (`dns.reverse`). Each hears of every change (`changed`)
and brings itself up to date when it is next read, so forward lookups never pay for an index
only reverse lookups use, and a name under a service costs a dictionary lookup, never a walk
over the service's endpoints and their tags.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Protocol

from service_discovery.config import Config
from service_discovery.dns.records import AAAA, IN_ADDR, IP6, A, Name, split_name
from service_discovery.dns.reverse import ReverseIndex
from service_discovery.model import Service, ip_address

# We claim the /24 (IPv4) or /64 (IPv6) around each live endpoint as a reverse zone: unknown
# addresses next to ours get NXDOMAIN (a forwarder for in-addr.arpa works), the rest REFUSED.
V4_ZONE_LABELS = 3 + len(IN_ADDR)
V4_NAME_LABELS = 4 + len(IN_ADDR)
V6_ZONE_LABELS = 16 + len(IP6)
V6_NAME_LABELS = 32 + len(IP6)
_ADDRESS_CHARS = "0123456789abcdef-"  # what an endpoint's label (`address_label`) is made of


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
        "soa_timers", "srv_per_endpoint", "ttl",
    )  # fmt: skip

    def __init__(self, config: Config) -> None:
        self.origin: Name = split_name(config.dns_domain)
        self.depth = len(self.origin)
        self.ttl = config.dns_ttl
        self.negative_ttl = config.negative_ttl
        self.consul_names = config.dns_consul_names  # <svc>.service.<zone> and the like
        self.ns: Name = split_name(config.ns_name)
        self.rname: Name = ("hostmaster", *self.origin)
        self.soa_timers = (config.dns_soa_refresh, config.dns_soa_retry, config.dns_soa_expire)
        self.srv_per_endpoint = config.dns_srv_targets == "endpoint"
        own = config.own_address
        self.ns_glue = (AAAA if ":" in own else A, own)
        # The NS host answers inside the zone only if its name is in the zone.
        self.ns_rel: Name | None = (
            self.ns[: -self.depth]
            if self.ns[-self.depth :] == self.origin and len(self.ns) > self.depth
            else None
        )


class ServiceIndex:
    """What the resolver needs of one service, derived once per change of it: its addresses by
    family, tag (lowercased) -> the addresses of the endpoints carrying it, and the protocols
    of its named ports (`_tcp.<service>` exists when one uses tcp).

    Building it walks every endpoint and tag once; after that, deciding what a name under the
    service is costs a dictionary lookup, and an answer costs its own size.
    """

    __slots__ = ("_addresses", "protocols", "service", "tags", "v4", "v6")

    def __init__(self, svc: Service) -> None:
        self.service = svc
        v4: list[str] = []
        v6: list[str] = []
        tags: dict[str, tuple[list[str], list[str]]] = {}
        for e in svc.endpoints:
            ip = e.ip
            family = 1 if ":" in ip else 0
            (v6 if family else v4).append(ip)
            # An endpoint is listed once per tag, however many spellings of it it carries.
            for tag in {t.lower() for t in e.tags}:
                lists = tags.get(tag)
                if lists is None:
                    lists = tags[tag] = ([], [])
                lists[family].append(ip)
        self.v4 = v4
        self.v6 = v6
        self.tags = tags
        self.protocols = frozenset("_" + p.protocol for p in svc.named_ports.values())
        self._addresses: frozenset[str] | None = None  # built by the first endpoint name asked

    def has_address(self, ip: str) -> bool:
        """Whether a live endpoint of the service has address `ip` (the model's text)."""
        addresses = self._addresses
        if addresses is None:
            addresses = self._addresses = frozenset(self.v4).union(self.v6)
        return ip in addresses


def label_address(label: str) -> str | None:
    """The address an endpoint's label names (`records.address_label`, lowercase), in the
    model's text, or None if the label is not address-shaped: dashed IPv4 in canonical decimal
    (10-0-0-1, no leading zeros), or IPv6 with dashes for colons, compressed or not
    (fd00--1, fd00-0-0-0-0-0-0-1). Such a label is always an endpoint name, never a tag."""
    if "-" not in label or len(label) > 39 or label.strip(_ADDRESS_CHARS):
        return None
    parts = label.split("-")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):
        if all((p == "0" or p[0] != "0") and int(p) <= 255 for p in parts):
            return ".".join(parts)
    try:
        ipaddress.IPv6Address(label.replace("-", ":"))
    except ValueError:
        return None
    return ip_address(label.replace("-", ":"))


class ZoneView:
    """The catalog plus the indexes derived from it: one `ServiceIndex` per service looked up,
    and `reverse`, whether a reverse name leads to a live endpoint.

    A service's index is built on the first lookup that needs it after a change; `changed`
    (which the DNS server calls for every change the catalog announces, as it does for the
    answer cache) drops what the change makes stale.
    """

    def __init__(self, catalog: CatalogReads) -> None:
        self.catalog = catalog
        self._services: dict[str, ServiceIndex] = {}
        self.reverse = ReverseIndex(catalog.find, catalog.services)
        self.builds = 0  # ServiceIndex objects built: what a miss path test can count

    def changed(self, key: str | None) -> None:
        """Service `key` changed (None: anything may have): tell the indexes."""
        if key is None:
            self._services.clear()
        else:
            self._services.pop(key, None)
        self.reverse.changed(key)

    def service(self, key: str) -> ServiceIndex | None:
        """The index of the service whose key (lowercase name) is `key`, or None if absent."""
        index = self._services.get(key)
        if index is None:
            svc = self.catalog.find(key)
            if svc is None:
                return None
            index = self._services[key] = ServiceIndex(svc)
            self.builds += 1
        return index
