"""The DNS answer path in-process, without sockets: `DnsServer.respond` on cached A queries,
for a registry of 10 and of SERVICES services (10 endpoints each) and 10 or NAMES distinct
names asked, so that a difference between bench/scale.py's cached-answer cases can be told
apart from the socket path: best of 3 rounds of QUERIES queries, µs per query.

Run: .venv/bin/python bench/dns_respond.py   (env SERVICES=100000 NAMES=5000 QUERIES=200000)
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import dns.message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.dns import DnsServer
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, NamedPort, Service, Snapshot
from service_discovery.registry import Registry

SERVICES = int(os.environ.get("SERVICES", "100000"))
NAMES = int(os.environ.get("NAMES", "5000"))
QUERIES = int(os.environ.get("QUERIES", "200000"))
CONFIG = Config(bind_address="127.0.0.1", dns_port=0)


def server(services: int) -> DnsServer:
    """A DNS server over a registry of `services` services of 10 endpoints each."""
    registry = Registry(CONFIG)
    loaded = {}
    for i in range(1, services + 1):
        ips = [(i * 10 + j) for j in range(10)]
        endpoints = tuple(Endpoint(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}") for n in ips)
        svc = Service(str(i), f"svc-{i}", {}, {"http": NamedPort("http", "tcp", 80)}, endpoints, i)
        loaded[svc.key] = svc
    registry.replace_all(Snapshot(services, loaded))
    return DnsServer(CONFIG, Catalog(CONFIG, None, registry, None, Metrics()), Metrics())


def per_query(dns_server: DnsServer, names: list[str]) -> float:
    """µs per cached A query over `names` in random order, best of 3 rounds."""
    queries = [dns.message.make_query(f"{n}.svc.cluster.local", "A").to_wire() for n in names]
    for q in queries:  # a miss, then the first hit that keeps the whole response
        dns_server.respond(q, False)
        dns_server.respond(q, False)
    best = float("inf")
    for _ in range(3):
        sequence = [random.choice(queries) for _ in range(QUERIES)]
        started = time.perf_counter()
        for q in sequence:
            dns_server.respond(q, False)
        best = min(best, (time.perf_counter() - started) / QUERIES * 1e6)
    return best


def main() -> None:
    for services in (10, SERVICES):
        dns_server = server(services)
        for count in (10, NAMES):
            if count > services:
                continue
            names = [f"svc-{i}" for i in random.sample(range(1, services + 1), count)]
            took = per_query(dns_server, names)
            print(f"{services:>7} services, {count:>5} names asked: {took:.2f} µs per query")


if __name__ == "__main__":
    main()
