"""The reverse-zone index (dns/reverse.py): a change costs a re-index of the service that
changed, never a scan of every endpoint, and the index always answers what such a scan would."""

from __future__ import annotations

import random

from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.dns.records import RCODE_NAMES, Name, Question, reverse_name, split_name
from service_discovery.dns.resolver import resolve
from service_discovery.dns.reverse import span
from service_discovery.dns.zone import V4_ZONE_LABELS, V6_ZONE_LABELS, Zone, ZoneView
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, EndpointChange, Service, Snapshot
from service_discovery.registry import Registry

CONFIG = Config(bind_address="127.0.0.1")
PTR, SOA = 12, 6


def service(name: str, *ips: str, version: int = 1) -> Service:
    return Service(name, name, {}, {}, tuple(Endpoint(ip) for ip in ips), version)


class Counted:
    """A registry read through the catalog as DNS reads it, counting the catalog reads the
    reverse index makes: full listings, and single services."""

    def __init__(self, services: dict[str, Service], version: int) -> None:
        self.registry = Registry(CONFIG)
        self.registry.replace_all(Snapshot(version, services))
        catalog = Catalog(CONFIG, None, self.registry, None, Metrics())
        self.listings = 0
        self.found: list[str] = []
        list_all, find = catalog.services, catalog.find

        def counted_list() -> list[Service]:
            self.listings += 1
            return list_all()

        def counted_find(name: str) -> Service | None:
            self.found.append(name)
            return find(name)

        catalog.services, catalog.find = counted_list, counted_find
        self.view = ZoneView(catalog)
        catalog.subscribe(lambda key, _reason: self.view.changed(key))

    def rcode(self, name: str, qtype: int = PTR) -> str:
        answer = resolve(Question(split_name(name), qtype), self.view, Zone(CONFIG))
        return RCODE_NAMES[answer.rcode]


def test_a_change_reindexes_its_service_only() -> None:
    """2,000 services with one address each, in 2,000 reverse zones.
    1. the first reverse lookup builds the index: one listing of every service;
    2. a registration in a new /24, then its deregistration, then a service's deletion: each
       next reverse lookup answers right and reads only the service that changed;
    3. a reload (everything may have changed): the next lookup lists everything again."""
    services = {f"s{i}": service(f"s{i}", f"10.{i // 250}.{i % 250}.1") for i in range(2000)}
    dns = Counted(services, 2000)
    assert dns.rcode("1.0.0.10.in-addr.arpa") == "NOERROR"
    assert dns.listings == 1 and dns.found == []

    new = Endpoint("10.200.0.9")
    dns.registry.apply_endpoint(EndpointChange("s7", 2001, 1, "10.200.0.9", new))
    assert dns.rcode("0.200.10.in-addr.arpa", SOA) == "NOERROR"
    assert dns.rcode("9.0.200.10.in-addr.arpa") == "NOERROR"
    dns.registry.apply_endpoint(EndpointChange("s7", 2002, 2001, "10.200.0.9", None))
    assert dns.rcode("0.200.10.in-addr.arpa", SOA) == "REFUSED"
    dns.registry.apply(2003, "s5", None)
    assert dns.rcode("1.5.0.10.in-addr.arpa") == "REFUSED"
    assert dns.rcode("1.6.0.10.in-addr.arpa") == "NOERROR"
    assert dns.listings == 1 and dns.found == ["s7", "s7", "s5"]

    dns.registry.replace_all(Snapshot(2003, services))
    assert dns.rcode("1.5.0.10.in-addr.arpa") == "NOERROR"
    assert dns.listings == 2


def _scan(registry: Registry) -> set[Name]:
    """What the index must say, the slow way: every name some live address's reverse name ends
    in."""
    names: set[Name] = set()
    for svc in registry.services():
        for e in svc.endpoints:
            full = reverse_name(e.ip)
            names |= {full[-n:] for n in range(3, len(full) + 1)}
    return names


def test_the_index_answers_what_a_scan_would() -> None:
    """400 random changes (registrations, deregistrations, re-registrations elsewhere, whole
    services created and deleted; shared addresses; IPv4 and IPv6); after each, every reverse
    zone and every IPv6 name on the way to an address, of the addresses seen so far and of
    neighbours never registered, is covered exactly when a scan finds a live address under it."""
    rng = random.Random(11)
    pool = [f"10.{rng.randrange(3)}.{rng.randrange(3)}.{rng.randrange(1, 4)}" for _ in range(30)]
    pool += [f"fd00::{rng.randrange(3):x}:{rng.randrange(1, 5):x}" for _ in range(20)]
    pool += ["fd00:0:0:1::1", "::ffff:10.0.0.1", "fd00::1:0:0:0"]
    dns = Counted({}, 0)
    registry, version = dns.registry, 0
    names = [f"s{i}" for i in range(6)]
    probes: set[Name] = set()
    for ip in [*pool, "10.3.3.3", "fd00::9:9", "fd01::1"]:
        full = reverse_name(ip)
        size = V6_ZONE_LABELS if ":" in ip else V4_ZONE_LABELS
        probes |= {full[-n:] for n in range(size, len(full))}
    probes |= {("00", "0", "10", "in-addr", "arpa"), ("x",) * 17 + ("ip6", "arpa")}
    for _ in range(400):
        version += 1
        name = rng.choice(names)
        held = registry.get(name)
        roll = rng.random()
        if held is None or roll < 0.05:
            ips = rng.sample(pool, rng.randrange(4))
            registry.apply(version, name, service(name, *ips, version=version))
        elif roll < 0.1:
            registry.apply(version, name, None)
        elif roll < 0.55 or not held.endpoints:
            ip = rng.choice(pool)
            change = EndpointChange(name, version, held.version, ip, Endpoint(ip))
            assert registry.apply_endpoint(change)
        else:
            ip = rng.choice(held.endpoints).ip
            assert registry.apply_endpoint(EndpointChange(name, version, held.version, ip, None))
        live = _scan(registry)
        for probe in probes:
            want = span(probe) is not None and probe in live
            assert dns.view.reverse.covers(probe) == want, (probe, registry.services())
    assert dns.listings == 1


def test_ptr_of_an_ipv4_mapped_address() -> None:
    """The copy keys addresses as PostgreSQL writes them (::ffff:10.0.0.1): the PTR name of an
    IPv4-mapped endpoint finds it."""
    dns = Counted({"mapped": service("mapped", "::ffff:10.0.0.1")}, 1)
    assert dns.rcode(".".join(reverse_name("::ffff:10.0.0.1"))) == "NOERROR"
