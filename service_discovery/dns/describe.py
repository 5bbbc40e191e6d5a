"""What DNS answers about one service, for people: the questions its names raise, asked of the
resolver itself, with the records as zone-file lines, the way `dig` prints them.

The questions: `<service>.<zone>` A and AAAA, and TXT when it has attributes,
`_<port>._<proto>.<service>.<zone>` SRV for each named port, `<address>.<service>.<zone>` for the
first MAX_ENDPOINT_NAMES endpoints, and `<tag>.<service>.<zone>` A and AAAA for tags that live
endpoints carry (but not tags shaped like an endpoint's label: such a name is the endpoint's). The
answers are `resolve`'s, so what this shows is what the wire serves: there is no second copy of
the rules here (nor in the dashboard, which shows these). What this module decides is only
which questions to ask, and how much of a long answer to show.
"""

from __future__ import annotations

from dataclasses import dataclass

from service_discovery.dns.records import (
    AAAA,
    RCODE_NAMES,
    SRV,
    TXT,
    TYPE_NAMES,
    A,
    Name,
    Question,
    address_label,
    name_text,
)
from service_discovery.dns.resolver import resolve
from service_discovery.dns.zone import Zone, ZoneView, label_address
from service_discovery.model import Service

MAX_LINES = 100  # records listed per question; `count` says how many the answer holds
MAX_TAGS = 16  # tag names asked about, in sorted order; the others are counted
MAX_ENDPOINT_NAMES = 4  # endpoints' own names shown, as examples of the form
# A tag question costs the resolver a look at every tag of every endpoint of the service: a
# service with many tagged endpoints gets fewer tag questions, so that describing it stays
# within some tens of milliseconds of the event loop.
TAG_BUDGET = 400_000  # tags looked at, over all tag questions


@dataclass(frozen=True, slots=True)
class RecordSet:
    """One question and what the resolver answers to it."""

    name: str  # presentation form, with the trailing dot
    type: str  # "A", "AAAA", "SRV"
    status: str  # the response code: "NOERROR", "NXDOMAIN", ...
    answer: tuple[str, ...]  # zone-file lines, at most MAX_LINES
    additional: tuple[str, ...]  # the additional section (an SRV target's addresses)
    count: int  # records in the answer section, listed or not


@dataclass(frozen=True, slots=True)
class ServiceRecords:
    sets: tuple[RecordSet, ...]
    tags_left_out: int  # tags carried by live endpoints that were not asked about


def describe(service: Service, view: ZoneView, zone: Zone) -> ServiceRecords:
    """The record sets DNS serves for `service`'s names, from `resolve` itself.

    Address questions are asked for the families the service's endpoints have (AAAA only if
    one is IPv6); one with an empty answer is left out when the other family has records for
    the same name, and when neither has, the A question stays, to show why (NODATA, NXDOMAIN).
    """
    endpoints = service.endpoints
    v6 = any(":" in e.ip for e in endpoints)
    types = (A, AAAA) if v6 and any(":" not in e.ip for e in endpoints) else (AAAA if v6 else A,)
    owner: Name = (service.key, *zone.origin)
    sets = _addresses(owner, types, view, zone)
    if service.attributes:
        sets.append(_ask(owner, TXT, view, zone))
    for port in sorted(service.named_ports.values(), key=lambda p: p.name):
        sets.append(_ask((f"_{port.name}", f"_{port.protocol}", *owner), SRV, view, zone))
    for e in endpoints[:MAX_ENDPOINT_NAMES]:
        sets.append(_ask((address_label(e.ip), *owner), AAAA if ":" in e.ip else A, view, zone))
    looked_at = sum(len(e.tags) for e in endpoints)  # by one tag question, per type
    carried: set[str] = set().union(*(e.tags for e in endpoints)) if looked_at else set()
    tags = sorted({t.lower() for t in carried if _label(t)})
    room = min(MAX_TAGS, TAG_BUDGET // max(1, looked_at * len(types)))
    for tag in tags[:room]:
        sets.extend(_addresses((tag, *owner), types, view, zone))
    return ServiceRecords(tuple(sets), max(0, len(tags) - room))


def _label(tag: str) -> bool:
    """Whether a tag can be one label of a name in the zone (RFC 1035: 1-63 octets)."""
    return tag.isascii() and 0 < len(tag) <= 63 and label_address(tag.lower()) is None


def _addresses(name: Name, types: tuple[int, ...], view: ZoneView, zone: Zone) -> list[RecordSet]:
    asked = [_ask(name, qtype, view, zone) for qtype in types]
    return [s for s in asked if s.count] or asked[:1]


def _ask(name: Name, qtype: int, view: ZoneView, zone: Zone) -> RecordSet:
    answer = resolve(Question(name, qtype), view, zone)
    return RecordSet(
        name=name_text(name),
        type=TYPE_NAMES[qtype],
        status=RCODE_NAMES.get(answer.rcode, str(answer.rcode)),
        answer=tuple(r.to_zone() for r in answer.answer[:MAX_LINES]),
        additional=tuple(r.to_zone() for r in answer.additional[:MAX_LINES]),
        count=len(answer.answer),
    )
