"""The registry copy on its own (pure: no sockets, no database)."""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc

import pytest

from service_discovery.config import Config
from service_discovery.mass_expiry import mass_expiry_guards
from service_discovery.model import (
    Endpoint,
    EndpointChange,
    LeaseRenewal,
    NamedPort,
    Service,
    Snapshot,
)
from service_discovery.registry import Registry


def _service(name: str, version: int) -> Service:
    return Service(f"id-{name}", name, {}, {}, (), version)


def test_deletions_of_ever_new_names_do_not_grow_the_copy_for_ever() -> None:
    """1. churn: 12,000 services created and deleted under new names; 2. the copy remembers
    the index of recent deletions (blocking queries on them) but forgets the oldest."""
    registry = Registry(Config())
    registry.replace_all(Snapshot(0, {}))
    version = 0
    for i in range(12_000):
        name = f"churn-{i}"
        version += 1
        registry.apply(version, name, _service(name, version))
        version += 1
        registry.apply(version, name, None)
    assert registry.service_count() == 0
    assert registry.index("churn-11999") == version
    assert registry.index("churn-0") == 0  # forgotten: the oldest go first
    assert sum(registry.index(f"churn-{i}") > 0 for i in range(12_000)) == 10_000


def _leased(name: str, version: int, *leases: tuple[str, float]) -> Service:
    endpoints = tuple(Endpoint(ip, ttl_seconds=60, expires_at=at) for ip, at in leases)
    return Service(f"id-{name}", name, {}, {}, endpoints, version)


async def test_expiry_queue_stays_bounded_and_exact_through_churn() -> None:
    """1. 5,000 week-long leases registered and removed one by one: the expiry queue stays
    within twice the live leases (plus a constant); 2. a lease renewed far ahead and then
    shortened (a full read) lapses at its shorter expiry, not at either queued one."""
    registry = Registry(Config())
    registry.replace_all(Snapshot(0, {"churn": _leased("churn", 1)}))
    week = time.time() + 7 * 24 * 3600
    version = 1
    for i in range(5_000):
        ip = f"10.{i // 250}.{i % 250}.1"
        endpoint = Endpoint(ip, ttl_seconds=60, expires_at=week)
        for change in (endpoint, None):
            version += 1
            change_ = EndpointChange("churn", version, version - 1, ip, change)
            assert registry.apply_endpoint(change_)
        assert registry.lease_queue_size() <= 2 * 1 + 64  # one live lease at most
    now = time.time()
    registry.apply(version + 1, "short", _leased("short", version + 1, ("10.9.0.1", now + 60)))
    registry.renew([LeaseRenewal("short", "10.9.0.1", now + 3600)])
    registry.apply(version + 2, "short", _leased("short", version + 2, ("10.9.0.1", now + 0.2)))
    assert registry.is_live("short", "10.9.0.1")
    await asyncio.sleep(0.5)
    assert not registry.is_live("short", "10.9.0.1")


def _expiring(name: str, expiries: list[float]) -> Service:
    eps = tuple(
        Endpoint(f"10.{len(name)}.{i // 250}.{i % 250 + 1}", (), 60, at)
        for i, at in enumerate(expiries)
    )
    return Service(f"id-{name}", name, {}, {}, eps, 1)


@pytest.mark.parametrize(
    ("counts", "guarded", "everywhere"),
    [
        # (expired, leased) per service, at share 0.5 and minimum 10
        ({"job": (12, 12), "web": (2, 10)}, {"job"}, False),  # one service's lapse stays its own
        ({"job": (12, 12), "web": (6, 10)}, {"job", "web"}, False),
        ({"a": (3, 4), "b": (3, 4), "c": (3, 4)}, set(), True),  # small ones, lapsing together
        ({"a": (3, 4), "big": (0, 100)}, set(), False),
        ({"few": (9, 9)}, set(), False),  # under the minimum
        ({}, set(), False),
    ],
)
def test_mass_expiry_guards_per_service_then_over_the_rest(
    counts: dict[str, tuple[int, int]], guarded: set[str], everywhere: bool
) -> None:
    assert mass_expiry_guards(counts, 0.5, 10) == (guarded, everywhere)


