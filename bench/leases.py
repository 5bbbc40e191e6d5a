"""Lease and watch costs: heartbeats per second, database writes per heartbeat, and the time
from a change to 1,000 blocked HTTP watchers all being answered.

1. Start the daemon (pinned to core 0 when taskset exists) on a scratch database; register
   ENDPOINTS leased endpoints (100 per service, ttl 300 s) over HTTP.
2. Heartbeats, flat out: WORKERS load-generator processes (pinned to core 1) hold CONCURRENCY
   keep-alive connections each and send `PUT /service/{name}/endpoints/{ip}/heartbeat`
   round-robin over all endpoints for DURATION s (at most MAX_HEARTBEATS in all). Print
   heartbeats/s, latency p50/p99, daemon CPU per heartbeat, and the database cost: lease
   transactions (/metrics sd_lease_flushes_total), the bench database's
   pg_stat_database.xact_commit (minus the idle daemon's rate) and pg_stat_user_tables
   n_tup_upd / n_tup_hot_upd deltas for endpoints, and WAL bytes.
3. Heartbeats at fixed rates (RATES, default 1,000/s = 10,000 endpoints every 10 s, and
   2,000/s): achieved rate and latency. Then GET /healthz flat out with the same generator, as
   the HTTP floor to compare the daemon's CPU per heartbeat with; and the reaper's scan time.
4. Watches: WATCHERS blocking queries `GET /service/{name}?index=N&wait=60s` from two processes;
   once /metrics shows all of them blocked, register one endpoint and record, per watcher, the
   time from sending that write to receiving the answer. ROUNDS rounds; print p50/p99/max.
5. Leased clients: CLIENTS leases held by the client library (clients/python) in one process
   (pinned to core 1), for each of CLIENT_MODES: `async` (one asyncio loop, one AsyncClient,
   `async with sd.lease(...)` each) and `threads` (one sync Client, a `Lease` thread each);
   ttl CLIENT_TTL s, so each renews every ttl/3 (0.85-1.0 x, at random). Once all are
   registered, measure over CLIENT_WINDOW s: renewals/s (the daemon's
   sd_lease_heartbeats_total), daemon CPU per renewal (minus the idle daemon's CPU rate,
   measured first), the client process's CPU per renewal, and failed renewals. Then every
   lease is deregistered on exit.
6. Consul-style watches: the same through the Consul-compatible API,
   `GET /v1/health/service/{name}?index=N&wait=60s` (X-Consul-Index), as Prometheus' Consul SD
   and Consul clients block; also the daemon's CPU while all of them wait (one future each).

Run: .venv/bin/python bench/leases.py   (env ENDPOINTS=10000 DURATION=10 CONCURRENCY=1024
     RATES=1000,2000 WATCHERS=1000 ROUNDS=5 CLIENTS=1000 CLIENT_TTL=9 CLIENT_WINDOW=15
     CLIENT_MODES=async,threads); about 4 minutes. Only the clients:
     PHASES=clients ENDPOINTS=0 .venv/bin/python bench/leases.py
Loopback only; the daemon and every worker are stopped by PID; the database is dropped.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Daemon, cpu_seconds, metric, percentile, pin, scratch_database

ENDPOINTS = int(os.environ.get("ENDPOINTS", "10000"))
DURATION = float(os.environ.get("DURATION", "10"))
MAX_HEARTBEATS = int(os.environ.get("MAX_HEARTBEATS", "500000"))
WORKERS = int(os.environ.get("WORKERS", "2"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "1024"))
WATCHERS = int(os.environ.get("WATCHERS", "1000"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
RATES = [float(r) for r in os.environ.get("RATES", "1000,2000").split(",") if r]
ALL_PHASES = "flat,rates,reference,reaper,watch,consul-watch,clients"
PHASES = os.environ.get("PHASES", ALL_PHASES).split(",")
CLIENTS = int(os.environ.get("CLIENTS", "1000"))
CLIENT_TTL = int(os.environ.get("CLIENT_TTL", "9"))
CLIENT_WINDOW = float(os.environ.get("CLIENT_WINDOW", "15"))
CLIENT_MODES = os.environ.get("CLIENT_MODES", "async,threads").split(",")
STATS_SETTLE = 11.0  # PostgreSQL's PGSTAT_IDLE_INTERVAL (10 s) and a margin
PER_SERVICE = 100
TTL = 300
SERVER_CORE, CLIENT_CORE = 0, 1


# ---- load generators (separate processes) -----------------------------------------------------
def _load_worker(
    port: int,
    targets: list[tuple[str, str]],
    deadline: float,
    budget: int,
    reference: bool,
    period: float,
    out: mp.Queue,
) -> None:
    """CONCURRENCY keep-alive connections sending heartbeats round-robin over `targets` (or, for
    the reference run, GET /healthz), one request at a time each, until the deadline or the
    budget; reports (ok, errors, latencies). With `period` > 0 each connection sends one request
    every `period` seconds (an open-loop, fixed rate), else the next as soon as one returns.
    A minimal HTTP/1.1 client on asyncio streams: an aiohttp client costs several times the
    CPU per request and would measure itself."""
    import uvloop

    pin(CLIENT_CORE)
    EMPTY_BODY = "Content-Length: 0\r\n\r\n"
    content_length = re.compile(rb"content-length: *(\d+)", re.I)

    async def run() -> tuple[int, int, list[float]]:
        ok = errors = 0
        latencies: list[float] = []
        position = 0

        async def connection() -> None:
            nonlocal ok, errors, position
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            next_at = time.monotonic() + random.uniform(0, period)  # spread the connections
            try:
                while time.time() < deadline and ok + errors < budget:
                    if period:
                        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                        next_at = max(next_at + period, time.monotonic())
                    service, ip = targets[position % len(targets)]
                    position += 1
                    if reference:
                        line = "GET /healthz"
                    else:
                        line = f"PUT /service/{service}/endpoints/{ip}/heartbeat"
                    started = time.perf_counter()
                    writer.write(f"{line} HTTP/1.1\r\nHost: b\r\n{EMPTY_BODY}".encode())
                    head = await reader.readuntil(b"\r\n\r\n")
                    m = content_length.search(head)
                    await reader.readexactly(int(m.group(1)) if m else 0)
                    if head[9:12] == b"200":
                        ok += 1
                    else:
                        errors += 1
                    if len(latencies) < 200_000:
                        latencies.append(time.perf_counter() - started)
            finally:
                writer.close()

        await asyncio.gather(*(connection() for _ in range(CONCURRENCY)))
        return ok, errors, latencies

    out.put(uvloop.run(run()))


# How each API is watched: the path of a blocking query and the header carrying its index.
WATCH_STYLES = {
    "native": ("/service/{service}", "X-Index"),
    "consul": ("/v1/health/service/{service}", "X-Consul-Index"),
}


def _watch_worker(
    base: str, service: str, count: int, rounds: int, go: mp.Queue, out: mp.Queue,
    style: str = "native",
) -> None:  # fmt: skip
    """Each round: take the index to block on, hold `count` blocking queries at it, and report
    when each one was answered."""
    import aiohttp
    import uvloop

    pin(CLIENT_CORE)

    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as http:
            for _ in range(rounds):
                index = int(go.get())

                async def watch(index: int) -> float:
                    path, header = WATCH_STYLES[style]
                    url = f"{path.format(service=service)}?index={index}&wait=60s"
                    async with http.get(url) as resp:
                        await resp.read()
                        assert int(resp.headers[header]) > index, "returned without a change"
                    return time.time()

                out.put(await asyncio.gather(*(watch(index) for _ in range(count))))

    uvloop.run(run())


def _lease_client_worker(
    base: str, service: str, count: int, mode: str, ttl: int, ctl: mp.Queue, out: mp.Queue
) -> None:
    """Hold `count` leases with the client library until told to stop; report
    ("ready", registered) once all are held, then ("done", renewals, failures, registrations)
    after deregistering them all."""
    import logging
    import threading

    from service_discovery_client import AsyncClient, Client

    pin(CLIENT_CORE)
    logging.basicConfig(level=logging.ERROR)  # a failed renewal is counted, not printed
    ips = [f"10.200.{i // 256}.{i % 256}" for i in range(count)]

    def totals(leases: list) -> tuple[int, int, int]:
        return (
            sum(x.state.renewals for x in leases),
            sum(x.state.failures for x in leases),
            sum(x.state.registrations for x in leases),
        )

    if mode == "threads":
        sd = Client(base, pool_size=count)
        leases = [sd.lease(service, ip, ttl=ttl) for ip in ips]
        starters = [threading.Thread(target=x.start) for x in leases]
        for i in range(0, count, 50):  # 50 registrations in flight at a time
            for t in starters[i : i + 50]:
                t.start()
            for t in starters[i : i + 50]:
                t.join()
        out.put(("ready", sum(x.held for x in leases)))
        ctl.get()
        counts = totals(leases)
        for x in leases:
            x.stop()
        out.put(("done", *counts))
        return

    async def run() -> None:
        # a connection per lease, as the threads have: waiting for a free connection would
        # count in the renewals' timeout
        async with AsyncClient(base, limit=count) as sd:
            leases = [sd.lease(service, ip, ttl=ttl) for ip in ips]
            gate = asyncio.Semaphore(50)

            async def start(lease: object) -> None:
                async with gate:
                    await lease.start()  # type: ignore[attr-defined]

            await asyncio.gather(*(start(x) for x in leases))
            out.put(("ready", sum(x.held for x in leases)))
            await asyncio.to_thread(ctl.get)
            counts = totals(leases)
            await asyncio.gather(*(x.stop() for x in leases))
            out.put(("done", *counts))

    asyncio.run(run())


def bench_clients(daemon: Daemon) -> None:
    """Heartbeat cost of CLIENTS leased clients of the client library (see step 5)."""
    service = "lease-clients"
    _put(daemon.base, "/service", {"name": service})
    cpu0, t0 = daemon.cpu_seconds(), time.time()
    time.sleep(5)
    idle = (daemon.cpu_seconds() - cpu0) / (time.time() - t0)
    print(f"leased clients: {CLIENTS} leases (ttl {CLIENT_TTL} s, renewed every "
          f"{CLIENT_TTL / 3:g} s) held by the client library; idle daemon CPU "
          f"{idle:.1%} of a core")  # fmt: skip
    ctx = mp.get_context("spawn")
    for mode in CLIENT_MODES:
        ctl: mp.Queue = ctx.Queue()
        out: mp.Queue = ctx.Queue()
        args = (daemon.base, service, CLIENTS, mode, CLIENT_TTL, ctl, out)
        proc = ctx.Process(target=_lease_client_worker, args=args)
        started = time.time()
        proc.start()
        try:
            kind, held = out.get(timeout=300)
            assert kind == "ready"
            ramp = time.time() - started
            time.sleep(CLIENT_TTL / 3)  # one renewal round, so every lease is renewing
            beats0 = metric(daemon.base, "sd_lease_heartbeats_total")
            cpu0, worker0 = daemon.cpu_seconds(), cpu_seconds(proc.pid)
            t0 = time.time()
            time.sleep(CLIENT_WINDOW)
            elapsed = time.time() - t0
            cpu = daemon.cpu_seconds() - cpu0
            worker = cpu_seconds(proc.pid) - worker0
            beats = metric(daemon.base, "sd_lease_heartbeats_total") - beats0
            ctl.put("stop")
            kind, renewals, failures, registrations = out.get(timeout=300)
        finally:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
        rate = beats / elapsed
        expected = CLIENTS / (CLIENT_TTL / 3 * 0.925)  # every 0.85-1.0 x ttl/3, at random
        net = max(cpu - idle * elapsed, 0.0)
        label = "one asyncio loop, AsyncClient" if mode == "async" else "a thread each, Client"
        print(f"  {mode:7} ({label}): {held}/{CLIENTS} held after {ramp:.1f} s; "
              f"{rate:,.0f} renewals/s (expected {expected:,.0f})")  # fmt: skip
        print(f"          daemon CPU {cpu / elapsed:.1%} of a core: "
              f"{cpu / max(beats, 1) * 1e6:.0f} us per renewal "
              f"({net / max(beats, 1) * 1e6:.0f} us without the idle rate); "
              f"client process {worker / max(beats, 1) * 1e6:.0f} us per renewal "
              f"({worker / elapsed:.1%} of a core)")  # fmt: skip
        print(f"          whole run: {renewals} renewals, {failures} failed, "
              f"{registrations - held} registered again")  # fmt: skip


# ---- coordinator --------------------------------------------------------------------------------
def _put(base: str, path: str, body: dict | None = None) -> tuple[dict, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="PUT")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null"), dict(r.headers)


async def _register_all(base: str, targets: list[tuple[str, str]]) -> None:
    import aiohttp

    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=16)) as http:
        for service in sorted({s for s, _ in targets}):
            async with http.put("/service", data=json.dumps({"name": service})) as r:
                assert r.status == 201, await r.text()
        sem = asyncio.Semaphore(16)

        async def register(service: str, ip: str) -> None:
            async with sem:
                body = json.dumps({"ip": ip, "ttl_seconds": TTL})
                async with http.put(f"/service/{service}/register", data=body) as r:
                    assert r.status == 200, await r.text()

        await asyncio.gather(*(register(s, ip) for s, ip in targets))


def _db_counters(url: str) -> dict[str, float]:
    """Counters of the bench database (commits, endpoint row updates) and the cluster's WAL."""
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        (commits,) = cur.fetchone()
        cur.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'endpoints'"
        )
        upd, hot = cur.fetchone()
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
        (wal,) = cur.fetchone()
        return {"commits": commits, "upd": upd, "hot": hot, "wal": float(wal)}
    finally:
        conn.close()


