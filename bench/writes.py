"""Write throughput: registrations per second against a bare asyncpg reference, in the same run.

1. Start the daemon (pinned to core 0 when taskset exists) on a scratch database; create
   SERVICES services (100).
2. HTTP, flat out: one load process pinned to core 1 holds CLIENTS (50) keep-alive connections,
   each sending `PUT /service/{name}/register` with a new endpoint (distinct ips spread over the
   services) as soon as the previous answer came, for DURATION s (at most MAX_WRITES). Every
   write is acknowledged only after commit. Print registrations/s, latency p50/p99, batch
   sizes (the daemon's sd_write_batch_writes histogram, when it has one) and the daemon's CPU
   time per registration (/proc/PID/stat).
3. The reference, alternating with step 2, ROUNDS (3) times: a bare asyncpg process (pinned to
   core 0, where the daemon runs: it plays the daemon's part, with no HTTP in front) with
   CLIENTS connections, each doing one transaction per write: INSERT of an endpoint row +
   pg_notify, in one statement. Print its rate and the ratio daemon/reference per round and
   their median (target >= 2.0). For scale, also the same INSERT + notify 50 rows per
   transaction, once.
4. gRPC: the same load through RegisterEndpoint (CLIENTS concurrent calls, one process on
   core 1), one round.
5. One client: sequential registrations over one keep-alive connection (LATENCY_WRITES of
   them): p50/p99, the latency a lone writer sees.
6. Bulk: `PUT /service/{name}/endpoints` with BULK (10,000) endpoints in one call, when the
   daemon has that route: the time to the answer (target < 1 s).
The machine's load average is printed first and last, and, after the HTTP rounds, the time
PostgreSQL spent inside the write functions per call (track_functions on the scratch database,
where the role may set it): what of a batch's commit time is the database's statement, the rest
being the round trip, the commit's flush and the daemon's event loop.

Run: .venv/bin/python bench/writes.py   (or `make bench-writes`; env DURATION=10 ROUNDS=3
     CLIENTS=50 SERVICES=100 PHASES=http,grpc,one,bulk)
Loopback only; every process started here is stopped by its PID; the database is dropped.
The machine is shared and its speed drifts: compare the ratio, measured round by round.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import multiprocessing as mp
import os
import queue
import re
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# bench/ holds grpc.py: its folder must stay off sys.path, or `import grpc` finds that file.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
_spec = importlib.util.spec_from_file_location("bench_common", _BENCH / "common.py")
assert _spec is not None and _spec.loader is not None
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)
ROOT, Daemon, scratch_database = common.ROOT, common.Daemon, common.scratch_database
percentile, pin = common.percentile, common.pin
sys.path.insert(0, str(ROOT))  # service_discovery, when run from a checkout

DURATION = float(os.environ.get("DURATION", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CLIENTS = int(os.environ.get("CLIENTS", "50"))
SERVICES = int(os.environ.get("SERVICES", "100"))
MAX_WRITES = int(os.environ.get("MAX_WRITES", "200000"))  # per run, whatever the rate
LATENCY_WRITES = int(os.environ.get("LATENCY_WRITES", "500"))
BULK = int(os.environ.get("BULK", "10000"))
PHASES = os.environ.get("PHASES", "http,grpc,one,bulk").split(",")
SERVER_CORE, CLIENT_CORE = 0, 1
REF_BATCH = 50

# The reference's table: an endpoints row as the daemon stores it, without the daemon.
REFERENCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS ref_endpoints (
    service_id integer NOT NULL,
    ip inet NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, ip)
)"""
REFERENCE_ONE = """
WITH row AS (INSERT INTO ref_endpoints (service_id, ip) VALUES ($1, $2::inet) RETURNING 1)
SELECT pg_notify('sd_ref', $3) FROM row"""
REFERENCE_MANY = """
WITH rows AS (INSERT INTO ref_endpoints (service_id, ip)
              SELECT * FROM unnest($1::integer[], $2::inet[]) RETURNING 1)
SELECT pg_notify('sd_ref', $3) FROM (SELECT count(*) FROM rows) c"""


