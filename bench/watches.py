"""How fast HTTP blocking queries answer, and what waiting ones cost: the wall-clock budgets
that tests/test_watches.py no longer asserts (they failed a correct daemon on a loaded
machine; the tests check behaviour, this prints the numbers against the old budgets).

1. Start the daemon (pinned to core 0 when taskset exists) on a scratch database, with one
   service; this client runs on core 1.
2. change -> answer: a blocking read (`?index=N&wait=10s`) is held, then an endpoint is
   registered; the time from sending the write to the read's answer. ROUNDS rounds.
3. past index: a read at an index already passed (one service, and the listing at index 0).
4. wait=300ms: when a read that nothing releases answers (the wait plus up to 1/16 jitter).
5. lapse: an endpoint with a 1 s lease, renewed once, then left to lapse; the time from its
   expires_at to the answer of a blocking read on its service. LAPSES rounds.
6. idle: WATCHERS blocking reads held; the daemon's CPU over IDLE seconds (and without them),
   then the time from one write to the last of them answered.
7. cap: a second daemon with SD_WATCH_MAX_WAIT_SECONDS=1.6; 20 reads asking wait=10m at once:
   when they end, and how far apart (the jitter).
8. shutdown: a blocking read held; SIGTERM (drain 0): when the read is answered.
9. listing: a third daemon; LISTING_SERVICES (2,000) services, LISTING_WATCHERS (500) blocking
   `GET /services?index=N&wait=60s` held, released by one write: the time from the write to
   the last answer, /healthz latency meanwhile (a prober on its own connection, back to back),
   the daemon's CPU, and the bytes of JSON it encoded for them (sd_http_encoded_bytes_total;
   "n/a" on a daemon without that metric, where every answer was encoded on its own). Then
   LISTING_STREAMS (200) gRPC Watch streams on every service, opened together: the time until
   each has its snapshot, and the bytes encoded (sd_grpc_watch_encoded_bytes_total).

Steps 2-8 end with the old test's budget and whether it was met; the exit code is 1 if any was
not. Step 9 prints figures (issue 11, item 2: before, the last of 500 answered 6.7 s after the
write and /healthz took 6.6 s). Run: .venv/bin/python bench/watches.py (env ROUNDS=20 LAPSES=3
WATCHERS=1000 IDLE=3 LISTING_SERVICES=2000 LISTING_WATCHERS=500 LISTING_STREAMS=200;
STEPS=timings,capped,listing picks the daemons to run); about 60 s. Loopback only; the
daemons are stopped by PID; the database is dropped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Daemon, metric, percentile, pin, scratch_database

# bench/grpc.py would shadow the grpc package (step 9 imports it): this folder leaves sys.path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROUNDS = int(os.environ.get("ROUNDS", "20"))
LAPSES = int(os.environ.get("LAPSES", "3"))
WATCHERS = int(os.environ.get("WATCHERS", "1000"))
IDLE = float(os.environ.get("IDLE", "3"))
LISTING_SERVICES = int(os.environ.get("LISTING_SERVICES", "2000"))
LISTING_WATCHERS = int(os.environ.get("LISTING_WATCHERS", "500"))
LISTING_STREAMS = int(os.environ.get("LISTING_STREAMS", "200"))
STEPS = os.environ.get("STEPS", "timings,capped,listing").split(",")
CAP = 1.6
SERVER_CORE, CLIENT_CORE = 0, 1
SERVICE = "watch-bench"
# the reaper parked: deleting a lapsed row moves the index, which would end a read early
PARKED = {"SD_LEASE_REAP_INTERVAL_SECONDS": "3600"}

results: list[bool] = []


def report(what: str, value: float, budget: float, unit: str = "ms", scale: float = 1000) -> None:
    """One line: the number, the old test's budget (an upper bound), met or not."""
    met = value < budget
    results.append(met)
    verdict = "met" if met else "NOT met"
    print(f"{what}: {value * scale:.1f} {unit} (budget < {budget * scale:g} {unit}: {verdict})")


