"""DNS resolution as a pure function: (question, zone view, zone) -> answer records.

This module owns which names exist in the zone and what they answer: the apex (SOA, NS), the
NS host, `<service>` (A/AAAA, and TXT for its attributes), `<address>.<service>` (one
endpoint), `<tag>.<service>`, `_<port>._<proto>.<service>` (and the empty non-terminal
`_<proto>.<service>`), and PTR names in the reverse zones of live endpoints. It does no I/O and
knows nothing of the wire format (`wire` encodes, `answers` caches, `server` serves).
"""

from __future__ import annotations

from service_discovery.dns.records import (
    AAAA,
    ANY,
    AXFR,
    CLASS_IN,
    IN_ADDR,
    IP6,
    IXFR,
    NOERROR,
    NS,
    NXDOMAIN,
    PTR,
    REFUSED,
    SERVFAIL,
    SOA,
    SRV,
    TXT,
    A,
    Answer,
    Name,
    Question,
    Record,
    Soa,
    Srv,
    address_label,
    attribute_txt,
)
from service_discovery.dns.zone import (
    V4_NAME_LABELS,
    V4_ZONE_LABELS,
    V6_NAME_LABELS,
    V6_ZONE_LABELS,
    ServiceIndex,
    Zone,
    ZoneView,
    label_address,
)
from service_discovery.model import NamedPort, default_port, ip_address

_HEX = frozenset("0123456789abcdef")


def resolve(question: Question, view: ZoneView, zone: Zone) -> Answer:
    """Answer one question from the zone view. Never raises for odd names."""
    catalog = view.catalog
    if not catalog.loaded:
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
        return _forward(name, name[: len(name) - zone.depth], qtype, view, zone)
    if name[-2:] in (IN_ADDR, IP6):
        return _reverse(name, qtype, view, zone)
    return Answer(REFUSED, authoritative=False)  # not an open resolver: never recurse


# ---- the forward zone ----------------------------------------------------------------------
def _soa(zone: Zone, owner: Name, serial: int) -> Record:
    # The SOA's own TTL is the negative TTL too: RFC 2308 caches negative answers for
    # min(SOA TTL, SOA minimum), and DNS_NEGATIVE_TTL is meant to be that number.
    # Refresh, retry and expire (DNS_SOA_*) matter only to secondaries, and we refuse zone
    # transfers; still, checkers and secondaries read them, so they follow RFC 1912.
    data = Soa(zone.ns, zone.rname, serial & 0xFFFFFFFF, *zone.soa_timers, zone.negative_ttl)
    return Record(owner, SOA, zone.negative_ttl, data)


def _negative(rcode: int, zone: Zone, apex: Name, serial: int, depends_on: str | None) -> Answer:
    return Answer(rcode, authority=(_soa(zone, apex, serial),), depends_on=depends_on)


def _forward(name: Name, rel: Name, qtype: int, view: ZoneView, zone: Zone) -> Answer:
    serial = view.catalog.version
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

    if zone.consul_names and len(rel) >= 2 and rel[-1] == "service":
        return _consul(name, rel[:-1], qtype, view, zone)
    # What the name is, decided from the service's index before any address list is touched:
    # a name that does not exist costs a few dictionary lookups however big the service is.
    key = rel[-1]
    svc = view.service(key) if key.isascii() else None
    if svc is None:
        # Negative answers depend on every change (any write may create the name): None.
        return _negative(NXDOMAIN, zone, origin, serial, None)
    # `key` is the lowercase label that found the service: its key
    if len(rel) == 1:
        return _service_answer(name, qtype, svc, zone, serial, key)
    first = rel[0]
    if len(rel) == 2 and first.startswith("_"):
        # `_tcp.<service>` exists (as an empty non-terminal) when some named port uses tcp.
        if first in svc.protocols:
            return _negative(NOERROR, zone, origin, serial, key)
        return _negative(NXDOMAIN, zone, origin, serial, None)
    if len(rel) == 2:
        return _under_service(name, first, qtype, svc, zone, serial, key)
    if len(rel) == 3 and first.startswith("_") and rel[1].startswith("_"):
        port = svc.service.named_ports.get(first[1:])
        if port is not None and "_" + port.protocol == rel[1]:
            if qtype not in (SRV, ANY):
                return _negative(NOERROR, zone, origin, serial, key)
            return _srv_answer(name, name[2:], port, svc, zone, serial, key)
    return _negative(NXDOMAIN, zone, origin, serial, None)