def ip_of(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def service_of(i: int) -> str:
    return f"wbench-{i % SERVICES}"


# ---- load generators (separate processes) -----------------------------------------------------
def _http_worker(port: int, first: int, seconds: float, budget: int, out: mp.Queue) -> None:
    """CLIENTS keep-alive connections registering endpoints first, first+1, ... one request at a
    time each, until `seconds` pass or `budget` writes were sent; reports (ok, errors,
    latencies, elapsed). A minimal HTTP/1.1 client on asyncio streams: an aiohttp client costs
    several times the CPU per request and would measure itself."""
    import uvloop

    pin(CLIENT_CORE)
    content_length = re.compile(rb"content-length: *(\d+)", re.I)

    async def run() -> tuple[int, int, list[float], float]:
        ok = errors = 0
        latencies: list[float] = []
        sent = 0
        deadline = time.perf_counter() + seconds

        async def connection() -> None:
            nonlocal ok, errors, sent
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                while time.perf_counter() < deadline and sent < budget:
                    i = first + sent
                    sent += 1
                    body = b'{"ip": "%s"}' % ip_of(i).encode()
                    head = (
                        f"PUT /service/{service_of(i)}/register HTTP/1.1\r\nHost: b\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    )
                    started = time.perf_counter()
                    writer.write(head.encode() + body)
                    answer = await reader.readuntil(b"\r\n\r\n")
                    m = content_length.search(answer)
                    await reader.readexactly(int(m.group(1)) if m else 0)
                    if answer[9:12] == b"200":
                        ok += 1
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1
            finally:
                writer.close()

        started = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(CLIENTS)))
        return ok, errors, latencies, time.perf_counter() - started

    out.put(uvloop.run(run()))


def _grpc_worker(port: int, first: int, seconds: float, budget: int, out: mp.Queue) -> None:
    """CLIENTS concurrent RegisterEndpoint calls over one channel, as _http_worker does."""
    import grpc
    import uvloop

    from service_discovery.proto import discovery_pb2 as pb
    from service_discovery.proto import discovery_pb2_grpc as pb_grpc

    pin(CLIENT_CORE)

    async def run() -> tuple[int, int, list[float], float]:
        ok = errors = 0
        latencies: list[float] = []
        sent = 0
        deadline = time.perf_counter() + seconds
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            await channel.channel_ready()

            async def client() -> None:
                nonlocal ok, errors, sent
                while time.perf_counter() < deadline and sent < budget:
                    i = first + sent
                    sent += 1
                    request = pb.RegisterEndpointRequest(
                        service_name=service_of(i), endpoint=pb.Endpoint(ip=ip_of(i))
                    )
                    started = time.perf_counter()
                    try:
                        await stub.RegisterEndpoint(request, timeout=30)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    ok += 1
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(CLIENTS)))
            return ok, errors, latencies, time.perf_counter() - started

    out.put(uvloop.run(run()))


def _reference_worker(url: str, first: int, seconds: float, batch: int, out: mp.Queue) -> None:
    """CLIENTS asyncpg connections, each writing `batch` endpoint rows per transaction (INSERT
    and pg_notify in one statement) until `seconds` pass; reports (rows, latencies, elapsed)."""
    import asyncpg
    import uvloop

    pin(SERVER_CORE)

    async def run() -> tuple[int, list[float], float]:
        rows = 0
        latencies: list[float] = []
        sent = 0
        deadline = time.perf_counter() + seconds
        conns = [await asyncpg.connect(url) for _ in range(CLIENTS)]

        async def client(conn: asyncpg.Connection) -> None:
            nonlocal rows, sent
            while time.perf_counter() < deadline and sent < MAX_WRITES:
                ids = range(first + sent, first + sent + batch)
                sent += batch
                started = time.perf_counter()
                if batch == 1:
                    i = ids[0]
                    payload = json.dumps({"s": service_of(i), "ip": ip_of(i)})
                    await conn.execute(REFERENCE_ONE, i % SERVICES, ip_of(i), payload)
                else:
                    payload = json.dumps([[service_of(i), ip_of(i)] for i in ids])[:7900]
                    await conn.execute(
                        REFERENCE_MANY,
                        [i % SERVICES for i in ids],
                        [ip_of(i) for i in ids],
                        payload,
                    )
                latencies.append(time.perf_counter() - started)
                rows += batch

        try:
            started = time.perf_counter()
            await asyncio.gather(*(client(c) for c in conns))
            return rows, latencies, time.perf_counter() - started
        finally:
            for c in conns:
                await c.close()

    out.put(uvloop.run(run()))