class Client:
    """A keep-alive HTTP client of one daemon (no connection limit: watchers wait in parallel)."""

    def __init__(self, base: str) -> None:
        import aiohttp

        self.http = aiohttp.ClientSession(
            base,
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def put(self, path: str, body: object = None) -> dict:
        async with self.http.put(path, json=body) as resp:
            assert resp.status in (200, 201), await resp.text()
            return await resp.json()

    async def index(self) -> int:
        async with self.http.get(f"/service/{SERVICE}") as resp:
            await resp.read()
            return int(resp.headers["X-Index"])

    async def timed(self, path: str, same: int | None = None) -> float:
        """Seconds until a GET is answered; with `same`, the answer must keep that index (a read
        that ended by time, not by a change)."""
        started = time.perf_counter()
        async with self.http.get(path) as resp:
            await resp.read()
            took = time.perf_counter() - started
            assert same is None or int(resp.headers["X-Index"]) == same, "released by a change"
            return took

    async def held(self, n: int) -> None:
        """Until the daemon's gauge shows `n` blocking queries waiting."""
        for _ in range(2000):  # 100 s at most
            async with self.http.get("/metrics") as resp:
                text = await resp.text()
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name == "sd_http_blocking_queries" and float(value) >= n:
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{n} blocking queries were never held")

    async def close(self) -> None:
        await self.http.close()


async def timings(daemon: Daemon, c: Client) -> None:
    """Steps 2 to 6."""
    await c.put("/service", {"name": SERVICE})

    delays = []
    for i in range(ROUNDS):
        read = asyncio.create_task(c.timed(f"/service/{SERVICE}?index={await c.index()}&wait=10s"))
        await c.held(1)
        sent = time.perf_counter()
        await c.put(f"/service/{SERVICE}/register", {"ip": f"10.250.0.{i + 1}"})
        await read
        delays.append(time.perf_counter() - sent)
    print(f"change -> answer, one watcher, {ROUNDS} rounds: p50 "
          f"{percentile(delays, 50) * 1000:.1f} ms (the write included)")  # fmt: skip
    report("  slowest", max(delays), 0.5)

    now = await c.index()
    paths = (f"/service/{SERVICE}?index={now - 1}&wait=10s", "/services?index=0&wait=10s")
    took = [await c.timed(path) for _ in range(ROUNDS) for path in paths]
    report(f"past index answered, slowest of {len(took)}", max(took), 0.5)

    took = [await c.timed(f"/service/{SERVICE}?index={now}&wait=300ms", now) for _ in range(5)]
    print(f"wait=300ms answered after {min(took) * 1000:.0f} - {max(took) * 1000:.0f} ms "
          "(300 ms + up to 1/16 jitter)")  # fmt: skip
    report("  slowest", max(took), 0.3 * (1 + 1 / 16) + 0.25)

    late = []
    for i in range(LAPSES):
        ip = f"10.251.0.{i + 1}"
        await c.put(f"/service/{SERVICE}/register", {"ip": ip, "ttl_seconds": 1})
        expires_at = (await c.put(f"/service/{SERVICE}/endpoints/{ip}/heartbeat"))["expires_at"]
        now = await c.index()
        await c.timed(f"/service/{SERVICE}?index={now}&wait=5s", now)  # a lapse keeps the index
        late.append(time.time() - expires_at)
    print(f"lease lapse -> blocking read answered, {LAPSES} rounds: "
          f"{min(late) * 1000:.0f} - {max(late) * 1000:.0f} ms after expires_at")  # fmt: skip
    report("  latest", max(late), 1.0)

    cpu0 = daemon.cpu_seconds()
    await asyncio.sleep(IDLE)
    without = (daemon.cpu_seconds() - cpu0) / IDLE
    path = f"/service/{SERVICE}?index={await c.index()}&wait=60s"
    watchers = [asyncio.create_task(c.timed(path)) for _ in range(WATCHERS)]
    await c.held(WATCHERS)
    await asyncio.sleep(0.2)
    cpu0 = daemon.cpu_seconds()
    await asyncio.sleep(IDLE)
    idle = (daemon.cpu_seconds() - cpu0) / IDLE
    print(f"idle daemon CPU without watchers: {without * 1000:.1f} ms per s")
    report(f"idle daemon CPU with {WATCHERS} blocking queries", idle, 0.15, "ms per s")
    sent = time.perf_counter()
    await c.put(f"/service/{SERVICE}/register", {"ip": "10.252.0.1"})
    await asyncio.gather(*watchers)
    report(f"  one write -> all {WATCHERS} answered", time.perf_counter() - sent, 10.0)


async def capped_timings(capped: Daemon, c: Client) -> None:
    """Steps 7 and 8 (the service exists: same database)."""
    now = await c.index()
    path = f"/service/{SERVICE}?index={now}&wait=10m"
    took = sorted(await asyncio.gather(*(c.timed(path, now) for _ in range(20))))
    print(f"wait=10m capped at {CAP} s: 20 reads ended after {took[0]:.3f} - {took[-1]:.3f} s "
          f"(spread by the jitter: {(took[-1] - took[0]) * 1000:.0f} ms)")  # fmt: skip
    report("  latest", took[-1], CAP * (1 + 1 / 16) + 0.3, "s", 1)

    read = asyncio.create_task(c.timed(f"/service/{SERVICE}?index={await c.index()}&wait=30s"))
    await c.held(1)
    stopping = time.perf_counter()
    capped.proc.send_signal(signal.SIGTERM)
    await read
    report("SIGTERM -> blocked read answered", time.perf_counter() - stopping, 2.0)


# /healthz back to back on one keep-alive connection; prints "start seconds" per probe on SIGINT
PROBER = """
import http.client, sys, time, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
probes = []
try:
    while True:
        at, started = time.time(), time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        probes.append((at, time.perf_counter() - started))
except KeyboardInterrupt:
    pass
print("\\n".join(f"{at} {took}" for at, took in probes))
"""


def encoded(daemon: Daemon, name: str) -> float | None:
    """A counter of encoded bytes, None when the daemon has no such metric (before issue 11)."""
    import urllib.request

    with urllib.request.urlopen(daemon.base + "/metrics", timeout=10) as r:
        if f"\n{name} ".encode() not in r.read():
            return None
    return metric(daemon.base, name)


def mib(before: float | None, after: float | None) -> str:
    return "n/a" if before is None or after is None else f"{(after - before) / 2**20:.1f} MiB"


async def listing_release(daemon: Daemon, c: Client) -> None:
    """Step 9."""
    import grpc

    from service_discovery.proto import discovery_pb2 as pb
    from service_discovery.proto import discovery_pb2_grpc as pb_grpc

    names = iter(range(LISTING_SERVICES))

    async def create() -> None:
        for i in names:
            await c.put("/service", {"name": f"listed-{i:05}", "attributes": {"team": "bench"}})

    await asyncio.gather(*(create() for _ in range(50)))
    async with c.http.get("/services") as resp:
        index = int(resp.headers["X-Index"])
        size = len(await resp.read())

    async def watcher() -> tuple[float, int]:
        async with c.http.get(f"/services?index={index}&wait=60s") as resp:
            body = await resp.read()
            return time.perf_counter(), len(body)

    watchers = [asyncio.create_task(watcher()) for _ in range(LISTING_WATCHERS)]
    await c.held(LISTING_WATCHERS)
    # /healthz is probed from a process of its own: this one is busy reading the answers
    prober = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBER, daemon.base, stdout=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(0.5)
    bytes0, cpu0 = encoded(daemon, "sd_http_encoded_bytes_total"), daemon.cpu_seconds()
    sent, sent_wall = time.perf_counter(), time.time()
    await c.put("/service", {"name": "listed-new"})
    answers = await asyncio.gather(*watchers)
    last = max(at for at, _ in answers) - sent
    cpu = daemon.cpu_seconds() - cpu0
    await asyncio.sleep(0.2)
    prober.send_signal(signal.SIGINT)
    out = (await asyncio.wait_for(prober.communicate(), 30))[0].decode()
    # (start, seconds) of each probe; those that overlap the release
    probes = [
        took
        for at, took in (map(float, line.split()) for line in out.splitlines())
        if at + took >= sent_wall and at <= sent_wall + last
    ]
    bytes1 = encoded(daemon, "sd_http_encoded_bytes_total")
    received = sum(n for _, n in answers)
    print(f"listing of {LISTING_SERVICES} services ({size / 1024:.0f} KiB), "
          f"{LISTING_WATCHERS} blocking queries released by one write:")  # fmt: skip
    print(f"  last answered {last * 1000:.0f} ms after the write; daemon CPU {cpu * 1000:.0f} ms")
    print(f"  /healthz meanwhile: {len(probes)} probes, p50 {percentile(probes, 50) * 1000:.1f} ms,"
          f" max {max(probes, default=float('nan')) * 1000:.1f} ms")  # fmt: skip
    print(f"  JSON encoded: {mib(bytes0, bytes1)}; sent: {received / 2**20:.1f} MiB")

    target = f"127.0.0.1:{daemon.grpc_port}"
    options = [("grpc.max_receive_message_length", 64 << 20)]  # a daemon that does not page
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        bytes0 = encoded(daemon, "sd_grpc_watch_encoded_bytes_total")
        started = time.perf_counter()
        calls = [stub.Watch(pb.WatchRequest()) for _ in range(LISTING_STREAMS)]

        async def snapshot(call: grpc.aio.UnaryStreamCall) -> int:
            pages = 0
            while True:
                msg = await call.read()
                pages += 1
                if not getattr(msg, "more", False):
                    return pages

        pages = await asyncio.gather(*(snapshot(call) for call in calls))
        took = time.perf_counter() - started
        bytes1 = encoded(daemon, "sd_grpc_watch_encoded_bytes_total")
        for call in calls:
            call.cancel()
    print(f"{LISTING_STREAMS} Watch streams on every service opened together: all snapshots "
          f"in {took * 1000:.0f} ms ({max(pages)} message(s) each); "
          f"encoded: {mib(bytes0, bytes1)}")  # fmt: skip


async def run(daemon: Daemon, timing: Callable[[Daemon, Client], Awaitable[None]]) -> None:
    c = Client(daemon.base)
    try:
        await timing(daemon, c)
    finally:
        await c.close()


def main() -> int:
    import uvloop

    pin(CLIENT_CORE)
    watchers = str(WATCHERS * 2)
    with scratch_database() as url:
        if "timings" in STEPS:
            daemon = Daemon(url, core=SERVER_CORE, SD_MAX_WATCHES_PER_CLIENT=watchers, **PARKED)
            try:
                daemon.wait_ready()
                print(daemon.settings())
                uvloop.run(run(daemon, timings))
            finally:
                daemon.stop()
        if "capped" in STEPS:
            capped = Daemon(url, core=SERVER_CORE, SD_WATCH_MAX_WAIT_SECONDS=str(CAP), **PARKED)
            try:
                capped.wait_ready()
                print(capped.settings())
                uvloop.run(run(capped, capped_timings))
                capped.proc.wait(timeout=30)  # SIGTERM was sent: let it drain and exit
            finally:
                capped.stop()
        if "listing" in STEPS:
            listing = Daemon(url, core=SERVER_CORE, **PARKED)
            try:
                listing.wait_ready()
                print(listing.settings())
                uvloop.run(run(listing, listing_release))
            finally:
                listing.stop()
    print("all within the old budgets" if all(results) else "some budgets NOT met")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