def _under_service(
    name: Name, first: str, qtype: int, svc: ServiceIndex, zone: Zone, serial: int, key: str
) -> Answer:
    """`<first>.<service>`: one endpoint's name if `first` is address-shaped (that shape always
    wins over a tag of the same spelling), else a tag's. A tag name exists while a live
    endpoint carries the tag; otherwise it is NXDOMAIN (every label under a service would
    otherwise "exist"); so is an address name of no live endpoint of the service."""
    ip = label_address(first)
    if ip is not None:
        if not svc.has_address(ip):
            return _negative(NXDOMAIN, zone, zone.origin, serial, None)
        one = [ip]
        return _address_answer(name, qtype, [] if ":" in ip else one, one if ":" in ip else [],
                               zone, serial, key)  # fmt: skip
    tagged = svc.tags.get(first)
    if tagged is None:
        return _negative(NXDOMAIN, zone, zone.origin, serial, None)
    return _address_answer(name, qtype, tagged[0], tagged[1], zone, serial, key)


def _srv_answer(
    name: Name, target: Name, port: NamedPort, svc: ServiceIndex, zone: Zone, serial: int, key: str
) -> Answer:
    """The SRV answer of a named port whose addresses are `target`'s. With DNS_SRV_TARGETS=
    endpoint, one record per live endpoint (IPv4 first), each targeting that endpoint's own
    name `<address>.<target>` with its address as glue; none is NODATA. Otherwise one record
    targeting `target`, with every address in the additional section, even with none."""
    ttl = zone.ttl
    p = port.priority, port.weight, port.port
    if zone.srv_per_endpoint:
        targets = [((address_label(ip), *target), A, ip) for ip in svc.v4]
        targets += [((address_label(ip), *target), AAAA, ip) for ip in svc.v6]
        if not targets:
            return _negative(NOERROR, zone, zone.origin, serial, key)
        answer = tuple([Record(name, SRV, ttl, Srv(*p, t)) for t, _, _ in targets])
        glue = tuple([Record(t, rtype, ttl, ip) for t, rtype, ip in targets])
        return Answer(NOERROR, True, answer, (), glue, key)
    additional = tuple(  # the target's addresses: IPv4 first, as the A query lists them
        [Record(target, A, ttl, ip) for ip in svc.v4]
        + [Record(target, AAAA, ttl, ip) for ip in svc.v6]
    )
    return Answer(NOERROR, True, (Record(name, SRV, ttl, Srv(*p, target)),), (), additional, key)


def _consul(name: Name, rel: Name, qtype: int, view: ZoneView, zone: Zone) -> Answer:
    """Consul's names under `service.<zone>` (SD_DNS_CONSUL_NAMES): `<svc>`, `<tag>.<svc>` and
    `_<svc>._tcp` (RFC 2782), answered from the same service as the native names. The SRV
    record carries the service's default port (`model.default_port`, the Consul API's
    ServicePort) and targets `<svc>.service.<zone>`, whose addresses come in the additional
    section. Decided from the service's index, as the native names are."""
    serial = view.catalog.version
    srv = len(rel) == 2 and rel[0].startswith("_") and rel[1] == "_tcp"
    key = rel[0][1:] if srv else rel[-1]
    svc = view.service(key) if key.isascii() and len(rel) <= 2 else None
    if svc is None:
        return _negative(NXDOMAIN, zone, zone.origin, serial, None)
    if len(rel) == 1:
        return _service_answer(name, qtype, svc, zone, serial, key)
    if not srv:  # `<address>.<svc>` or `<tag>.<svc>`, as under the native name
        return _under_service(name, rel[0], qtype, svc, zone, serial, key)
    port = default_port(svc.service)
    if port is None or port.protocol != "tcp":
        return _negative(NXDOMAIN, zone, zone.origin, serial, None)
    if qtype not in (SRV, ANY):
        return _negative(NOERROR, zone, zone.origin, serial, key)
    return _srv_answer(name, (key, "service", *zone.origin), port, svc, zone, serial, key)