def test_the_copy_keeps_one_services_mass_lapse_and_hides_anothers_few() -> None:
    """At t=100: all 12 leases of `job` lapsed, 2 of `web`'s 10. The copy keeps `job`'s (its own
    guard) and hides `web`'s 2: no global guard, since over `web` alone 2 of 10 is no mass."""
    config = Config(lease_mass_expiry_share=0.5, lease_mass_expiry_min=10)
    registry = Registry(config, clock=lambda: 100.0)
    job = _expiring("job", [99.0] * 12)
    web = _expiring("web", [99.0] * 2 + [160.0] * 8)
    registry.replace_all(Snapshot(5, {"job": job, "web": web}))
    assert not registry.self_preservation and registry.guarded_services() == 1
    kept, hidden = registry.get("job"), registry.get("web")
    assert kept is not None and len(kept.endpoints) == 12
    assert hidden is not None and [e.expires_at for e in hidden.endpoints] == [160.0] * 8
    assert registry.endpoint_count() == 20


def _holding(name: str, version: int, *ips: str) -> Service:
    return Service(f"id-{name}", name, {}, {}, tuple(Endpoint(ip) for ip in ips), version)


def _scan_ip(registry: Registry, ip: str) -> tuple[str, ...]:
    """The services of `ip` the slow way: every view that lists it."""
    return tuple(s.key for s in registry.services() if any(e.ip == ip for e in s.endpoints))


def test_the_address_index_answers_what_a_scan_would() -> None:
    """1. 50 random changes before any PTR question (the index is not built); 2. 300 more
    (registrations, deregistrations, services created and deleted, reloads; addresses shared
    between services), after each of which the services of every address (what PTR answers)
    are those a scan of the views finds: built on the first question, then kept current, and
    rebuilt by a reload."""
    rng = random.Random(7)
    pool = [f"10.0.{rng.randrange(2)}.{rng.randrange(1, 6)}" for _ in range(12)] + ["fd00::1"]
    names = [f"S{i}" if i % 2 else f"s{i}" for i in range(5)]  # keys are lowercase names
    registry = Registry(Config())
    registry.replace_all(Snapshot(0, {}))
    version = 0
    for step in range(350):
        version += 1
        name = rng.choice(names)
        held = registry.get(name)
        roll = rng.random()
        if roll < 0.03:
            services = {s.key: s for s in registry.services()}
            registry.replace_all(Snapshot(version, services))
        elif held is None or roll < 0.1:
            registry.apply(version, name, _holding(name, version, *rng.sample(pool, 3)))
        elif roll < 0.15:
            registry.apply(version, name, None)
        elif roll < 0.6 or not held.endpoints:
            ip = rng.choice(pool)
            change = EndpointChange(name.lower(), version, held.version, ip, Endpoint(ip))
            assert registry.apply_endpoint(change)
        else:
            ip = rng.choice(held.endpoints).ip
            change = EndpointChange(name.lower(), version, held.version, ip, None)
            assert registry.apply_endpoint(change)
        if step >= 50:
            for ip in pool:
                assert registry.names_for_ip(ip) == _scan_ip(registry, ip), (ip, step)


