"""Memory: where a registry copy's bytes go, per endpoint.

In-process (default): builds a `Snapshot` of SERVICES services x PER_SERVICE endpoints (2 named
ports each, as bench/scale.py loads them; TAGGED: every other endpoint carries tags, LEASED:
every endpoint has a lease; fresh string objects, as asyncpg decodes them), loads it into a
`Registry` through `replace_all` (what the daemon's sync does), then grows what clients make it
hold, one phase at a time:

1. the copy itself (registry, leases' expiry queue, indexes by ip and instance ID);
2. every service's view (`Registry.services()`, what a listing builds);
3. DNS: WARM names asked for their A records through the DNS server's own query handler
   (`ServiceIndex` per service asked, encoded answers in the answer cache), as scale.py warms;
4. the reverse (PTR) indexes, built by one reverse question.

For each phase: tracemalloc's net bytes per endpoint and its top allocation sites, and, for the
copy, a census by type of everything reachable from the `Registry` (sys.getsizeof, each object
counted once).

MODE=rss: the same phases without tracemalloc, reporting this process's RSS growth instead.

MODE=daemon: bulk-loads two scratch databases (10 services, and SERVICES) as scale.py does,
starts the daemon on each and prints VmRSS once /ready, then again after WARM names were asked
over DNS; memory per endpoint = the difference over the difference in endpoints.

Run: .venv/bin/python bench/memory.py   (env SERVICES=10000 PER_SERVICE=10 WARM=5000 TAGGED=0
LEASED=0 MODE=inprocess|rss|daemon TOP=12). Loopback only; every process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
import tracemalloc
import types
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SERVICES = int(os.environ.get("SERVICES", "10000"))
PER_SERVICE = int(os.environ.get("PER_SERVICE", "10"))
WARM = int(os.environ.get("WARM", "5000"))
TAGGED = os.environ.get("TAGGED", "0") == "1"
LEASED = os.environ.get("LEASED", "0") == "1"
TOP = int(os.environ.get("TOP", "12"))
ZONE = "svc.cluster.local"


def fresh(text: str) -> str:
    """A new str object with this text (asyncpg decodes each row's text afresh)."""
    return text.encode().decode()


def build_snapshot(services: int, per_service: int) -> Any:
    from service_discovery.model import Endpoint, NamedPort, Service, Snapshot

    now = time.time()
    out = {}
    for i in range(1, services + 1):
        ports = {
            fresh("http"): NamedPort(fresh("http"), fresh("tcp"), 8080, 1, 1),
            fresh("grpc"): NamedPort(fresh("grpc"), fresh("tcp"), 9090, 1, 1),
        }
        eps = []
        for j in range(1, per_service + 1):
            ip = f"10.{j + 20 * (i >> 16)}.{i >> 8 & 255}.{i & 255}"  # unique to 655,360
            tags = [fresh("canary"), fresh("v2")] if TAGGED and j % 2 else []
            ttl, expires = (30, now + 30 + (i * 7 + j) % 30) if LEASED else (None, None)
            eps.append(Endpoint(ip, tuple(tags), ttl, expires, None))
        svc = Service(
            id=str(uuid.uuid4()),
            name=f"svc-{i}",
            attributes={},
            named_ports=ports,
            endpoints=tuple(eps),
            version=i,
            created_at=now - 1000.5,
            updated_at=now - 10.25,
        )
        out[svc.key] = svc
    return Snapshot(version=services, services=out)


# ---- the census: sys.getsizeof over what an object reaches, each object once ------------------
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
           types.MethodType, types.CodeType, types.FrameType)  # fmt: skip


def census(root: Any, seen: set[int]) -> tuple[int, Counter[str], Counter[str]]:
    """(bytes, bytes by type, count by type) of the objects `root` reaches and `seen` lacks."""
    by_type: Counter[str] = Counter()
    count: Counter[str] = Counter()
    total = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        if isinstance(obj, asyncio.AbstractEventLoop):
            continue
        size = sys.getsizeof(obj)
        name = type(obj).__name__
        by_type[name] += size
        count[name] += 1
        total += size
        stack.extend(gc.get_referents(obj))
    return total, by_type, count


def show_census(title: str, root: Any, endpoints: int, *skip: Any) -> None:
    """The census of `root`, leaving out what `skip` reaches (settings, subscribers)."""
    seen: set[int] = set()
    for other in skip:
        census(other, seen)
    total, by_type, count = census(root, seen)
    print(f"  {title}: {total / endpoints:7.1f} B/endpoint ({total / 2**20:.1f} MiB)")
    for name, size in by_type.most_common(TOP):
        print(f"      {name:<22} {size / endpoints:7.1f} B/endpoint  {count[name]:>9} objects")


def show_diff(title: str, before: tracemalloc.Snapshot, endpoints: int) -> tracemalloc.Snapshot:
    gc.collect()
    after = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    stats = after.compare_to(before, "lineno")
    net = sum(s.size_diff for s in stats)
    print(f"{title}: {net / endpoints:7.1f} B/endpoint net ({net / 2**20:.1f} MiB)")
    for s in sorted(stats, key=lambda s: -s.size_diff)[:TOP]:
        if s.size_diff <= 0:
            break
        frame = s.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"      {where:<28} {s.size_diff / endpoints:7.1f} B/endpoint  {s.count_diff:>+9}")
    return after


def query(name: str, qtype: int = 1) -> bytes:
    wire = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + wire + qtype.to_bytes(2) + b"\0\1"


