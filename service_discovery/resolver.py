"""DNS resolution as a pure function: (question, registry view, config) -> answer records.

This module owns which names exist in the zone and what they answer: the apex (SOA, NS), the
NS host, `<service>`, `<tag>.<service>`, `_<port>._<proto>.<service>` (and the empty
non-terminal `_<proto>.<service>`), and PTR names in the reverse zones of live endpoints. It
does no I/O and knows nothing of the wire format (`dns.py` encodes, caches and serves).

Names are tuples of lowercase labels, so a label holding a dot or odd bytes can never be
mistaken for two labels of the zone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from service_discovery.config import Config
from service_discovery.model import Service

# Record types and classes (RFC 1035, 3596, 2782, 6891, 8482).
A, NS, SOA, PTR, AAAA, SRV, OPT, IXFR, AXFR, ANY = 1, 2, 6, 12, 28, 33, 41, 251, 252, 255
CLASS_IN = 1
TYPE_NAMES = {A: "A", NS: "NS", SOA: "SOA", PTR: "PTR", AAAA: "AAAA", SRV: "SRV", ANY: "ANY"}
TYPE_NAMES.update({OPT: "OPT", IXFR: "IXFR", AXFR: "AXFR", 5: "CNAME", 15: "MX", 16: "TXT"})
TYPE_NAMES.update({64: "SVCB", 65: "HTTPS", 99: "SPF", 257: "CAA"})

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
RCODE_NAMES = {
    NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS",
}  # fmt: skip

# SOA timers only matter to secondaries doing zone transfers, which we refuse; these are the
# conventional small values for a zone that changes all the time.
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 60, 10, 3600

Name = tuple[str, ...]
_IN_ADDR: Name = ("in-addr", "arpa")
_IP6: Name = ("ip6", "arpa")
# We claim the /24 (IPv4) or /64 (IPv6) around each live endpoint as a reverse zone: unknown
# addresses next to ours get NXDOMAIN (a forwarder for in-addr.arpa works), the rest REFUSED.
_V4_ZONE_LABELS = 3 + len(_IN_ADDR)
_V4_NAME_LABELS = 4 + len(_IN_ADDR)
_V6_ZONE_LABELS = 16 + len(_IP6)
_V6_NAME_LABELS = 32 + len(_IP6)
_HEX = frozenset("0123456789abcdef")


class Srv(NamedTuple):
    priority: int
    weight: int
    port: int
    target: Name


class Soa(NamedTuple):
    mname: Name
    rname: Name
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


# Records, questions and answers are NamedTuples: a miss builds several per query, and a tuple
# is several times cheaper to make than a frozen dataclass.
class Record(NamedTuple):
    """One resource record, class IN. rdata: address text (A, AAAA), a Name (NS, PTR), Srv, Soa."""

    name: Name
    rtype: int
    ttl: int
    rdata: str | Name | Srv | Soa

    def to_zone(self) -> str:
        """The record as a zone-file line: `webapp.svc.cluster.local. 5 IN A 127.0.0.1`."""
        data = self.rdata
        if isinstance(data, Srv):
            text = f"{data.priority} {data.weight} {data.port} {name_text(data.target)}"
        elif isinstance(data, Soa):
            text = (
                f"{name_text(data.mname)} {name_text(data.rname)} {data.serial} {data.refresh} "
                f"{data.retry} {data.expire} {data.minimum}"
            )
        elif isinstance(data, tuple):
            text = name_text(data)
        else:
            text = data
        return f"{name_text(self.name)} {self.ttl} IN {TYPE_NAMES[self.rtype]} {text}"


class Question(NamedTuple):
    name: Name  # lowercase labels, no root label
    qtype: int
    qclass: int = CLASS_IN


class Answer(NamedTuple):
    rcode: int
    authoritative: bool = True
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    # What a change must touch to make this answer stale: the key of the one service it was
    # built from, or None for "any change" (negative answers, the apex, reverse names).
    depends_on: str | None = None


class RegistryView(Protocol):
    """What the resolver reads from the registry copy (service_discovery.registry.Registry)."""

    version: int
    loaded: bool

    def get(self, name: str) -> Service | None: ...
    def services(self) -> list[Service]: ...
    def names_for_ip(self, ip: str) -> tuple[str, ...]: ...


class ZoneView:
    """The registry copy plus an index derived from it: which reverse zones hold live endpoints.

    The index is built on the first reverse lookup after a change (`invalidate` drops it), so
    forward lookups never pay for it.
    """

    def __init__(self, registry: RegistryView) -> None:
        self.registry = registry
        self._reverse: dict[Name, set[Name]] | None = None

    def invalidate(self) -> None:
        self._reverse = None

    def reverse_zone(self, zone: Name) -> set[Name] | None:
        """The reverse names of live endpoints inside `zone`, or None if we do not serve it."""
        if self._reverse is None:
            index: dict[Name, set[Name]] = {}
            for svc in self.registry.services():
                for e in svc.endpoints:
                    name = reverse_name(e.ip)
                    size = _V6_ZONE_LABELS if name[-2:] == _IP6 else _V4_ZONE_LABELS
                    index.setdefault(name[-size:], set()).add(name)
            self._reverse = index
        return self._reverse.get(zone)


def name_text(name: Name) -> str:
    """Presentation form with the trailing dot; unusual bytes escaped as in zone files."""
    if not name:
        return "."
    return ".".join(_label_text(label) for label in name) + "."


def _label_text(label: str) -> str:
    if label.isascii() and (label.replace("-", "").replace("_", "").isalnum()):
        return label
    out = []
    for ch in label:
        code = ord(ch)
        if ch in '.\\"();$@':
            out.append("\\" + ch)
        elif 0x21 <= code <= 0x7E:
            out.append(ch)
        else:
            out.append(f"\\{code:03d}")
    return "".join(out)


def split_name(text: str) -> Name:
    """`WebApp.svc.cluster.local.` -> ("webapp", "svc", "cluster", "local") (tests, config)."""
    text = text.strip().rstrip(".").lower()
    return tuple(text.split(".")) if text else ()


def reverse_name(ip: str) -> Name:
    """The PTR owner name of an address: 1.0.0.127.in-addr.arpa or the 32-nibble ip6.arpa."""
    if ":" in ip:
        nibbles = ipaddress.IPv6Address(ip).exploded.replace(":", "")
        return tuple(reversed(nibbles)) + _IP6
    return tuple(reversed(ip.split("."))) + _IN_ADDR


class _Zone:
    """Config-derived constants, computed once per Config object (see `_zone_of`)."""

    def __init__(self, config: Config) -> None:
        self.origin: Name = split_name(config.dns_domain)
        self.depth = len(self.origin)
        self.ttl = config.dns_ttl
        self.negative_ttl = config.negative_ttl
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


_zones: dict[int, tuple[Config, _Zone]] = {}


def _zone_of(config: Config) -> _Zone:
    # Keyed by identity: hashing a Config of forty fields on every miss would cost more than
    # the lookup it saves. The Config is kept in the value so its id cannot be reused.
    hit = _zones.get(id(config))
    if hit is None or hit[0] is not config:
        if len(_zones) > 64:
            _zones.clear()
        hit = _zones[id(config)] = (config, _Zone(config))
    return hit[1]


def resolve(question: Question, view: ZoneView, config: Config) -> Answer:
    """Answer one question from the registry view. Never raises for odd names."""
    zone = _zone_of(config)
    registry = view.registry
    if not registry.loaded:
        # Before the first load an empty copy would turn every name into NXDOMAIN.
        return Answer(SERVFAIL, authoritative=False)
    qtype = question.qtype
    name = question.name
    lowered = tuple(map(str.lower, name))
    if lowered != name:
        name = lowered  # else keep the caller's tuple: owner names are then that very object
    if question.qclass != CLASS_IN:
        return Answer(REFUSED, authoritative=False)
    if qtype in (AXFR, IXFR):
        return Answer(REFUSED, authoritative=False)  # no zone transfers, to anyone
    if name[-zone.depth :] == zone.origin and len(name) >= zone.depth:
        return _forward(name, name[: len(name) - zone.depth], qtype, registry, zone)
    if name[-2:] in (_IN_ADDR, _IP6):
        return _reverse(name, qtype, view, zone)
    return Answer(REFUSED, authoritative=False)  # not an open resolver: never recurse


# ---- the forward zone ----------------------------------------------------------------------
def _soa(zone: _Zone, owner: Name, serial: int) -> Record:
    # The SOA's own TTL is the negative TTL too: RFC 2308 caches negative answers for
    # min(SOA TTL, SOA minimum), and DNS_NEGATIVE_TTL is meant to be that number.
    data = Soa(zone.ns, zone.rname, serial & 0xFFFFFFFF, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE,
               zone.negative_ttl)  # fmt: skip
    return Record(owner, SOA, zone.negative_ttl, data)


def _negative(rcode: int, zone: _Zone, apex: Name, serial: int, depends_on: str | None) -> Answer:
    return Answer(rcode, authority=(_soa(zone, apex, serial),), depends_on=depends_on)


def _addresses(owner: Name, qtype: int, ips: Iterable[str], ttl: int) -> tuple[Record, ...]:
    if qtype == AAAA:
        return tuple([Record(owner, AAAA, ttl, ip) for ip in ips if ":" in ip])
    return tuple([Record(owner, A, ttl, ip) for ip in ips if ":" not in ip])


def _forward(name: Name, rel: Name, qtype: int, registry: RegistryView, zone: _Zone) -> Answer:
    serial = registry.version
    origin = zone.origin
    if not rel:
        if qtype in (SOA, ANY):  # ANY: one RRset is enough (RFC 8482)
            return Answer(NOERROR, answer=(_soa(zone, origin, serial),))
        if qtype == NS:
            glue = _ns_glue(zone)
            return Answer(NOERROR, answer=(Record(origin, NS, zone.ttl, zone.ns),), additional=glue)
        return _negative(NOERROR, zone, origin, serial, None)
    if rel == zone.ns_rel:
        # The NS host wins over a service of the same name, so delegation checks see us.
        rtype, ip = zone.ns_glue
        if qtype in (rtype, ANY):
            return Answer(NOERROR, answer=(Record(name, rtype, zone.ttl, ip),))
        return _negative(NOERROR, zone, origin, serial, None)

    key = rel[-1]
    svc = registry.get(key) if key.isascii() else None
    if svc is None:
        # Negative answers depend on every change (any write may create the name): None.
        return _negative(NXDOMAIN, zone, origin, serial, None)
    # `key` is the lowercase label that found the service: its key
    ips = [e.ip for e in svc.endpoints]
    if len(rel) == 1:
        return _address_answer(name, qtype, ips, zone, serial, key)
    first = rel[0]
    if len(rel) == 2 and first.startswith("_"):
        # `_tcp.<service>` exists (as an empty non-terminal) when some named port uses tcp.
        if any("_" + p.protocol == first for p in svc.named_ports.values()):
            return _negative(NOERROR, zone, origin, serial, key)
        return _negative(NXDOMAIN, zone, origin, serial, None)
    if len(rel) == 2:
        # A tag name exists while a live endpoint carries the tag; otherwise it is NXDOMAIN
        # (every label under a service would otherwise "exist").
        tagged = [e.ip for e in svc.endpoints if any(t.lower() == first for t in e.tags)]
        if not tagged:
            return _negative(NXDOMAIN, zone, origin, serial, None)
        return _address_answer(name, qtype, tagged, zone, serial, key)
    if len(rel) == 3 and first.startswith("_") and rel[1].startswith("_"):
        port = svc.named_ports.get(first[1:])
        if port is not None and "_" + port.protocol == rel[1]:
            if qtype not in (SRV, ANY):
                return _negative(NOERROR, zone, origin, serial, key)
            owner_name = name[2:]  # <service>.<zone>, the SRV target
            srv = Srv(port.priority, port.weight, port.port, owner_name)
            ttl = zone.ttl
            additional = tuple(  # the target's addresses: IPv4 first, as the A query lists them
                [Record(owner_name, A, ttl, ip) for ip in ips if ":" not in ip]
                + [Record(owner_name, AAAA, ttl, ip) for ip in ips if ":" in ip]
            )
            return Answer(NOERROR, True, (Record(name, SRV, ttl, srv),), (), additional, key)
    return _negative(NXDOMAIN, zone, origin, serial, None)


def _address_answer(
    owner: Name, qtype: int, ips: list[str], zone: _Zone, serial: int, key: str
) -> Answer:
    if qtype == ANY:
        # RFC 8482: a minimal answer; the IPv4 set, else the IPv6 set.
        records = _addresses(owner, A, ips, zone.ttl) or _addresses(owner, AAAA, ips, zone.ttl)
    elif qtype in (A, AAAA):
        records = _addresses(owner, qtype, ips, zone.ttl)
    else:
        records = ()
    if not records:
        return _negative(NOERROR, zone, zone.origin, serial, key)  # NODATA
    return Answer(NOERROR, True, records, (), (), key)


def _ns_glue(zone: _Zone) -> tuple[Record, ...]:
    if zone.ns_rel is None:
        return ()
    rtype, ip = zone.ns_glue
    return (Record(zone.ns, rtype, zone.ttl, ip),)


# ---- reverse zones -------------------------------------------------------------------------
def _reverse(name: Name, qtype: int, view: ZoneView, zone: _Zone) -> Answer:
    v6 = name[-2:] == _IP6
    zone_len, full_len = (_V6_ZONE_LABELS, _V6_NAME_LABELS) if v6 else (
        _V4_ZONE_LABELS, _V4_NAME_LABELS
    )  # fmt: skip
    if len(name) < zone_len:
        return Answer(REFUSED, authoritative=False)
    apex = name[-zone_len:]
    inside = view.reverse_zone(apex)
    if inside is None:
        return Answer(REFUSED, authoritative=False)
    serial = view.registry.version
    if len(name) == zone_len:
        if qtype in (SOA, ANY):
            return Answer(NOERROR, answer=(_soa(zone, apex, serial),))
        if qtype == NS:
            return Answer(NOERROR, answer=(Record(apex, NS, zone.ttl, zone.ns),))
        return _negative(NOERROR, zone, apex, serial, None)
    if len(name) < full_len:
        # An empty non-terminal on the way to some endpoint's nibble name (IPv6 only)?
        if any(full[-len(name) :] == name for full in inside):
            return _negative(NOERROR, zone, apex, serial, None)
        return _negative(NXDOMAIN, zone, apex, serial, None)
    ip = _address_of(name[: len(name) - 2], v6) if len(name) == full_len else None
    names = view.registry.names_for_ip(ip) if ip is not None else ()
    if not names:
        return _negative(NXDOMAIN, zone, apex, serial, None)
    if qtype not in (PTR, ANY):
        return _negative(NOERROR, zone, apex, serial, None)
    records = tuple(Record(name, PTR, zone.ttl, (svc, *zone.origin)) for svc in names)
    return Answer(NOERROR, answer=records)


def _address_of(labels: Name, v6: bool) -> str | None:
    """The canonical address text of reversed labels, or None if they are not an address."""
    if v6:
        if not all(len(label) == 1 and label in _HEX for label in labels):
            return None
        nibbles = "".join(reversed(labels))
        groups = ":".join(nibbles[i : i + 4] for i in range(0, 32, 4))
        return str(ipaddress.IPv6Address(groups))
    if not all(label.isdigit() and label.isascii() and len(label) <= 3 for label in labels):
        return None
    if any(len(label) > 1 and label[0] == "0" for label in labels):
        return None  # "01" is not how an address is written in a PTR name
    octets = [int(label) for label in reversed(labels)]
    if any(o > 255 for o in octets):
        return None
    return ".".join(map(str, octets))
