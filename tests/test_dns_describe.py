"""What the dashboard shows of DNS: the questions a service's names raise and the resolver's
answers, as zone-file lines (CoreDNS-style tables)."""

from __future__ import annotations

import time

from test_resolver import DNS_UDP, HTTP, ZONE, service, view_of

from service_discovery.dns.describe import (
    MAX_ENDPOINT_NAMES,
    MAX_LINES,
    MAX_TAGS,
    TAG_BUDGET,
    describe,
)
from service_discovery.model import Endpoint, Service


def table(svc: Service, *others: Service) -> list[tuple[str, str, list[str], list[str]]]:
    records = describe(svc, view_of((svc, *others)), ZONE)
    return [(f"{s.name} {s.type}", s.status, list(s.answer), list(s.additional))
            for s in records.sets]  # fmt: skip


def test_a_service_with_both_families_attributes_ports_and_tags() -> None:
    svc = service(
        "Dual",
        ("10.0.0.1", ("canary", "Blue", "10-0-0-7")),
        ("fd00::1", ("blue",)),
        ports=(HTTP, DNS_UDP),
        attributes={"team": "core", "tier": "1"},
    )
    assert table(svc) == [
        ("dual.svc.cluster.local. A", "NOERROR", ["dual.svc.cluster.local. 5 IN A 10.0.0.1"], []),
        ("dual.svc.cluster.local. AAAA", "NOERROR",
         ["dual.svc.cluster.local. 5 IN AAAA fd00::1"], []),
        ("dual.svc.cluster.local. TXT", "NOERROR",
         ['dual.svc.cluster.local. 5 IN TXT "team=core"',
          'dual.svc.cluster.local. 5 IN TXT "tier=1"'], []),
        ("_dns._udp.dual.svc.cluster.local. SRV", "NOERROR",
         ["_dns._udp.dual.svc.cluster.local. 5 IN SRV 10 20 53 dual.svc.cluster.local."],
         ["dual.svc.cluster.local. 5 IN A 10.0.0.1",
          "dual.svc.cluster.local. 5 IN AAAA fd00::1"]),
        ("_http._tcp.dual.svc.cluster.local. SRV", "NOERROR",
         ["_http._tcp.dual.svc.cluster.local. 5 IN SRV 1 1 8000 dual.svc.cluster.local."],
         ["dual.svc.cluster.local. 5 IN A 10.0.0.1",
          "dual.svc.cluster.local. 5 IN AAAA fd00::1"]),
        # each endpoint's own name
        ("10-0-0-1.dual.svc.cluster.local. A", "NOERROR",
         ["10-0-0-1.dual.svc.cluster.local. 5 IN A 10.0.0.1"], []),
        ("fd00--1.dual.svc.cluster.local. AAAA", "NOERROR",
         ["fd00--1.dual.svc.cluster.local. 5 IN AAAA fd00::1"], []),
        # tags are case-insensitive names: "Blue" and "blue" are one name with both addresses;
        # "10-0-0-7" is not asked about: a name of that shape is an endpoint's, never a tag's
        ("blue.dual.svc.cluster.local. A", "NOERROR",
         ["blue.dual.svc.cluster.local. 5 IN A 10.0.0.1"], []),
        ("blue.dual.svc.cluster.local. AAAA", "NOERROR",
         ["blue.dual.svc.cluster.local. 5 IN AAAA fd00::1"], []),
        ("canary.dual.svc.cluster.local. A", "NOERROR",
         ["canary.dual.svc.cluster.local. 5 IN A 10.0.0.1"], []),
    ]  # fmt: skip


def test_endpoint_names_shown_are_the_first_few() -> None:
    svc = service("many", *(f"10.5.0.{i}" for i in range(1, 11)))
    names = [row[0] for row in table(svc)]
    assert names == ["many.svc.cluster.local. A"] + [
        f"10-5-0-{i}.many.svc.cluster.local. A" for i in range(1, MAX_ENDPOINT_NAMES + 1)
    ]


def test_no_endpoint_shows_nodata_and_srv_still_answers() -> None:
    assert table(service("empty", ports=(HTTP,))) == [
        ("empty.svc.cluster.local. A", "NOERROR", [], []),
        ("_http._tcp.empty.svc.cluster.local. SRV", "NOERROR",
         ["_http._tcp.empty.svc.cluster.local. 5 IN SRV 1 1 8000 empty.svc.cluster.local."], []),
    ]  # fmt: skip


def test_names_are_escaped_as_dig_prints_them_and_odd_tags_are_skipped() -> None:
    svc = service("web", ("10.0.0.1", ("<img src=x>", "a.b", "x" * 64, "é")))
    names = [row[0] for row in table(svc)]
    assert names == [
        "web.svc.cluster.local. A",
        "10-0-0-1.web.svc.cluster.local. A",
        "<img\\032src=x>.web.svc.cluster.local. A",
        "a\\.b.web.svc.cluster.local. A",  # one label holding a dot
    ]


def test_long_answers_are_cut_and_tags_bounded_by_cost() -> None:
    tags = tuple(f"t{k:02d}" for k in range(40))
    many = tuple(
        (f"10.1.{i // 250}.{i % 250 + 1}", tags[i % 40 : i % 40 + 20]) for i in range(2000)
    )
    svc = service("big", *many)
    records = describe(svc, view_of((svc,)), ZONE)
    first = records.sets[0]
    assert (first.type, first.count, len(first.answer)) == ("A", 2000, MAX_LINES)
    looked_at = sum(len(e.tags) for e in svc.endpoints)  # by each tag question (A only)
    room = min(MAX_TAGS, TAG_BUDGET // looked_at)
    assert 0 < room < MAX_TAGS
    assert len(records.sets) == 1 + MAX_ENDPOINT_NAMES + room
    assert records.tags_left_out == 40 - room


def test_a_big_service_is_described_in_milliseconds() -> None:
    """10,000 endpoints with 32 tags each: the description stays cheap (a guard, not a bench)."""
    eps = tuple(
        Endpoint(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", tuple(f"tag-{(i + k) % 500}"
                 for k in range(32)))
        for i in range(10_000)
    )  # fmt: skip
    svc = Service("big", "big", {}, {}, eps, 1)
    view = view_of((svc,))
    started = time.perf_counter()
    records = describe(svc, view, ZONE)
    took = time.perf_counter() - started
    print(f"describe: 10,000 endpoints x 32 tags in {took * 1000:.1f} ms")
    assert records.sets[0].count == 10_000 and took < 2.0