def _in_process(target: Any, *args: Any) -> Any:
    """Run a worker in a fresh process and return what it reports; the process is joined (or
    killed) before returning."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out))
    proc.start()
    deadline = time.monotonic() + DURATION + 120
    try:
        while time.monotonic() < deadline:
            try:
                return out.get(timeout=1)
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"{target.__name__} died: exit {proc.exitcode}") from None
        raise RuntimeError(f"{target.__name__} did not report in time")
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()


# ---- measurements -------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_histogram(base: str) -> dict[str, float] | None:
    """The daemon's batch-size histogram (le -> count, plus sum and count), or None if the
    daemon has none (before group commit)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^sd_write_batch_writes_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    for part in ("sum", "count"):
        m = re.search(rf"^sd_write_batch_writes_{part} (\S+)$", text, re.M)
        if m:
            out[part] = float(m.group(1))
        m = re.search(rf"^sd_write_commit_duration_seconds_{part} (\S+)$", text, re.M)
        if m:
            out[f"commit_{part}"] = float(m.group(1))
    return out or None


_FUNCTIONS = ("sd_write_endpoints", "sd_write_batch", "sd_register", "sd_deregister")


def function_times(url: str) -> dict[str, tuple[int, float]] | None:
    """(calls, total ms) of the write functions so far (track_functions), None if untracked.
    Backends report at most once a second and, once idle, within 10 s: read after a pause."""
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT funcname, calls, total_time FROM pg_stat_user_functions"
            " WHERE funcname = ANY(%s)",
            (list(_FUNCTIONS),),
        )
        return {name: (calls, total) for name, calls, total in cur.fetchall()} or None
    finally:
        conn.close()


def track_functions(url: str) -> bool:
    """Time plpgsql functions in the scratch database (a superuser's setting)."""
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("SELECT current_database()")
        (name,) = cur.fetchone()
        cur.execute(f"ALTER DATABASE \"{name}\" SET track_functions = 'pl'")
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def describe_batches(before: dict[str, float] | None, after: dict[str, float] | None) -> str:
    if before is None or after is None:
        return "batch sizes -"
    count = after["count"] - before["count"]
    if count <= 0:
        return "no batch"
    mean = (after["sum"] - before["sum"]) / count
    # the median batch from the cumulative buckets: the first bound holding half the batches
    median = next(
        (le for le, n in after.items() if le[0].isdigit() and n - before.get(le, 0) >= count / 2),
        "+Inf",
    )
    commit = (after["commit_sum"] - before["commit_sum"]) / count * 1000
    return (
        f"{count:.0f} batches, mean {mean:.1f} writes (median <= {median}), "
        f"{commit:.1f} ms to commit one"
    )