def _run_load(
    daemon: Daemon,
    targets: list[tuple[str, str]],
    duration: float,
    reference: bool = False,
    rate: float = 0.0,
) -> tuple[int, int, list[float], float, float]:
    """Run the load generators, flat out or at `rate` requests/s in all; (ok, errors,
    latencies, elapsed s, daemon CPU s)."""
    period = WORKERS * CONCURRENCY / rate if rate else 0.0
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    shares = [targets[i::WORKERS] for i in range(WORKERS)]
    deadline = time.time() + duration
    budget = MAX_HEARTBEATS // WORKERS
    procs = [
        ctx.Process(
            target=_load_worker,
            args=(daemon.http_port, sh, deadline, budget, reference, period, out),
        )
        for sh in shares
    ]
    cpu0 = daemon.cpu_seconds()
    started = time.time()
    try:
        for p in procs:
            p.start()
        results = [out.get(timeout=duration + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    elapsed = time.time() - started
    cpu = daemon.cpu_seconds() - cpu0
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    return ok, errors, [x for r in results for x in r[2]], elapsed, cpu


def bench_flat_out(daemon: Daemon, url: str, targets: list[tuple[str, str]]) -> None:
    # pg_stat counters: an idle backend reports its last transactions up to 10 s late, so every
    # window below starts and ends with STATS_SETTLE seconds of quiet. The idle daemon's own
    # commits (reaper sweeps, LISTEN pings) are measured first and subtracted.
    time.sleep(STATS_SETTLE)
    idle0, idle_started = _db_counters(url), time.time()
    time.sleep(STATS_SETTLE)
    idle1 = _db_counters(url)
    idle_rate = (idle1["commits"] - idle0["commits"]) / (time.time() - idle_started)

    before = _db_counters(url)
    flushes0 = metric(daemon.base, "sd_lease_flushes_total")
    beats0 = metric(daemon.base, "sd_lease_heartbeats_total")
    flush0 = _flush_seconds(daemon)
    ok, errors, latencies, elapsed, cpu = _run_load(daemon, targets, DURATION, reference=False)
    flush1 = _flush_seconds(daemon)
    mean_flush = (flush1[0] - flush0[0]) / max(flush1[1] - flush0[1], 1) * 1000
    flushes = metric(daemon.base, "sd_lease_flushes_total") - flushes0
    beats = metric(daemon.base, "sd_lease_heartbeats_total") - beats0
    time.sleep(STATS_SETTLE)
    after = _db_counters(url)
    window = elapsed + STATS_SETTLE
    commits = after["commits"] - before["commits"]
    lease_commits = commits - idle_rate * window
    upd, hot = after["upd"] - before["upd"], after["hot"] - before["hot"]
    wal = after["wal"] - before["wal"]

    print(f"heartbeats: {ok} ok, {errors} errors in {elapsed:.1f} s over {len(targets)} leases "
          f"({WORKERS} load processes x {CONCURRENCY} in flight)")  # fmt: skip
    print(f"  rate            {ok / elapsed:,.0f} heartbeats/s")
    print(f"  latency         p50 {percentile(latencies, 50) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 99) * 1000:.0f} ms (includes the batch window)")  # fmt: skip
    print(f"  daemon CPU      {cpu:.1f} s ({cpu / elapsed:.0%} of one core, "
          f"{cpu / max(ok, 1) * 1e6:.0f} us per heartbeat)")  # fmt: skip
    print(f"  flushes         {flushes:.0f} UPDATE transactions for {beats:.0f} renewals "
          f"({beats / max(flushes, 1):.0f} renewals per transaction, "
          f"{mean_flush:.0f} ms each on average)")  # fmt: skip
    per_beat = lease_commits / max(ok, 1)
    print(f"  xact_commit     {commits} in the window, {lease_commits:.0f} after subtracting the "
          f"idle rate ({idle_rate:.1f}/s): {per_beat:.4f} per heartbeat")  # fmt: skip
    print(f"  n_tup_upd       {upd} ({upd / max(ok, 1):.2f} row updates per heartbeat), "
          f"HOT {hot} ({hot / max(upd, 1):.0%}: no index entry written)")  # fmt: skip
    print(f"  WAL             {wal / max(ok, 1):.0f} bytes per heartbeat "
          "(cluster-wide: other databases' activity included)")  # fmt: skip


def bench_rates(daemon: Daemon, targets: list[tuple[str, str]]) -> None:
    for rate in RATES:
        flush0 = _flush_seconds(daemon)
        ok, errors, latencies, elapsed, cpu = _run_load(daemon, targets, DURATION, rate=rate)
        flush1 = _flush_seconds(daemon)
        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        mean_flush = (flush1[0] - flush0[0]) / max(flush1[1] - flush0[1], 1) * 1000
        print(f"fixed rate {rate:,.0f}/s: {ok / elapsed:,.0f} heartbeats/s done, {errors} errors, "
              f"latency p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
              f"daemon CPU {cpu / elapsed:.0%} of a core, "
              f"batch write {mean_flush:.0f} ms on average")  # fmt: skip


def _flush_seconds(daemon: Daemon) -> tuple[float, float]:
    """(sum, count) of sd_lease_flush_duration_seconds."""
    return (
        metric(daemon.base, "sd_lease_flush_duration_seconds_sum"),
        metric(daemon.base, "sd_lease_flush_duration_seconds_count"),
    )


def bench_reference(daemon: Daemon, targets: list[tuple[str, str]]) -> None:
    ok, _, _, elapsed, cpu = _run_load(daemon, targets, DURATION / 2, reference=True)
    print(f"reference: GET /healthz with the same load generator: {ok / elapsed:,.0f} requests/s, "
          f"daemon CPU {cpu / max(ok, 1) * 1e6:.0f} us per request")  # fmt: skip


def bench_reaper(url: str) -> None:
    """The sweep's scan of every leased row, timed on the bench database."""
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        times = []
        for _ in range(5):
            started = time.perf_counter()
            cur.execute(
                """SELECT count(*), count(*) FILTER (WHERE expires_at <= now())
                   FROM endpoints WHERE expires_at IS NOT NULL"""
            )
            (leased, _expired) = cur.fetchone()
            times.append(time.perf_counter() - started)
        print(f"reaper sweep: counting {leased} leases takes {sorted(times)[2] * 1000:.1f} ms "
              "(once per SD_LEASE_REAP_INTERVAL_SECONDS, on one replica)")  # fmt: skip
    finally:
        conn.close()


def bench_watchers(daemon: Daemon, service: str, style: str = "native") -> None:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    gos = [ctx.Queue() for _ in range(2)]
    per = WATCHERS // 2
    procs = [
        ctx.Process(target=_watch_worker, args=(daemon.base, service, per, ROUNDS, go, out, style))
        for go in gos
    ]
    path, header = WATCH_STYLES[style]
    idle_cpu: list[float] = []
    for p in procs:
        p.start()
    samples: list[float] = []
    try:
        for rnd in range(ROUNDS):
            url = daemon.base + path.format(service=service)
            with urllib.request.urlopen(url, timeout=10) as r:
                index = int(r.headers[header])
                size = len(r.read())
            for go in gos:
                go.put(index)
            deadline = time.time() + 60
            while metric(daemon.base, "sd_http_blocking_queries") < per * 2:
                if time.time() > deadline:
                    raise RuntimeError("watchers did not all block")
                time.sleep(0.05)
            cpu = daemon.cpu_seconds()
            time.sleep(2.0)  # all blocked: what does waiting cost?
            idle_cpu.append((daemon.cpu_seconds() - cpu) / 2.0)
            sent = time.time()
            _put(daemon.base, f"/service/{service}/register", {"ip": f"10.255.0.{rnd + 1}"})
            answered = [t for _ in procs for t in out.get(timeout=60)]
            samples.extend(t - sent for t in answered)
            print(f"  round {rnd + 1}: {len(answered)} watchers answered, last after "
                  f"{(max(answered) - sent) * 1000:.1f} ms")  # fmt: skip
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    print(f"{style} watchers ({path}): {WATCHERS} blocked queries released by one write, "
          f"{ROUNDS} rounds; daemon CPU while all wait {max(idle_cpu) * 100:.1f} % of a core "
          f"at most; answers of {size / 1024:.0f} KiB")  # fmt: skip
    p50, p99 = percentile(samples, 50) * 1000, percentile(samples, 99) * 1000
    worst = max(samples) * 1000
    print(f"  change -> answer p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")


def main() -> None:
    services = [f"lease-bench-{i}" for i in range((ENDPOINTS + PER_SERVICE - 1) // PER_SERVICE)]
    targets = [
        (services[i // PER_SERVICE], f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}")
        for i in range(ENDPOINTS)
    ]
    with scratch_database() as url:
        daemon = Daemon(
            url,
            core=SERVER_CORE,
            SD_MAX_WATCHES_PER_CLIENT=str(WATCHERS * 2),
            DB_POOL_MAX_SIZE="10",
        )
        try:
            daemon.wait_ready()
            print(daemon.settings())
            started = time.time()
            asyncio.run(_register_all(daemon.base, targets))
            print(f"registered {ENDPOINTS} leased endpoints in {len(services)} services "
                  f"in {time.time() - started:.1f} s")  # fmt: skip
            if "flat" in PHASES:
                bench_flat_out(daemon, url, targets)
            if "rates" in PHASES:
                bench_rates(daemon, targets)
            if "reference" in PHASES:
                bench_reference(daemon, targets)
            if "reaper" in PHASES:
                bench_reaper(url)
            if "watch" in PHASES:
                bench_watchers(daemon, services[0])
            if "consul-watch" in PHASES:
                bench_watchers(daemon, services[1 % len(services)], "consul")
            if "clients" in PHASES:
                bench_clients(daemon)
            print(f"daemon peak RSS {daemon.peak_rss_mib():.0f} MiB")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