def _service_answer(
    owner: Name, qtype: int, svc: ServiceIndex, zone: Zone, serial: int, key: str
) -> Answer:
    """`<service>`: its endpoints' addresses, or for TXT its attributes, one record each in
    RFC 1464 form (`attribute_txt`), sorted by name; no attribute is NODATA."""
    if qtype != TXT:
        return _address_answer(owner, qtype, svc.v4, svc.v6, zone, serial, key)
    attributes = svc.service.attributes
    ttl = zone.ttl
    txts = [attribute_txt(k, attributes[k]) for k in sorted(attributes)]
    records = tuple([Record(owner, TXT, ttl, txt) for txt in txts if txt is not None])
    if not records:
        return _negative(NOERROR, zone, zone.origin, serial, key)
    return Answer(NOERROR, True, records, (), (), key)


def _address_answer(
    owner: Name, qtype: int, v4: list[str], v6: list[str], zone: Zone, serial: int, key: str
) -> Answer:
    """The A or AAAA RRset of `owner` (ANY: the IPv4 set, else the IPv6 set, as RFC 8482
    allows), or NODATA. Only the list answered is read."""
    ttl = zone.ttl
    if (qtype == A or qtype == ANY) and v4:
        records = tuple([Record(owner, A, ttl, ip) for ip in v4])
    elif (qtype == AAAA or qtype == ANY) and v6:
        records = tuple([Record(owner, AAAA, ttl, ip) for ip in v6])
    else:
        return _negative(NOERROR, zone, zone.origin, serial, key)  # NODATA
    return Answer(NOERROR, True, records, (), (), key)


def _ns_glue(zone: Zone) -> tuple[Record, ...]:
    if zone.ns_rel is None:
        return ()
    rtype, ip = zone.ns_glue
    return (Record(zone.ns, rtype, zone.ttl, ip),)


# ---- reverse zones -------------------------------------------------------------------------
def _reverse(name: Name, qtype: int, view: ZoneView, zone: Zone) -> Answer:
    v6 = name[-2:] == IP6
    zone_len, full_len = (V6_ZONE_LABELS, V6_NAME_LABELS) if v6 else (
        V4_ZONE_LABELS, V4_NAME_LABELS
    )  # fmt: skip
    if len(name) < zone_len:
        return Answer(REFUSED, authoritative=False)
    apex = name[-zone_len:]
    if not view.reverse.covers(apex):
        return Answer(REFUSED, authoritative=False)
    serial = view.catalog.version
    if len(name) == zone_len:
        if qtype in (SOA, ANY):
            return Answer(NOERROR, answer=(_soa(zone, apex, serial),))
        if qtype == NS:
            return Answer(NOERROR, answer=(Record(apex, NS, zone.ttl, zone.ns),))
        return _negative(NOERROR, zone, apex, serial, None)
    if len(name) < full_len:
        # An empty non-terminal on the way to some endpoint's nibble name (IPv6 only)?
        if view.reverse.covers(name):
            return _negative(NOERROR, zone, apex, serial, None)
        return _negative(NXDOMAIN, zone, apex, serial, None)
    ip = _address_of(name[: len(name) - 2], v6) if len(name) == full_len else None
    names = view.catalog.names_for_ip(ip) if ip is not None else ()
    if not names:
        return _negative(NXDOMAIN, zone, apex, serial, None)
    if qtype not in (PTR, ANY):
        return _negative(NOERROR, zone, apex, serial, None)
    records = tuple(Record(name, PTR, zone.ttl, (svc, *zone.origin)) for svc in names)
    return Answer(NOERROR, answer=records)


def _address_of(labels: Name, v6: bool) -> str | None:
    """The canonical address text of reversed labels (the model's, which the copy is keyed by:
    ::ffff:10.0.0.1, not Python's ::ffff:a00:1), or None if they are not an address."""
    if v6:
        if not all(len(label) == 1 and label in _HEX for label in labels):
            return None
        nibbles = "".join(reversed(labels))
        groups = ":".join(nibbles[i : i + 4] for i in range(0, 32, 4))
        return ip_address(groups)
    if not all(label.isdigit() and label.isascii() and len(label) <= 3 for label in labels):
        return None
    if any(len(label) > 1 and label[0] == "0" for label in labels):
        return None  # "01" is not how an address is written in a PTR name
    octets = [int(label) for label in reversed(labels)]
    if any(o > 255 for o in octets):
        return None
    return ".".join(map(str, octets))
