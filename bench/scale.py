"""Scale: SERVICES services of PER_SERVICE endpoints (and 2 named ports each) against 10
services, then REPLICAS replicas on the large registry (issue 18's targets, all printed).

1. Bulk-load each registry with SQL (generate_series) into its own scratch database, versions
   as sd_bump would leave them: services 1..N, registry_state N.
2. Start-up: spawn to /ready 200 (pinned to core 0), with /healthz polled all along the load
   (p50/p99/max of the answers; refusals before the listeners are up counted apart).
3. Memory: RSS after loading and after WARM names' A answers are cached; per endpoint = (RSS
   large - RSS small) / (endpoints large - endpoints small), answers held included; peak RSS.
4. DNS: dnsperf on core 1, ROUNDS alternating rounds of DURATION s, on cached answers and with
   every query missing the cache (bench/dns/serve.py's SIGUSR1): qps ratio large/small, p99.
5. Fleet: REPLICAS replicas on the large database, started one after the other (each loads the
   whole registry), unpinned, DB_POOL_MAX_SIZE chosen so every pool and LISTEN connection fits
   in max_connections. Fan-out: WRITES writes through replica 0, each polled on every replica
   over UDP until all answer it; the database backends' CPU per write. Registrations per second
   (50 clients). A restart of the last replica while the others are queried. Churn: replace
   CHURN_FRACTION of the endpoints in CHURN_SECONDS with bulk `replace` calls while every
   replica is queried; no answer may list an endpoint removed more than 1 s before.

Run: .venv/bin/python bench/scale.py   (env, with defaults: SERVICES=10000 PER_SERVICE=10
DURATION=8 ROUNDS=3 WARM=30000 REPLICAS=10 WRITES=1000 REGISTRATIONS=5000 CHURN_FRACTION=0.1
CHURN_SECONDS=30 QUERY_QPS=1000 READY_TIMEOUT=600 IDLE_SECONDS=5). Issue 18's size:
SERVICES=100000 (12-16 minutes, ~9 GiB for ten replicas; a replica is added only while
MemAvailable allows). The daemons take the rest of the environment: a daemon whose snapshot
is read in one statement needs DB_TIMEOUT_SECONDS=60 to load a million endpoints at all.
Loopback only; every process is stopped by its PID, every phase bounded in time.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    Daemon,
    bulk_load,
    ensure_apt,
    metric,
    percentile,
    register_many,
    scratch_database,
)
from scale_dns import ZONE
from scale_fleet import backend_pids, churn, cpu_of, fan_out, restart_one

SERVICES = int(os.environ.get("SERVICES", "10000"))
PER_SERVICE = int(os.environ.get("PER_SERVICE", "10"))
SMALL = 10
DURATION = int(os.environ.get("DURATION", "8"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
WARM = int(os.environ.get("WARM", "30000"))
REPLICAS = int(os.environ.get("REPLICAS", "10"))
WRITES = int(os.environ.get("WRITES", "1000"))
REGISTRATIONS = int(os.environ.get("REGISTRATIONS", "5000"))
CHURN_FRACTION = float(os.environ.get("CHURN_FRACTION", "0.1"))
CHURN_SECONDS = float(os.environ.get("CHURN_SECONDS", "30"))
QUERY_QPS = float(os.environ.get("QUERY_QPS", "1000"))
READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT", "600"))
IDLE_SECONDS = float(os.environ.get("IDLE_SECONDS", "5"))
PROBE_TIMEOUT = 10.0  # seconds a /healthz probe waits (a kubelet's default is 1 s)
SERVER_CORE, CLIENT_CORE = 0, 1
SERVE = Path(__file__).resolve().parent / "dns" / "serve.py"
BEGAN = time.monotonic()


def phase(text: str) -> None:
    print(f"\n== {text}  (t+{time.monotonic() - BEGAN:.0f}s)", flush=True)


def pool_size(url: str) -> tuple[int, str]:
    """DB_POOL_MAX_SIZE for REPLICAS replicas: each has a pool and a LISTEN connection; the
    server's max_connections, less its reserved slots, what others hold now and a few for this
    bench, shared among them (at most the default, 10). The size and the sum, to print."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, count(*) "
            "FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        limit, reserved, used = cur.fetchone()
    conn.close()
    own = 4  # the bench's own connections (loader, backend listing), with a spare
    size = max(1, min(10, (limit - reserved - used - own) // REPLICAS - 1))
    why = (
        f"max_connections {limit} - reserved {reserved} - {used} in use now - {own} for the "
        f"bench >= {REPLICAS} x ({size} pool + 1 LISTEN) = {REPLICAS * (size + 1)}"
    )
    return size, why


class Probe(threading.Thread):
    """GET /healthz in a loop until stopped: the latencies of the answers; refusals (before
    the listeners are up), no answer within PROBE_TIMEOUT s and other errors counted apart."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.stop = base, threading.Event()
        self.latencies: list[float] = []
        self.refused = self.timeouts = self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=PROBE_TIMEOUT) as r:
                    r.read()
                self.latencies.append((time.perf_counter() - started) * 1000)
            except ConnectionRefusedError:
                self.refused += 1
            except TimeoutError:
                self.timeouts += 1
            except OSError as exc:
                reason = getattr(exc, "reason", None)
                if isinstance(reason, ConnectionRefusedError):
                    self.refused += 1
                elif isinstance(reason, TimeoutError):
                    self.timeouts += 1
                else:
                    self.errors += 1
            time.sleep(0.02)


def start(url: str, label: str, daemons: list[Daemon], **kw: object) -> Daemon:
    """Spawn a daemon (added to `daemons`) and wait for /ready 200 with /healthz probed all
    along; print both."""
    daemon = Daemon(url, **kw)  # type: ignore[arg-type]
    daemons.append(daemon)
    normal_priority(daemon)
    probe = Probe(daemon.base)
    probe.start()
    try:
        ready = daemon.wait_ready(READY_TIMEOUT)
    finally:
        probe.stop.set()
        probe.join()
    lat = probe.latencies
    print(
        f"  {label}: ready {ready:6.2f}s  RSS {daemon.rss_mib():7.1f} MiB  peak "
        f"{daemon.peak_rss_mib():7.1f} MiB\n    /healthz while loading: {len(lat)} answers, "
        f"p50 {percentile(lat, 50):.1f} ms  p99 {percentile(lat, 99):.1f} ms  max "
        f"{max(lat, default=float('nan')):.1f} ms, {sum(x > 1000 for x in lat)} over 1 s, "
        f"{probe.timeouts} unanswered in {PROBE_TIMEOUT:.0f} s; {probe.refused} refused "
        f"before listening, {probe.errors} errors",
        flush=True,
    )
    return daemon


def dnsperf(port: int, names: list[str], seconds: int, *extra: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.writelines(f"{name}.{ZONE} A\n" for name in names)
        path = f.name
    try:
        cmd = [
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            path,
            "-c",
            "8",
            "-q",
            "200",
            "-T",
            "1",
            *(["-l", str(seconds)] if seconds else []),
            *extra,
        ]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", str(CLIENT_CORE), *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, check=True, timeout=seconds + 120
        ).stdout
    finally:
        os.unlink(path)


def dns_run(daemon: Daemon, names: list[str]) -> tuple[float, float, float]:
    """Queries per second of a DURATION-s run and queries per CPU-second of the daemon in it
    (what a core of its own would sustain: other load on the machine lowers qps, hardly this);
    p99 ms from a shorter run with -v (printing every answer would slow the throughput run)."""
    cpu = daemon.cpu_seconds()
    out = dnsperf(daemon.dns_port, names, DURATION)
    cpu = daemon.cpu_seconds() - cpu
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if lost and int(lost.group(1)):
        print(f"  (dnsperf lost {lost.group(1)} queries)")
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    verbose = dnsperf(daemon.dns_port, names, max(1, min(3, DURATION)), "-v")
    lat = [float(line.split()[-1]) * 1000 for line in verbose.splitlines() if line.startswith("> ")]
    return qps, done / cpu if cpu > 0 else float("nan"), percentile(lat, 99)


def dns_rounds(small: Daemon, large: Daemon, ns: list[str], nl: list[str], miss: bool) -> None:
    """Alternating rounds (this machine's speed drifts); medians and the ratios."""
    what = "every query a cache miss" if miss else "cached answers"
    rows: dict[str, list[tuple[float, float, float]]] = {"small": [], "large": []}
    for d in (small, large):
        d.proc.send_signal(signal.SIGUSR1 if miss else signal.SIGUSR2)
    for _ in range(ROUNDS):
        rows["small"].append(dns_run(small, ns))
        rows["large"].append(dns_run(large, nl))
    for d in (small, large):
        d.proc.send_signal(signal.SIGUSR2)
    print(
        f"DNS A, {what} ({PER_SERVICE} records), dnsperf -c 8 -q 200 -l {DURATION}, "
        f"median of {ROUNDS}:"
    )
    med: dict[str, tuple[float, float]] = {}
    for key, services in (("small", SMALL), ("large", SERVICES)):
        qps = statistics.median(r[0] for r in rows[key])
        per_cpu = statistics.median(r[1] for r in rows[key])
        p99 = statistics.median(r[2] for r in rows[key])
        med[key] = (qps, per_cpu)
        print(
            f"  {services:>7} services: {qps:9.0f} qps  {per_cpu:8.0f} qps/cpu-s  p99 "
            f"{p99:.2f} ms   (runs {[round(r[0]) for r in rows[key]]})"
        )
    target = 0.8 if miss else 0.9
    print(
        f"  ratio large/small: {med['large'][0] / med['small'][0]:.3f}  (target >= {target}); "
        f"per CPU-second {med['large'][1] / med['small'][1]:.3f}",
        flush=True,
    )


def single(small_url: str, large_url: str, pool: int, daemons: list[Daemon]) -> Daemon:
    """Phases 2-4 on one daemon per registry (each added to `daemons` as it starts, for the
    caller to stop); returns the large one, still running, the small one stopped."""
    large_eps, small_eps = SERVICES * PER_SERVICE, SMALL * PER_SERVICE
    env = {"DB_POOL_MAX_SIZE": str(pool)}
    phase("start-up, spawn to /ready 200 (pinned to one core)")
    small = start(small_url, f"{SMALL:>7} services", daemons, core=SERVER_CORE, script=SERVE, **env)
    large = start(
        large_url, f"{SERVICES:>7} services", daemons, core=SERVER_CORE, script=SERVE, **env
    )
    print(large.settings())
    phase(f"memory, with the A answers of {min(WARM, SERVICES)} services cached")
    rss = {"small": small.rss_mib(), "large": large.rss_mib()}
    names_small = [f"svc-{i}" for i in range(1, SMALL + 1)]
    warmed = [f"svc-{i}" for i in random.sample(range(1, SERVICES + 1), min(WARM, SERVICES))]
    dnsperf(small.dns_port, names_small, 0, "-n", "1")
    dnsperf(large.dns_port, warmed, 0, "-n", "1")
    for key, d, eps in (("small", small, small_eps), ("large", large, large_eps)):
        print(
            f"  {eps:>8} endpoints: RSS loaded {rss[key]:7.1f} MiB, with answers cached "
            f"{d.rss_mib():7.1f} MiB, peak {d.peak_rss_mib():7.1f} MiB; answers built "
            f"{metric(d.base, 'sd_dns_cache_misses_total'):.0f}"
        )
    per_loaded = (rss["large"] - rss["small"]) * 2**20 / (large_eps - small_eps)
    per_ep = (large.rss_mib() - small.rss_mib()) * 2**20 / (large_eps - small_eps)
    print(
        f"memory per endpoint (its share of services and ports included): {per_loaded:.0f} "
        f"bytes loaded, {per_ep:.0f} bytes with answers held (target <= 400)"
    )
    phase("DNS at scale")
    for d, services in ((small, SMALL), (large, SERVICES)):
        cpu = d.cpu_seconds()
        time.sleep(3)
        print(
            f"  idle CPU of the daemon with {services} services: "
            f"{(d.cpu_seconds() - cpu) / 3 * 1000:.0f} ms/s"
        )
    names_large = random.sample(warmed, min(5000, len(warmed)))
    dns_rounds(small, large, names_small, names_large, miss=False)
    dns_rounds(small, large, names_small, names_large, miss=True)
    small.stop()
    return large


def spawn(url: str, daemons: list[Daemon], **env: str) -> Daemon:
    daemon = Daemon(url, **env)
    daemons.append(daemon)
    normal_priority(daemon)
    return daemon


def normal_priority(daemon: Daemon) -> None:
    """A daemon runs at nice 0 even when the bench does not (see `fleet`)."""
    try:
        os.setpriority(os.PRIO_PROCESS, daemon.proc.pid, 0)
    except OSError:  # gone already (wait_ready says so), or not ours to change
        pass


def memory_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fleet(large_url: str, first: Daemon, pool: int, daemons: list[Daemon]) -> None:
    """Phase 5; every replica started is added to `daemons` (the caller stops them)."""
    env = {"DB_POOL_MAX_SIZE": str(pool)}
    replicas = [first]
    # Ten replicas and the database keep both cores busy: the bench's own thread runs at nice
    # -5, so that its timestamps (and timeouts) measure the daemons rather than its waits for a
    # core. Daemons started from here on are set back to 0.
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -5)
        print("  the bench's measuring thread runs at nice -5, the daemons at 0")
    except OSError:
        print("  (the bench could not raise its priority: its latencies include its own waits)")
    if hasattr(os, "sched_setaffinity"):  # replica 0 was pinned for the DNS phase
        os.sched_setaffinity(first.proc.pid, set(range(os.cpu_count() or 1)))
    phase(f"fleet: {REPLICAS} replicas on the large database, started one after the other")
    while len(replicas) < REPLICAS:
        need = first.peak_rss_mib() * 1.5 + 1024
        if memory_available_mib() < need:
            print(
                f"  stopping at {len(replicas)} replicas: {memory_available_mib():.0f} MiB "
                f"available, {need:.0f} MiB wanted for another"
            )
            break
        replicas.append(start(large_url, f"replica {len(replicas)}", daemons, **env))
    print(
        f"  {len(replicas)} replicas; database backends of the bench's database: "
        f"{len(backend_pids(large_url))}",
        flush=True,
    )

    phase(f"fan-out: {WRITES} writes through replica 0, each polled on all {len(replicas)}")
    pids = backend_pids(large_url)
    idle_before = cpu_of(pids)
    time.sleep(IDLE_SECONDS)  # what the backends use with no writes: subtracted below
    before = cpu_of(pids)
    idle = sum(t - idle_before.get(pid, t) for pid, t in before.items()) / IDLE_SECONDS
    began = time.monotonic()
    delays, missed = asyncio.run(fan_out(replicas, SERVICES, WRITES))
    after = cpu_of(pids | backend_pids(large_url))
    took = time.monotonic() - began
    used = sum(t - before.get(pid, 0.0) for pid, t in after.items())
    net = used - idle * took
    print(
        f"write -> visible in DNS on all {len(replicas)}: p50 {percentile(delays, 50):.1f} ms"
        f"  p99 {percentile(delays, 99):.1f} ms  max {max(delays, default=float('nan')):.1f}"
        f" ms  (target p99 < 50 ms); not everywhere within 10 s: {missed}"
    )
    print(
        f"database CPU per write with {len(replicas)} listeners: {net / WRITES * 1e6:.0f} µs "
        f"({used:.2f} s over {len(after)} backends of this database in {took:.0f} s, less "
        f"{idle * 1000:.1f} ms/s measured idle over {IDLE_SECONDS:.0f} s; the server's own "
        f"processes, e.g. the WAL writer, not counted)",
        flush=True,
    )

    if REGISTRATIONS:
        targets = [
            (f"svc-{i % SERVICES + 1}", f"10.250.{i // 256 % 256}.{i % 256}")
            for i in range(REGISTRATIONS)
        ]
        rate = asyncio.run(register_many(first.base, targets))
        print(
            f"registrations, 50 concurrent clients, {REGISTRATIONS} across {SERVICES} "
            f"services through replica 0: {rate:.0f}/s",
            flush=True,
        )

    if len(replicas) > 1:
        last = len(replicas) - 1
        phase(f"restart of replica {last} while the other {last} are queried")
        fresh, took, tallies, lag = asyncio.run(
            restart_one(
                replicas,
                last,
                lambda: spawn(large_url, daemons, **env),
                SERVICES,
                QUERY_QPS,
                READY_TIMEOUT,
            )
        )
        replicas[last] = fresh
        sent, bad = sum(t.sent for t in tallies), sum(t.failed for t in tallies)
        lat = [x for t in tallies for x in t.latencies]
        print(
            f"replica {last} reloaded {SERVICES * PER_SERVICE} endpoints in {took:.2f}s "
            f"(spawn to /ready 200); the other {last} answered {sent - bad} of {sent} "
            f"queries ({bad} failed, {sum(t.timeouts for t in tallies)} of them unanswered "
            f"in 2 s; per replica {[t.sent for t in tallies]}), p99 {percentile(lat, 99):.1f} "
            f"ms max {max(lat, default=0):.1f} ms; the bench's own event loop lagged up to "
            f"{lag * 1000:.0f} ms",
            flush=True,
        )

    phase(
        f"churn: {CHURN_FRACTION:.0%} of the endpoints replaced in {CHURN_SECONDS:.0f} s, "
        f"DNS queried on all {len(replicas)} at {QUERY_QPS:.0f}/s"
    )
    c = asyncio.run(
        churn(replicas, SERVICES, PER_SERVICE, CHURN_FRACTION, CHURN_SECONDS, QUERY_QPS)
    )
    sent, bad = sum(t.sent for t in c.tallies), sum(t.failed for t in c.tallies)
    lat = [x for t in c.tallies for x in t.latencies]
    print(
        f"churn: {c.calls} replace calls of {c.planned} ({c.removed} endpoints removed, "
        f"{c.calls * PER_SERVICE} added) in "
        f"{c.seconds:.1f}s (at worst {c.behind:.1f}s behind schedule); call p50 "
        f"{percentile(c.call_ms, 50):.0f} ms p99 {percentile(c.call_ms, 99):.0f} ms"
    )
    print(
        f"churn DNS: {sent} queries sent, {bad} failed ({sum(t.timeouts for t in c.tallies)} "
        f"unanswered in 2 s; per replica {[t.failed for t in c.tallies]}), p99 "
        f"{percentile(lat, 99):.1f} ms (the bench's own event loop lagged up to "
        f"{c.loop_lag * 1000:.0f} ms); "
        f"{c.listed_after_ack} answers listed an endpoint after its removal was "
        f"acknowledged, the worst {'-' if c.worst is None else f'{c.worst * 1000:.0f} ms'} "
        f"after; beyond 1 s: {c.stale} (target 0; per replica {c.stale_by_replica})"
    )
    print(
        "peak RSS of the replicas (MiB): "
        f"{[round(d.peak_rss_mib()) for d in replicas if d.proc.poll() is None]}"
    )


def main() -> None:
    ensure_apt("dnsperf")
    large_eps = SERVICES * PER_SERVICE
    assert large_eps < 2**23, "the address plan (scale_fleet.py) has room for 2^23 endpoints"
    print(
        f"scale bench: {SERVICES} services x {PER_SERVICE} endpoints, {REPLICAS} replicas; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with scratch_database() as small_url, scratch_database() as large_url:
        phase("bulk load")
        t_small = bulk_load(small_url, SMALL, PER_SERVICE)
        t_large = bulk_load(large_url, SERVICES, PER_SERVICE)
        print(
            f"bulk load: {SMALL} services in {t_small:.2f}s; {SERVICES} services, "
            f"{large_eps} endpoints, {2 * SERVICES} named ports in {t_large:.1f}s"
        )
        pool, why = pool_size(large_url)
        print(f"DB_POOL_MAX_SIZE={pool}: {why}")
        daemons: list[Daemon] = []
        try:
            large = single(small_url, large_url, pool, daemons)
            fleet(large_url, large, pool, daemons)
        finally:
            for d in daemons:
                d.stop()
    print(f"\ndone in {time.monotonic() - BEGAN:.0f}s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