def in_process() -> None:
    from service_discovery.catalog import Catalog
    from service_discovery.config import Config
    from service_discovery.dns.server import DnsServer
    from service_discovery.metrics import Metrics
    from service_discovery.registry import Registry

    endpoints = SERVICES * PER_SERVICE
    print(f"in-process: {SERVICES} services x {PER_SERVICE} endpoints, 2 named ports each, "
          f"tagged={TAGGED} leased={LEASED}, Python {sys.version.split()[0]}")  # fmt: skip
    config = Config(bind_address="127.0.0.1", dns_port=0)
    metrics = Metrics()
    registry = Registry(config)
    catalog = Catalog(config, None, registry, None, metrics)  # type: ignore[arg-type]
    dns = DnsServer(config, catalog, metrics)
    gc.collect()
    tracemalloc.start(1)
    base = tracemalloc.take_snapshot()
    snapshot = build_snapshot(SERVICES, PER_SERVICE)
    show_diff("the snapshot as read (transient)", base, endpoints)
    registry.replace_all(snapshot)
    del snapshot
    show_diff("1. the copy (after replace_all, snapshot dropped)", base, endpoints)
    print("   census of the copy, by type (sys.getsizeof):")
    show_census("registry", registry, endpoints, config, metrics, registry._changes)
    gc.collect()
    held = tracemalloc.take_snapshot()  # after the census, whose own objects are gone again

    views = registry.services()
    held = show_diff("2. every service's view (a listing)", held, endpoints)
    del views
    handler = dns._handler
    for i in range(min(WARM, SERVICES)):
        handler.respond(query(f"svc-{(i * 7919) % SERVICES + 1}.{ZONE}"), False)
    held = show_diff(f"3. DNS: {min(WARM, SERVICES)} A answers cached", held, endpoints)
    handler.respond(query("1.0.1.10.in-addr.arpa", 12), False)  # svc-1, a PTR answer
    show_diff("4. the reverse (PTR) indexes", held, endpoints)
    total = tracemalloc.get_traced_memory()[0]
    print(f"all of it: {total / endpoints:.1f} B/endpoint ({total / 2**20:.1f} MiB traced)")
    tracemalloc.stop()


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss() -> None:
    """The same phases without tracemalloc: this process's RSS growth, per endpoint (the load
    here makes no database rows, as a load streamed in small chunks would not hold them)."""
    from service_discovery.catalog import Catalog
    from service_discovery.config import Config
    from service_discovery.dns.server import DnsServer
    from service_discovery.metrics import Metrics
    from service_discovery.registry import Registry

    endpoints = SERVICES * PER_SERVICE
    config = Config(bind_address="127.0.0.1", dns_port=0)
    metrics = Metrics()
    registry = Registry(config)
    dns = DnsServer(config, Catalog(config, None, registry, None, metrics), metrics)  # type: ignore[arg-type]
    gc.collect()
    base = status_mib("VmRSS")

    def report(what: str) -> None:
        gc.collect()
        grown = (status_mib("VmRSS") - base) * 2**20 / endpoints
        print(f"  {what:<44} RSS {grown:6.0f} B/endpoint  (peak {status_mib('VmHWM'):.0f} MiB)")

    print(f"RSS, in-process: {SERVICES} services x {PER_SERVICE} endpoints "
          f"(tagged={TAGGED} leased={LEASED}), above {base:.0f} MiB:")  # fmt: skip
    snapshot = build_snapshot(SERVICES, PER_SERVICE)
    registry.replace_all(snapshot)
    del snapshot
    report("1. the copy")
    for i in range(min(WARM, SERVICES)):
        dns._handler.respond(query(f"svc-{(i * 7919) % SERVICES + 1}.{ZONE}"), False)
    report(f"3. + {min(WARM, SERVICES)} DNS A answers")
    dns._handler.respond(query("1.0.1.10.in-addr.arpa", 12), False)
    report("4. + the reverse (PTR) indexes")


def daemon() -> None:
    from common import Daemon, bulk_load, scratch_database

    async def warm(port: int, count: int, services: int) -> None:
        import dns.asyncquery
        import dns.message

        for i in range(count):
            q = dns.message.make_query(f"svc-{(i * 7919) % services + 1}.{ZONE}", "A")
            await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=2)

    rss: dict[int, tuple[float, float, float]] = {}
    for services in (10, SERVICES):
        with scratch_database() as url:
            bulk_load(url, services, PER_SERVICE)
            d = Daemon(url)
            try:
                ready = d.wait_ready(timeout=600)
                at_ready = d.rss_mib()
                asyncio.run(warm(d.dns_port, min(WARM, services), services))
                rss[services] = (at_ready, d.rss_mib(), d.peak_rss_mib())
                print(f"{services:>7} services: ready in {ready:5.2f}s  RSS at /ready "
                      f"{at_ready:7.1f} MiB, after {min(WARM, services)} DNS names "
                      f"{rss[services][1]:7.1f} MiB, peak {rss[services][2]:7.1f} MiB")  # fmt: skip
            finally:
                d.stop()
    extra = (SERVICES - 10) * PER_SERVICE
    for i, what in ((0, "at /ready"), (1, "after DNS warm-up")):
        per = (rss[SERVICES][i] - rss[10][i]) * 2**20 / extra
        print(f"memory per endpoint {what}: {per:.0f} bytes (RSS difference / endpoints)")


if __name__ == "__main__":
    mode = os.environ.get("MODE", "inprocess")
    if mode == "daemon":
        daemon()
    elif mode == "rss":
        rss()
    else:
        in_process()
