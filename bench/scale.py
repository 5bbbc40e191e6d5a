"""Scale: 10,000 services with 100,000 endpoints (and 2 named ports each) against 10 services.

1. Bulk-load each registry with SQL into its own scratch database (versions bumped as sd_bump
   would: services get 1..N, registry_state the last).
2. Start-up: time from spawn to /ready 200 (loading the copy), then RSS and peak RSS; memory per
   endpoint = (RSS large - RSS small) / (endpoints large - endpoints small).
3. DNS qps on cached answers (A, 10 records each, the same size in both registries): dnsperf,
   pinned to the other core, ROUNDS alternating rounds of DURATION s; the ratio large/small.
   Target: within 10%.
4. Propagation: two replicas on the large registry; WRITES registrations through replica A,
   each followed by polling replica B over DNS (UDP) until the new address is answered;
   p50/p99 from sending the write. Target: p99 < 50 ms.
5. Registrations per second with 50 concurrent clients through replica A (large registry).

Run: .venv/bin/python bench/scale.py   (env SERVICES=10000 PER_SERVICE=10 DURATION=8 ROUNDS=3
WRITES=1000 REGISTRATIONS=5000). Loopback only; every process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Daemon, ensure_apt, register_many, scratch_database

SERVICES = int(os.environ.get("SERVICES", "10000"))
PER_SERVICE = int(os.environ.get("PER_SERVICE", "10"))
SMALL = 10
DURATION = int(os.environ.get("DURATION", "8"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
WRITES = int(os.environ.get("WRITES", "1000"))
REGISTRATIONS = int(os.environ.get("REGISTRATIONS", "5000"))
ZONE = "svc.cluster.local"
SERVER_CORE, CLIENT_CORE = 0, 1


def load(url: str, services: int, per_service: int) -> float:
    """Bulk-load `services` services with 2 named ports and `per_service` endpoints each; the
    seconds it took. Service i (1-based) has version i, as if created by the i-th sd_bump."""
    started = time.perf_counter()
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO services (name, version)
               SELECT 'svc-' || i, i FROM generate_series(1, %s) AS i""",
            (services,),
        )
        cur.execute(
            """INSERT INTO named_ports (service_id, name, protocol, port)
               SELECT s.id, p.name, 'tcp', p.port FROM services s,
                      (VALUES ('http', 8080), ('grpc', 9090)) AS p(name, port)"""
        )
        cur.execute(
            """INSERT INTO endpoints (service_id, ip)
               SELECT s.id, ('10.' || j || '.' || (s.version / 256) || '.'
                             || (s.version %% 256))::inet
               FROM services s, generate_series(1, %s) AS j""",
            (per_service,),
        )
        cur.execute("UPDATE registry_state SET version = %s", (services,))
    return time.perf_counter() - started