def test_equal_values_are_held_once() -> None:
    """Two services read apart, with equal (not identical) named ports, attributes and tags:
    1. the copy holds one object of each; 2. the views say exactly what was read; 3. a later
    endpoint with the same tags shares them too."""

    def read(name: str) -> Service:
        port = NamedPort("".join(["ht", "tp"]), "tcp", 8080)
        tags = tuple(["".join(["can", "ary"]), "v2"])
        endpoints = (Endpoint("10.1.0.1", tags), Endpoint("10.1.0.2"))
        return Service(f"id-{name}", name, {"team": "a"}, {port.name: port}, endpoints, 1)

    a, b = read("a"), read("b")
    assert a.named_ports is not b.named_ports and a.endpoints[0].tags is not b.endpoints[0].tags
    registry = Registry(Config())
    registry.replace_all(Snapshot(1, {"a": a, "b": b}))
    va, vb = registry.get("a"), registry.get("b")
    assert va is not None and vb is not None
    assert va.named_ports is vb.named_ports and va.attributes is vb.attributes
    assert va.endpoints[0].tags is vb.endpoints[0].tags
    assert (va.named_ports, va.attributes, va.endpoints) == (
        a.named_ports,
        {"team": "a"},
        a.endpoints,
    )
    later = Endpoint("10.1.0.3", tuple(["canary", "v2"]))
    assert registry.apply_endpoint(EndpointChange("b", 2, 1, "10.1.0.3", later))
    held = registry.endpoint("b", "10.1.0.3")
    assert held == later and held is not None and held.tags is va.endpoints[0].tags


async def test_a_lease_renewed_often_holds_one_queue_entry_and_lapses_at_its_last_expiry() -> None:
    """1. a leased endpoint renewed 1,000 times: the expiry queue holds one entry; 2. it is
    still live after its first expiry (renewed); 3. it lapses after its last one."""
    now = time.time()
    registry = Registry(Config())
    registry.replace_all(Snapshot(1, {"r": _leased("r", 1, ("10.5.0.1", now + 0.5))}))
    for i in range(1000):
        registry.renew([LeaseRenewal("r", "10.5.0.1", now + 1.0 + i / 1000)])
    assert registry.lease_queue_size() == 1
    await asyncio.sleep(max(0.0, now + 0.8 - time.time()))
    assert registry.is_live("r", "10.5.0.1")
    await asyncio.sleep(max(0.0, now + 2.5 - time.time()))
    assert not registry.is_live("r", "10.5.0.1")
    assert registry.lease_queue_size() == 0


def test_distinct_values_do_not_grow_the_sharing_tables_for_ever() -> None:
    """10,000 services, each with attributes of its own: the tables of shared values stay
    within their bound, and every service still reads its own attributes."""
    registry = Registry(Config())
    registry.replace_all(Snapshot(0, {}))
    for i in range(10_000):
        name = f"own-{i}"
        registry.apply(i + 1, name, Service(f"id-{i}", name, {"owner": str(i)}, {}, (), i + 1))
    assert len(registry._shared._attributes) <= 4096  # the bound is the point: read it
    for i in range(0, 10_000, 97):
        svc = registry.get(f"own-{i}")
        assert svc is not None and svc.attributes == {"owner": str(i)}


def test_the_copy_holds_an_endpoint_in_under_250_bytes() -> None:
    """2,000 services x 10 endpoints, 2 named ports each, every string its own object (as the
    database driver decodes rows): once loaded (the snapshot dropped), the copy holds under 250
    bytes per endpoint, its share of services and ports included (565 before issue 18;
    bench/memory.py shows where they go)."""
    registry = Registry(Config())
    gc.collect()
    tracemalloc.start()
    try:
        services = {}
        for i in range(2000):
            ports = {
                name: NamedPort(name.encode().decode(), b"tcp".decode(), port)
                for name, port in (("http", 8080), ("grpc", 9090))
            }
            endpoints = tuple(Endpoint(f"10.{j}.{i // 256}.{i % 256}") for j in range(10))
            name = f"svc-{i}"
            services[name] = Service(f"{i:036d}", name, {}, ports, endpoints, i + 1, 1.5, 2.5)
        registry.replace_all(Snapshot(2000, services))
        del services
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert registry.endpoint_count() == 20_000
    assert held / 20_000 < 250, f"{held / 20_000:.0f} bytes per endpoint"