def put(base: str, path: str, body: Any, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Counter:
    """Distinct endpoint numbers across every phase."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> int:
        first = self.next
        self.next += n
        return first


def run_daemon_round(daemon: Daemon, ids: Counter, worker: Any) -> dict[str, float | str]:
    hist0 = batch_histogram(daemon.base)
    cpu0 = cpu_seconds(daemon.proc.pid)
    ok, errors, latencies, elapsed = _in_process(
        worker, daemon.grpc_port if worker is _grpc_worker else daemon.http_port,
        ids.take(MAX_WRITES), DURATION, MAX_WRITES,
    )  # fmt: skip
    cpu = cpu_seconds(daemon.proc.pid) - cpu0
    hist1 = batch_histogram(daemon.base)
    return {
        "rate": ok / elapsed,
        "errors": errors,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "cpu_us": cpu / max(ok, 1) * 1e6,
        "cpu_share": cpu / elapsed,
        "batches": describe_batches(hist0, hist1),
    }


def run_reference(url: str, ids: Counter, batch: int) -> dict[str, float]:
    rows, latencies, elapsed = _in_process(
        _reference_worker, url, ids.take(MAX_WRITES), DURATION, batch
    )
    return {
        "rate": rows / elapsed,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
    }


def line(label: str, r: dict[str, Any]) -> str:
    text = f"  {label:<22} {r['rate']:8.0f} /s  p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms"
    if "cpu_us" in r:
        text += (
            f"  CPU {r['cpu_us']:5.0f} us/write ({r['cpu_share']:.0%} of a core)  {r['batches']}"
        )
        if r["errors"]:
            text += f"  ERRORS {r['errors']}"
    return text


def bench_http(daemon: Daemon, url: str, ids: Counter) -> None:
    print(f"registrations over HTTP: {CLIENTS} keep-alive clients, distinct endpoints over "
          f"{SERVICES} services, {DURATION:.0f} s per round, alternating with the reference "
          f"(asyncpg, {CLIENTS} connections, one transaction per write: INSERT + notify)"
          )  # fmt: skip
    ours, theirs = [], []
    for rnd in range(ROUNDS):
        ours.append(run_daemon_round(daemon, ids, _http_worker))
        theirs.append(run_reference(url, ids, 1))
        print(line(f"round {rnd + 1} daemon", ours[-1]))
        print(line(f"round {rnd + 1} reference", theirs[-1]))
    ratios = [o["rate"] / t["rate"] for o, t in zip(ours, theirs, strict=True)]
    med = {k: statistics.median(float(o[k]) for o in ours) for k in ("rate", "p50", "p99")}
    print(f"  daemon median: {med['rate']:.0f} registrations/s, p50 {med['p50']:.1f} ms, "
          f"p99 {med['p99']:.1f} ms  (target >= 1,500/s with p99 < 100 ms)")  # fmt: skip
    print(f"  ratio daemon/reference per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}  (target >= 2.0)")  # fmt: skip
    many = run_reference(url, ids, REF_BATCH)
    print(line(f"reference, {REF_BATCH} rows/tx", many) + "  (rows/s, for scale)")
    time.sleep(1)  # the daemon's connections were idle through the last round: reported
    if (times := function_times(url)) is not None:
        inside = ", ".join(
            f"{name} {total / calls:.2f} ms x {calls}" for name, (calls, total) in times.items()
        )
        print(f"  PostgreSQL inside the write functions, per call (every round): {inside}")


def bench_grpc(daemon: Daemon, ids: Counter) -> None:
    r = run_daemon_round(daemon, ids, _grpc_worker)
    print(f"registrations over gRPC (RegisterEndpoint), {CLIENTS} concurrent calls, "
          f"{DURATION:.0f} s:")  # fmt: skip
    print(line("daemon", r))


def bench_one_client(daemon: Daemon, ids: Counter) -> None:
    async def run() -> list[float]:
        import aiohttp

        latencies = []
        first = ids.take(LATENCY_WRITES)
        deadline = time.perf_counter() + 60
        async with aiohttp.ClientSession(daemon.base) as http:
            for i in range(first, first + LATENCY_WRITES):
                if time.perf_counter() > deadline:
                    break
                started = time.perf_counter()
                async with http.put(
                    f"/service/{service_of(i)}/register", json={"ip": ip_of(i)}
                ) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.perf_counter() - started)
        return latencies

    pin(CLIENT_CORE)
    latencies = asyncio.run(run())
    print(f"one client, {len(latencies)} sequential registrations: "
          f"p50 {percentile(latencies, 50) * 1000:.2f} ms, "
          f"p99 {percentile(latencies, 99) * 1000:.2f} ms")  # fmt: skip


def bench_bulk(daemon: Daemon) -> None:
    status, _ = put(daemon.base, "/service", {"name": "wbench-bulk"})
    assert status == 201, status
    body = {"endpoints": [{"ip": ip_of(i), "tags": ["bulk"]} for i in range(BULK)]}
    started = time.perf_counter()
    status, answer = put(daemon.base, "/service/wbench-bulk/endpoints", body)
    took = time.perf_counter() - started
    if status in (404, 405):
        print(f"bulk registration: not available (PUT /service/{{name}}/endpoints -> {status})")
        return
    assert status == 200, (status, answer[:200])
    print(f"bulk registration of {BULK} endpoints in one call: {took * 1000:.0f} ms "
          f"(target < 1 s)")  # fmt: skip
    body["replace"] = True
    body["endpoints"] = body["endpoints"][: BULK // 2]
    started = time.perf_counter()
    status, answer = put(daemon.base, "/service/wbench-bulk/endpoints", body)
    took = time.perf_counter() - started
    assert status == 200, (status, answer[:200])
    print(f"  replace with the first {BULK // 2}: {took * 1000:.0f} ms")


def main() -> None:
    import psycopg2

    pin(CLIENT_CORE)
    with scratch_database() as url:
        conn = psycopg2.connect(url)
        conn.autocommit = True
        conn.cursor().execute(REFERENCE_SCHEMA)
        conn.close()
        track_functions(url)  # before the daemon connects
        print(load_line())
        daemon = Daemon(url, core=SERVER_CORE)
        try:
            daemon.wait_ready()
            print(daemon.settings())
            for s in range(SERVICES):
                status, _ = put(daemon.base, "/service", {"name": f"wbench-{s}"})
                assert status == 201, status
            ids = Counter()
            if "http" in PHASES:
                bench_http(daemon, url, ids)
            if "grpc" in PHASES:
                bench_grpc(daemon, ids)
            if "one" in PHASES:
                bench_one_client(daemon, ids)
            if "bulk" in PHASES:
                bench_bulk(daemon)
            print(f"daemon peak RSS {daemon.peak_rss_mib():.0f} MiB")
            print(load_line())
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
