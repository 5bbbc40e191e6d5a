"""Table tests of the pure resolver: registry content in, zone-file lines out (CoreDNS style)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from service_discovery.catalog import Catalog
from service_discovery.config import Config, ConfigError
from service_discovery.dns.records import (
    CLASS_IN,
    RCODE_NAMES,
    Answer,
    Question,
    reverse_name,
    split_name,
)
from service_discovery.dns.resolver import resolve
from service_discovery.dns.zone import Zone, ZoneView
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, NamedPort, Service, Snapshot
from service_discovery.registry import Registry

TYPES = {"A": 1, "NS": 2, "SOA": 6, "PTR": 12, "TXT": 16, "AAAA": 28, "SRV": 33, "ANY": 255}
TYPES |= {"AXFR": 252, "IXFR": 251, "MX": 15}
CONFIG = Config(bind_address="127.0.0.1")
ZONE = Zone(CONFIG)
# RFC 1912 2.2's timers: refresh 1 h, retry 10 min, expire 2 weeks; minimum = the negative TTL.
SOA_LINE = "{} 5 IN SOA ns.svc.cluster.local. hostmaster.svc.cluster.local. {} 3600 600 1209600 5"


def service(
    name: str,
    *endpoints: str | tuple[str, tuple[str, ...]],
    ports: tuple[NamedPort, ...] = (),
    version: int = 1,
    attributes: dict[str, str] | None = None,
) -> Service:
    eps = tuple(Endpoint(e) if isinstance(e, str) else Endpoint(e[0], e[1]) for e in endpoints)
    return Service(
        id=name,
        name=name,
        attributes=attributes or {},
        named_ports={p.name: p for p in ports},
        endpoints=eps,
        version=version,
    )


HTTP = NamedPort("http", "tcp", 8000)
LONG = "v" * 300
DNS_UDP = NamedPort("dns", "udp", 53, priority=10, weight=20)

REGISTRY = (
    service("webapp", "127.0.0.1", ports=(HTTP,)),
    service("dual", "10.0.0.1", "10.0.0.2", "fd00::1", ports=(HTTP, DNS_UDP)),
    service("v6only", "fd00::2"),
    service("empty", ports=(HTTP,)),
    service("Tagged", ("10.1.0.1", ("canary", "Blue")), ("10.1.0.2", ("blue",)), "fd00::3"),
    service("shared-a", "10.9.9.9"),
    service("shared-b", "10.9.9.9"),
    # attributes, served as TXT: a name quoted as RFC 1464 says, a value over 255 bytes
    service("attrs", "10.3.0.1", attributes={"attr-1": "value-1", "a=b`c": "x y", "long": LONG}),
    # a headless-style service: one tag has an endpoint label's shape, another has not
    service(
        "hl",
        ("10.2.0.1", ("10-2-0-3", "10-2-0-8", "web")),
        "10.2.0.3",
        "fd00::4",
        "::ffff:10.2.0.5",
        ports=(HTTP,),
    ),
)


def view_of(services: tuple[Service, ...], version: int = 42, config: Config = CONFIG) -> ZoneView:
    """A real Registry loaded the way sync loads it, read through the catalog as DNS reads it."""
    registry = Registry(config)
    registry.replace_all(Snapshot(version, {s.key: s for s in services}))
    return ZoneView(reads(registry, config))


def reads(registry: Registry, config: Config = CONFIG) -> Catalog:
    """The catalog's reads of `registry` (reads need neither a store nor leases)."""
    return Catalog(config, None, registry, None, Metrics())


def lines(answer: Answer) -> dict[str, Any]:
    return {
        "rcode": RCODE_NAMES[answer.rcode],
        "aa": answer.authoritative,
        "answer": [r.to_zone() for r in answer.answer],
        "ns": [r.to_zone() for r in answer.authority],
        "extra": [r.to_zone() for r in answer.additional],
    }


@dataclass
class Case:
    qname: str
    qtype: str
    rcode: str = "NOERROR"
    answer: list[str] = field(default_factory=list)
    ns: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    aa: bool = True