def dnsperf(port: int, names: list[str]) -> float:
    """Queries per second of one dnsperf run over `names` (A), already cached by a warm-up."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for name in names:
            f.write(f"{name}.{ZONE} A\n")
        path = f.name
    try:
        cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", path, "-l", str(DURATION),
               "-c", "8", "-q", "200", "-T", "1"]  # fmt: skip
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", str(CLIENT_CORE), *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        lost = re.search(r"Queries lost:\s+(\d+)", out)
        if lost and int(lost.group(1)):
            print(f"  (dnsperf lost {lost.group(1)} queries)")
        return float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    finally:
        os.unlink(path)


async def warm(port: int, names: list[str]) -> None:
    """Ask every name once so the answers are cached."""
    import dns.asyncquery
    import dns.message

    for name in names:
        q = dns.message.make_query(f"{name}.{ZONE}", "A")
        await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=2)


async def propagation(a: Daemon, b: Daemon) -> list[float]:
    """Milliseconds from sending each write to A until B answers it over DNS."""
    import aiohttp
    import dns.asyncquery
    import dns.message

    delays: list[float] = []
    async with aiohttp.ClientSession(base_url=a.base) as http:
        for i in range(WRITES):
            n = random.randint(1, SERVICES)
            ip = f"10.200.{i // 256}.{i % 256}"
            q = dns.message.make_query(f"svc-{n}.{ZONE}", "A")
            started = time.perf_counter()
            async with http.put(f"/service/svc-{n}/register", json={"ip": ip}) as r:
                assert r.status == 200, await r.text()
            for _ in range(100_000):  # bounded: 10 s at most per write
                resp = await dns.asyncquery.udp(q, "127.0.0.1", port=b.dns_port, timeout=2)
                if any(rr.address == ip for rrset in resp.answer for rr in rrset):
                    break
                if time.perf_counter() - started > 10:
                    raise RuntimeError(f"write {i} not visible on B after 10 s")
            delays.append((time.perf_counter() - started) * 1000)
    return delays


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    ensure_apt("dnsperf")
    large_eps = SERVICES * PER_SERVICE
    with scratch_database() as small_url, scratch_database() as large_url:
        t_small = load(small_url, SMALL, PER_SERVICE)
        t_large = load(large_url, SERVICES, PER_SERVICE)
        print(f"bulk load: {SMALL} services in {t_small:.2f}s; {SERVICES} services, "
              f"{large_eps} endpoints, {2 * SERVICES} named ports in {t_large:.1f}s")  # fmt: skip
        daemons: list[Daemon] = []
        try:
            # One after the other: wait_ready counts from just after the spawn.
            small = Daemon(small_url, core=SERVER_CORE)
            daemons.append(small)
            ready_small = small.wait_ready()
            large = Daemon(large_url, core=SERVER_CORE)
            daemons.append(large)
            ready_large = large.wait_ready()
            print(large.settings())
            rss_small, rss_large = small.rss_mib(), large.rss_mib()
            print("start-up, spawn to /ready 200 (pinned to one core):")
            print(f"  {SMALL:>6} services: {ready_small:6.2f}s  RSS {rss_small:7.1f} MiB  "
                  f"peak {small.peak_rss_mib():7.1f} MiB")  # fmt: skip
            print(f"  {SERVICES:>6} services: {ready_large:6.2f}s  RSS {rss_large:7.1f} MiB  "
                  f"peak {large.peak_rss_mib():7.1f} MiB")  # fmt: skip
            per_ep = (rss_large - rss_small) * 1024 * 1024 / (large_eps - SMALL * PER_SERVICE)
            print(f"memory per endpoint (incl. its share of services and ports): "
                  f"{per_ep:.0f} bytes")  # fmt: skip

            names_small = [f"svc-{i}" for i in range(1, SMALL + 1)]
            names_large = [f"svc-{random.randint(1, SERVICES)}" for _ in range(5000)]
            asyncio.run(warm(small.dns_port, names_small))
            asyncio.run(warm(large.dns_port, names_large))
            qs, ql = [], []
            for _ in range(ROUNDS):  # alternate: this machine's speed drifts
                qs.append(dnsperf(small.dns_port, names_small))
                ql.append(dnsperf(large.dns_port, names_large))
            q_small, q_large = statistics.median(qs), statistics.median(ql)
            print(f"DNS A on cached answers ({PER_SERVICE} records), dnsperf -c 8 -q 200 "
                  f"-l {DURATION}, median of {ROUNDS}:")  # fmt: skip
            print(f"  {SMALL:>6} services: {q_small:9.0f} qps   (runs {[round(x) for x in qs]})")
            print(f"  {SERVICES:>6} services: {q_large:9.0f} qps   (runs {[round(x) for x in ql]})")
            print(f"  ratio large/small: {q_large / q_small:.3f}  (target >= 0.90)")
            small.stop()

            # Replica B on the other core, so A and B do not share one.
            b = Daemon(large_url, core=CLIENT_CORE)
            daemons.append(b)
            ready_b = b.wait_ready()
            print(f"replica B ready in {ready_b:.2f}s")
            delays = asyncio.run(propagation(large, b))
            print(f"propagation A write -> B DNS answer, {WRITES} writes: "
                  f"p50 {pct(delays, 50):.1f} ms  p99 {pct(delays, 99):.1f} ms  "
                  f"max {max(delays):.1f} ms  (target p99 < 50 ms)")  # fmt: skip
            targets = [
                (f"svc-{i % SERVICES + 1}", f"10.201.{i // 256 % 256}.{i % 256}")
                for i in range(REGISTRATIONS)
            ]
            rate = asyncio.run(register_many(large.base, targets))
            print(f"registrations, 50 concurrent clients, {REGISTRATIONS} across "
                  f"{SERVICES} services: {rate:.0f}/s")  # fmt: skip
            print(f"replica A peak RSS after all of it: {large.peak_rss_mib():.1f} MiB")
        finally:
            for d in daemons:
                d.stop()


if __name__ == "__main__":
    main()