SOA42 = SOA_LINE.format("svc.cluster.local.", 42)
V6_ZONE = "0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."  # the /64 of fd00::1
REV4_SOA = SOA_LINE.format("0.0.127.in-addr.arpa.", 42)
REV6_SOA = SOA_LINE.format(V6_ZONE, 42)
# One row per question, CoreDNS-style. Rows look alike on purpose (the forward and the reverse
# zone ask the same kinds of question, which `duplicates` reports as a pair): each row is read
# on its own, and a loop that generated them would hide the answers it checks.
CASES = [
    # The design's README answers, exactly.
    Case("webapp.svc.cluster.local.", "A", answer=["webapp.svc.cluster.local. 5 IN A 127.0.0.1"]),
    Case(
        "_http._tcp.webapp.svc.cluster.local.",
        "SRV",
        answer=["_http._tcp.webapp.svc.cluster.local. 5 IN SRV 1 1 8000 webapp.svc.cluster.local."],
        extra=["webapp.svc.cluster.local. 5 IN A 127.0.0.1"],
    ),
    # Case-insensitive matching; owner names come back lowercase (the wire echoes the question).
    Case("WebApp.SVC.cluster.LOCAL.", "A", answer=["webapp.svc.cluster.local. 5 IN A 127.0.0.1"]),
    Case(
        "tagged.svc.cluster.local.",
        "A",
        answer=[
            "tagged.svc.cluster.local. 5 IN A 10.1.0.1",
            "tagged.svc.cluster.local. 5 IN A 10.1.0.2",
        ],
    ),
    Case(
        "dual.svc.cluster.local.",
        "A",
        answer=[
            "dual.svc.cluster.local. 5 IN A 10.0.0.1",
            "dual.svc.cluster.local. 5 IN A 10.0.0.2",
        ],
    ),
    Case("dual.svc.cluster.local.", "AAAA", answer=["dual.svc.cluster.local. 5 IN AAAA fd00::1"]),
    Case(
        "v6only.svc.cluster.local.", "AAAA", answer=["v6only.svc.cluster.local. 5 IN AAAA fd00::2"]
    ),
    # SRV: priority and weight from the named port; every address in the additional section.
    Case(
        "_dns._udp.dual.svc.cluster.local.",
        "SRV",
        answer=["_dns._udp.dual.svc.cluster.local. 5 IN SRV 10 20 53 dual.svc.cluster.local."],
        extra=[
            "dual.svc.cluster.local. 5 IN A 10.0.0.1",
            "dual.svc.cluster.local. 5 IN A 10.0.0.2",
            "dual.svc.cluster.local. 5 IN AAAA fd00::1",
        ],
    ),
    Case(
        "_http._tcp.empty.svc.cluster.local.",
        "SRV",
        answer=["_http._tcp.empty.svc.cluster.local. 5 IN SRV 1 1 8000 empty.svc.cluster.local."],
    ),
    # Tags: only endpoints carrying the tag, matched case-insensitively.
    Case(
        "canary.tagged.svc.cluster.local.",
        "A",
        answer=["canary.tagged.svc.cluster.local. 5 IN A 10.1.0.1"],
    ),
    Case(
        "BLUE.tagged.svc.cluster.local.",
        "A",
        answer=[
            "blue.tagged.svc.cluster.local. 5 IN A 10.1.0.1",
            "blue.tagged.svc.cluster.local. 5 IN A 10.1.0.2",
        ],
    ),
    Case("canary.tagged.svc.cluster.local.", "AAAA", ns=[SOA42]),  # tag exists, no IPv6: NODATA
    Case("red.tagged.svc.cluster.local.", "A", "NXDOMAIN", ns=[SOA42]),  # nobody carries it
    # TXT: one record per attribute, `name=value` (RFC 1464: "`" and "=" in the name quoted with
    # "`"), sorted by name; past 255 bytes, more strings in the same record (joined by readers).
    Case(
        "attrs.svc.cluster.local.",
        "TXT",
        answer=[
            'attrs.svc.cluster.local. 5 IN TXT "a`=b``c=x y"',
            'attrs.svc.cluster.local. 5 IN TXT "attr-1=value-1"',
            f'attrs.svc.cluster.local. 5 IN TXT "long={"v" * 250}" "{"v" * 50}"',
        ],
    ),
    Case("webapp.svc.cluster.local.", "TXT", ns=[SOA42]),  # no attributes: NODATA
    Case("canary.tagged.svc.cluster.local.", "TXT", ns=[SOA42]),  # only <service> has TXT
    # An endpoint's own name: dashed IPv4, IPv6 with dashes for colons (compressed or not).
    Case(
        "10-2-0-1.hl.svc.cluster.local.",
        "A",
        answer=["10-2-0-1.hl.svc.cluster.local. 5 IN A 10.2.0.1"],
    ),
    Case("10-2-0-1.hl.svc.cluster.local.", "AAAA", ns=[SOA42]),
    Case(
        "fd00--4.hl.svc.cluster.local.",
        "AAAA",
        answer=["fd00--4.hl.svc.cluster.local. 5 IN AAAA fd00::4"],
    ),
    Case(
        "FD00-0-0-0-0-0-0-4.hl.svc.cluster.local.",
        "AAAA",
        answer=["fd00-0-0-0-0-0-0-4.hl.svc.cluster.local. 5 IN AAAA fd00::4"],
    ),
    Case(
        "--ffff-a02-5.hl.svc.cluster.local.",
        "AAAA",
        answer=["--ffff-a02-5.hl.svc.cluster.local. 5 IN AAAA ::ffff:10.2.0.5"],
    ),
    Case("10-2-0-9.hl.svc.cluster.local.", "A", "NXDOMAIN", ns=[SOA42]),  # not an endpoint
    Case("10-2-0-8.hl.svc.cluster.local.", "A", "NXDOMAIN", ns=[SOA42]),  # a tag, no endpoint
    Case("10-2-0-1.webapp.svc.cluster.local.", "A", "NXDOMAIN", ns=[SOA42]),  # nor of this one
    # A tag shaped like an endpoint's label is that endpoint's name, never the tag's:
    Case(
        "10-2-0-3.hl.svc.cluster.local.",
        "A",
        answer=["10-2-0-3.hl.svc.cluster.local. 5 IN A 10.2.0.3"],
    ),
    Case("web.hl.svc.cluster.local.", "A", answer=["web.hl.svc.cluster.local. 5 IN A 10.2.0.1"]),
    Case("010-2-0-1.hl.svc.cluster.local.", "A", "NXDOMAIN", ns=[SOA42]),  # not canonical: a tag
    # NODATA: the name exists, the type does not.
    Case("webapp.svc.cluster.local.", "AAAA", ns=[SOA42]),
    Case("v6only.svc.cluster.local.", "A", ns=[SOA42]),
    Case("empty.svc.cluster.local.", "A", ns=[SOA42]),
    Case("webapp.svc.cluster.local.", "TXT", ns=[SOA42]),
    Case("_http._tcp.webapp.svc.cluster.local.", "A", ns=[SOA42]),
    Case("_tcp.webapp.svc.cluster.local.", "A", ns=[SOA42]),  # empty non-terminal
    Case("_udp.dual.svc.cluster.local.", "SRV", ns=[SOA42]),
    # NXDOMAIN: nothing by that name, with the SOA for negative caching.
    Case("nothing.svc.cluster.local.", "A", "NXDOMAIN", ns=[SOA42]),
    Case("_udp.webapp.svc.cluster.local.", "A", "NXDOMAIN", ns=[SOA42]),
    Case("_http._udp.webapp.svc.cluster.local.", "SRV", "NXDOMAIN", ns=[SOA42]),
    Case("_grpc._tcp.webapp.svc.cluster.local.", "SRV", "NXDOMAIN", ns=[SOA42]),
    Case("_http._tcp.nothing.svc.cluster.local.", "SRV", "NXDOMAIN", ns=[SOA42]),
    Case("a.b.c.webapp.svc.cluster.local.", "A", "NXDOMAIN", ns=[SOA42]),
    Case("x._http._tcp.webapp.svc.cluster.local.", "A", "NXDOMAIN", ns=[SOA42]),
    # The apex and the NS host.
    Case("svc.cluster.local.", "SOA", answer=[SOA42]),
    Case(
        "svc.cluster.local.",
        "NS",
        answer=["svc.cluster.local. 5 IN NS ns.svc.cluster.local."],
        extra=["ns.svc.cluster.local. 5 IN A 127.0.0.1"],
    ),
    Case("svc.cluster.local.", "A", ns=[SOA42]),
    Case("ns.svc.cluster.local.", "A", answer=["ns.svc.cluster.local. 5 IN A 127.0.0.1"]),
    Case("ns.svc.cluster.local.", "AAAA", ns=[SOA42]),
    # ANY gets one RRset (RFC 8482).
    Case(
        "dual.svc.cluster.local.",
        "ANY",
        answer=[
            "dual.svc.cluster.local. 5 IN A 10.0.0.1",
            "dual.svc.cluster.local. 5 IN A 10.0.0.2",
        ],
    ),
    Case(
        "v6only.svc.cluster.local.", "ANY", answer=["v6only.svc.cluster.local. 5 IN AAAA fd00::2"]
    ),
    Case("svc.cluster.local.", "ANY", answer=[SOA42]),
    Case("empty.svc.cluster.local.", "ANY", ns=[SOA42]),
    # Outside the zone, or a transfer: REFUSED, not authoritative, never recursion.
    Case("example.com.", "A", "REFUSED", aa=False),
    Case("cluster.local.", "SOA", "REFUSED", aa=False),
    Case("xsvc.cluster.local.", "A", "REFUSED", aa=False),
    Case(".", "NS", "REFUSED", aa=False),
    Case("svc.cluster.local.", "AXFR", "REFUSED", aa=False),
    Case("svc.cluster.local.", "IXFR", "REFUSED", aa=False),
    # Reverse: PTR for live endpoints, NXDOMAIN next to them, REFUSED elsewhere.
    Case(
        "1.0.0.127.in-addr.arpa.",
        "PTR",
        answer=["1.0.0.127.in-addr.arpa. 5 IN PTR webapp.svc.cluster.local."],
    ),
    Case(
        "9.9.9.10.in-addr.arpa.",
        "PTR",
        answer=[
            "9.9.9.10.in-addr.arpa. 5 IN PTR shared-a.svc.cluster.local.",
            "9.9.9.10.in-addr.arpa. 5 IN PTR shared-b.svc.cluster.local.",
        ],
    ),
    Case(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        "PTR",
        answer=[
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 5 IN PTR "
            "dual.svc.cluster.local."
        ],
    ),
    Case("1.0.0.127.in-addr.arpa.", "A", ns=[REV4_SOA]),
    Case("2.0.0.127.in-addr.arpa.", "PTR", "NXDOMAIN", ns=[REV4_SOA]),
    Case("01.0.0.127.in-addr.arpa.", "PTR", "NXDOMAIN", ns=[REV4_SOA]),
    Case("0.0.127.in-addr.arpa.", "SOA", answer=[REV4_SOA]),
    Case(
        "0.0.127.in-addr.arpa.",
        "NS",
        answer=["0.0.127.in-addr.arpa. 5 IN NS ns.svc.cluster.local."],
    ),
    Case("1.1.1.1.in-addr.arpa.", "PTR", "REFUSED", aa=False),
    Case("0.127.in-addr.arpa.", "SOA", "REFUSED", aa=False),
    Case("in-addr.arpa.", "SOA", "REFUSED", aa=False),
    # An IPv6 empty non-terminal on the way to fd00::1 (its /64 is the zone).
    Case("0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", "PTR", ns=[REV6_SOA]),
    Case("f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", "PTR", "NXDOMAIN", ns=[REV6_SOA]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.qname}/{c.qtype}")
def test_table(case: Case) -> None:
    got = lines(
        resolve(Question(split_name(case.qname), TYPES[case.qtype]), view_of(REGISTRY), ZONE)
    )
    want = {
        "rcode": case.rcode,
        "aa": case.aa,
        "answer": case.answer,
        "ns": case.ns,
        "extra": case.extra,
    }
    assert got == want


def ask(
    qname: str, qtype: str, services: tuple[Service, ...], config: Config, version: int = 42
) -> dict[str, Any]:
    return lines(
        resolve(
            Question(split_name(qname), TYPES[qtype]),
            view_of(services, version, config),
            Zone(config),
        )
    )


ENDPOINT_TARGETS = Config(bind_address="127.0.0.1", dns_srv_targets="endpoint")
HL_SRV = "_http._tcp.hl.svc.cluster.local. 5 IN SRV 1 1 8000 {}.hl.svc.cluster.local."


def test_srv_targets_each_endpoint_with_its_address_as_glue() -> None:
    """DNS_SRV_TARGETS=endpoint: one SRV record per live endpoint (IPv4 first), each targeting
    the endpoint's own name, which the additional section and its own A/AAAA query answer."""
    got = ask("_http._tcp.hl.svc.cluster.local", "SRV", REGISTRY, ENDPOINT_TARGETS)
    labels = ["10-2-0-1", "10-2-0-3", "fd00--4", "--ffff-a02-5"]
    assert got["answer"] == [HL_SRV.format(label) for label in labels]
    assert got["extra"] == [
        "10-2-0-1.hl.svc.cluster.local. 5 IN A 10.2.0.1",
        "10-2-0-3.hl.svc.cluster.local. 5 IN A 10.2.0.3",
        "fd00--4.hl.svc.cluster.local. 5 IN AAAA fd00::4",
        "--ffff-a02-5.hl.svc.cluster.local. 5 IN AAAA ::ffff:10.2.0.5",
    ]
    for line in got["extra"]:  # every target answers as the glue says
        owner, _, _, rtype, _ = line.split()
        assert ask(owner, rtype, REGISTRY, ENDPOINT_TARGETS)["answer"] == [line]
    # priority and weight are the named port's, now per instance
    got = ask("_dns._udp.dual.svc.cluster.local", "SRV", REGISTRY, ENDPOINT_TARGETS)
    assert got["answer"][0].split()[4:7] == ["10", "20", "53"]
    # a port with no live endpoint: NODATA (there is no target to name)
    got = ask("_http._tcp.empty.svc.cluster.local", "SRV", REGISTRY, ENDPOINT_TARGETS)
    assert (got["rcode"], got["answer"], got["ns"]) == ("NOERROR", [], [SOA42])
    # the default stays the design's single target
    got = ask("_http._tcp.hl.svc.cluster.local", "SRV", REGISTRY, CONFIG)
    assert got["answer"] == ["_http._tcp.hl.svc.cluster.local. 5 IN SRV 1 1 8000 "
                             "hl.svc.cluster.local."]  # fmt: skip


def test_soa_timers_come_from_config() -> None:
    config = Config(bind_address="127.0.0.1", dns_soa_refresh=7200, dns_soa_retry=900,
                    dns_soa_expire=2419200, dns_negative_ttl=30)  # fmt: skip
    [soa] = ask("svc.cluster.local", "SOA", REGISTRY, config)["answer"]
    assert soa.split()[-5:] == ["42", "7200", "900", "2419200", "30"]
    # and the reverse zones' SOA, and a negative answer's, are the same record
    assert ask("2.0.0.127.in-addr.arpa", "PTR", REGISTRY, config)["ns"][0].split()[-4:] == [
        "7200",
        "900",
        "2419200",
        "30",
    ]
    # RFC 1912's advice is checked at start: expire a week at least and above refresh + retry,
    # retry below refresh
    for env, why in [
        ({"DNS_SOA_EXPIRE": "3600"}, "DNS_SOA_EXPIRE='3600' is invalid: expected an integer from "
                                     "604800"),
        ({"DNS_SOA_RETRY": "3600"}, "DNS_SOA_RETRY must be below DNS_SOA_REFRESH"),
        ({"DNS_SOA_REFRESH": "1209600"}, "DNS_SOA_EXPIRE must exceed"),
        ({"DNS_SRV_TARGETS": "node"}, "DNS_SRV_TARGETS='node' is invalid: expected one of "
                                      "service, endpoint"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as raised:
            Config.from_env(env)
        assert str(raised.value).startswith(why), (env, str(raised.value))
    assert Config.from_env({"DNS_SRV_TARGETS": "Endpoint"}).dns_srv_targets == "endpoint"


def test_not_loaded_is_servfail_never_nxdomain() -> None:
    registry = Registry(CONFIG)
    got = resolve(
        Question(split_name("nothing.svc.cluster.local"), 1), ZoneView(reads(registry)), ZONE
    )
    assert RCODE_NAMES[got.rcode] == "SERVFAIL" and not got.authority


def test_other_classes_are_refused() -> None:
    q = Question(split_name("webapp.svc.cluster.local"), 1, qclass=3)  # CH
    assert RCODE_NAMES[resolve(q, view_of(REGISTRY), ZONE).rcode] == "REFUSED"
    q = Question(split_name("webapp.svc.cluster.local"), 1, qclass=CLASS_IN)
    assert RCODE_NAMES[resolve(q, view_of(REGISTRY), ZONE).rcode] == "NOERROR"


def test_soa_serial_follows_the_registry_version_modulo_2_32() -> None:
    got = ask("svc.cluster.local", "SOA", REGISTRY, CONFIG, version=7)
    assert got["answer"] == [SOA_LINE.format("svc.cluster.local.", 7)]
    got = ask("svc.cluster.local", "SOA", REGISTRY, CONFIG, version=(1 << 32) + 9)
    assert got["answer"] == [SOA_LINE.format("svc.cluster.local.", 9)]


def test_ttls_zone_and_ns_come_from_config() -> None:
    config = Config(
        bind_address="127.0.0.1",
        dns_domain="Disco.Example",
        dns_ttl=0,
        dns_negative_ttl=30,
        node_ip="fd00::53",
    )
    assert ask("webapp.disco.example", "A", REGISTRY, config)["answer"] == [
        "webapp.disco.example. 0 IN A 127.0.0.1"
    ]
    soa = "disco.example. 30 IN SOA ns.disco.example. hostmaster.disco.example. 42 3600 600 " \
          "1209600 30"  # fmt: skip
    assert ask("nothing.disco.example", "A", REGISTRY, config)["ns"] == [soa]
    ns = ask("disco.example", "NS", REGISTRY, config)
    assert ns["answer"] == ["disco.example. 0 IN NS ns.disco.example."]
    assert ns["extra"] == ["ns.disco.example. 0 IN AAAA fd00::53"]  # NODE_IP is IPv6
    assert ask("webapp.svc.cluster.local", "A", REGISTRY, config)["rcode"] == "REFUSED"


def test_ns_outside_the_zone_has_no_glue() -> None:
    config = Config(bind_address="127.0.0.1", dns_ns_name="ns1.example.net")
    ns = ask("svc.cluster.local", "NS", REGISTRY, config)
    assert ns["answer"] == ["svc.cluster.local. 5 IN NS ns1.example.net."]
    assert ns["extra"] == []
    # and `ns.<zone>` is then an ordinary (absent) service name
    assert ask("ns.svc.cluster.local", "A", REGISTRY, config)["rcode"] == "NXDOMAIN"


def test_own_address_defaults_to_loopback_for_wildcard_bind() -> None:
    config = Config(bind_address="0.0.0.0")
    assert ask("ns.svc.cluster.local", "A", REGISTRY, config)["answer"] == [
        "ns.svc.cluster.local. 5 IN A 127.0.0.1"
    ]


def test_expired_endpoints_are_not_answered() -> None:
    gone = Service(
        id="x",
        name="leased",
        attributes={},
        named_ports={},
        endpoints=(Endpoint("10.5.0.1", expires_at=1.0), Endpoint("10.5.0.2")),
        version=3,
    )
    got = ask("leased.svc.cluster.local", "A", (gone,), CONFIG)
    assert got["answer"] == ["leased.svc.cluster.local. 5 IN A 10.5.0.2"]
    assert ask("1.0.5.10.in-addr.arpa", "PTR", (gone,), CONFIG)["rcode"] == "NXDOMAIN"


def test_answers_say_what_they_depend_on() -> None:
    view = view_of(REGISTRY)

    def depends(qname: str, qtype: str) -> str | None:
        return resolve(Question(split_name(qname), TYPES[qtype]), view, ZONE).depends_on

    assert depends("WebApp.svc.cluster.local", "A") == "webapp"
    assert depends("webapp.svc.cluster.local", "AAAA") == "webapp"  # NODATA of a service
    assert depends("_http._tcp.webapp.svc.cluster.local", "SRV") == "webapp"
    assert depends("canary.tagged.svc.cluster.local", "A") == "tagged"
    assert depends("attrs.svc.cluster.local", "TXT") == "attrs"
    assert depends("10-2-0-1.hl.svc.cluster.local", "A") == "hl"
    # negative answers, the apex and reverse names change with any write
    assert depends("nothing.svc.cluster.local", "A") is None
    assert depends("svc.cluster.local", "SOA") is None
    assert depends("1.0.0.127.in-addr.arpa", "PTR") is None


def test_odd_labels_never_match_and_never_raise() -> None:
    view = view_of(REGISTRY)
    for name in [
        ("webapp.svc", "cluster", "local"),  # a dot inside a label is not two labels
        ("web\x00app", "svc", "cluster", "local"),
        ("caf\xe9", "svc", "cluster", "local"),
        ("\xff" * 63, "1", "0", "0", "127", "in-addr", "arpa"),
        ("256", "0", "0", "127", "in-addr", "arpa"),
        ("g",) * 32 + ("ip6", "arpa"),
    ]:
        got = resolve(Question(name, 1), view, ZONE)
        assert RCODE_NAMES[got.rcode] in ("NXDOMAIN", "REFUSED")


def test_reverse_name() -> None:
    assert reverse_name("10.1.2.3") == ("3", "2", "1", "10", "in-addr", "arpa")
    assert reverse_name("::1")[:2] == ("1", "0") and len(reverse_name("::1")) == 34


# ---- cost: a miss costs its answer, not the service's size ----------------------------------
class CountingTags(tuple[str, ...]):
    """An endpoint's tags that count, in `seen`, how often anything walks them."""

    seen = [0]

    def __iter__(self) -> Any:
        CountingTags.seen[0] += 1
        return super().__iter__()


def test_names_under_a_big_service_cost_no_walk_over_its_endpoints() -> None:
    """A service of 2,000 endpoints x 32 tags. 1. the first name under it builds its index,
    walking every endpoint's tags once; 2. 500 names that do not exist, tag names, the
    service's own name and `_tcp` walk no tags and build nothing; 3. the answers are the ones
    the table promises; 4. the same for the Consul-style names (SD_DNS_CONSUL_NAMES); 5. a
    change to the service rebuilds its index once, on the next lookup.
    """
    endpoints = tuple(
        Endpoint(
            f"10.7.{i // 250}.{i % 250 + 1}", CountingTags(f"t{(i + j) % 40}" for j in range(32))
        )
        for i in range(2000)
    )
    big = Service("big", "big", {}, {"http": HTTP}, endpoints, 1)
    registry = Registry(CONFIG)
    registry.replace_all(Snapshot(5, {"big": big}))
    view = ZoneView(reads(registry))
    registry.subscribe(lambda key, _reason: view.changed(key))

    zone = Zone(Config(bind_address="127.0.0.1", dns_consul_names=True))

    def rcode(qname: str, qtype: int = 1) -> str:
        return RCODE_NAMES[resolve(Question(split_name(qname), qtype), view, zone).rcode]

    CountingTags.seen[0] = 0
    assert rcode("first.big.svc.cluster.local") == "NXDOMAIN"
    assert CountingTags.seen[0] == 2000  # the index: every endpoint's tags, once

    CountingTags.seen[0] = 0
    for i in range(500):
        assert rcode(f"nothing-{i}.big.svc.cluster.local") == "NXDOMAIN"
        assert rcode(f"x.nothing-{i}.big.svc.cluster.local") == "NXDOMAIN"
    assert rcode("_tcp.big.svc.cluster.local", 33) == "NOERROR"
    assert rcode("_udp.big.svc.cluster.local", 33) == "NXDOMAIN"
    for suffix in ("big.svc.cluster.local", "big.service.svc.cluster.local"):
        tagged = resolve(Question(split_name(f"t3.{suffix}"), 1), view, zone)
        assert len(tagged.answer) == 2000 * 32 // 40  # every endpoint whose 32 tags include t3
        for i in range(200):
            assert rcode(f"consul-{i}.{suffix}") == "NXDOMAIN"
    assert rcode("big.svc.cluster.local", 28) == "NOERROR"  # NODATA: no IPv6, no list read
    assert CountingTags.seen[0] == 0
    assert view.builds == 1

    registry.apply(6, "big", replace(big, endpoints=endpoints[:10], version=6))
    assert rcode("t39.big.svc.cluster.local") == "NOERROR"
    assert rcode("t0.big.svc.cluster.local") == "NOERROR"
    assert CountingTags.seen[0] == 10 and view.builds == 2
