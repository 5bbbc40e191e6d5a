"""Abuse: the floods of issue 11 (items 1-4) against a daemon, and what each costs the others.

1. A scratch database, bulk-loaded with SQL: `big` (ENDPOINTS endpoints x TAGS tags), `mid` (60
   endpoints: a 1 KB answer), SMALL services `svc-<i>` of 2 endpoints and a named port each.
2. In process, without sockets: microseconds per cache miss of a random name under a 3-endpoint
   service and under `big`, with the negative answer cache full (so each miss also evicts).
3. The daemon, pinned to SERVER_CORE (this process, dnsperf and the floods on CLIENT_CORE), run
   three times with the settings printed above its lines: `limits off` (as the other benches
   run it), `defaults`, and `RRL on` (DNS_RRL_RESPONSES_PER_SECOND=RRL_RATE; the others then
   send a valid server cookie, got beforehand, with every query). Every run has
   DNS_TCP_MAX_CONNECTIONS=300, so that a few hundred connections reach the global cap.
4. Each flood runs in a window of DURATION s right after a quiet window of the same length; in
   both: /healthz latency (a GET every 10 ms from this process: p50, p99), and the cached
   answers the others get (dnsperf from 127.0.2.1, closed loop, A records of 200 small
   services) as qps and as answers per CPU-second of the daemon (what a core of its own would
   give them: little moved by other load on a shared machine, lowered by whatever else the
   daemon spends its time on), each with its ratio to the quiet window. The floods, from
   127.0.1.x:
   - misses (item 1): random names under `big` (dnsperf from 127.0.1.1) at the daemon's full
     miss rate, measured first (`limits off`, closed loop, every answer a miss); ROUNDS pairs
     of windows, and the median ratios. Also what the limits did (sd_dns_limited_total).
   - watchers (item 2): WATCHERS blocking `GET /services?index=N&wait=60s` released by a write
     every second; the time from each write to the last of them answered (p50, max).
   - tcp (item 3): TCP_CLIENTS connections from 127.0.1.1-4 pipelining 64 queries for `big`
     (64 KB answers), then one a second, reading nothing, and connecting again when cut off;
     the flood outlives the idle timeout. Also the others' TCP queries (127.0.2.2, a new
     connection every 50 ms: answered share, p99), the connections the daemon holds and its
     RSS, how many flood connections were closed over a cap, and how long the others lived.
   - amplification (item 4): A queries for `mid` with EDNS 4096 from 127.0.1.1, AMP_RATE a
     second: bytes answered per byte asked, and the share of queries answered.
5. Targets (issue 11, `defaults`): the miss flood leaves /healthz p99 < 50 ms and the others'
   cached answers at >= 80 % of their quiet rate (given as qps and per CPU-second).

Run: .venv/bin/python bench/abuse.py  (env ENDPOINTS=5000 TAGS=32 SMALL=2000 DURATION=5
ROUNDS=3 WATCHERS=500 TCP_CLIENTS=400 AMP_RATE=2000 RRL_RATE=100), about 5 minutes. Loopback
only (127.0.1.x and 127.0.2.x are loopback addresses on Linux); every flood is bounded in time
and every process started here is stopped by its PID; the database is dropped.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import re
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LIMITS_OFF, PY, Daemon, ensure_apt, percentile, pin, scratch_database

ENDPOINTS = int(os.environ.get("ENDPOINTS", "5000"))
TAGS = int(os.environ.get("TAGS", "32"))
SMALL = int(os.environ.get("SMALL", "2000"))
DURATION = int(os.environ.get("DURATION", "5"))
WATCHERS = int(os.environ.get("WATCHERS", "500"))
TCP_CLIENTS = int(os.environ.get("TCP_CLIENTS", "400"))
TCP_ADDRESSES = 4
AMP_RATE = int(os.environ.get("AMP_RATE", "2000"))
RRL_RATE = int(os.environ.get("RRL_RATE", "100"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SERVER_CORE, CLIENT_CORE = 1, 0
ZONE = "svc.cluster.local"
FLOOD, OTHERS, OTHERS_TCP = "127.0.1.1", "127.0.2.1", "127.0.2.2"
HERE = Path(__file__).resolve()
EVERY_RUN = {"DNS_TCP_MAX_CONNECTIONS": "300"}


# ---- the registry ----------------------------------------------------------------------------
def load(url: str) -> None:
    """`big`, `mid` and SMALL small services, straight into the tables (versions as sd_bump
    would give them)."""
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO services (name, version) VALUES ('big', 1), ('mid', 2)")
        cur.execute(
            """INSERT INTO services (name, version)
               SELECT 'svc-' || i, i + 2 FROM generate_series(1, %s) AS i""",
            (SMALL,),
        )
        cur.execute(
            """INSERT INTO named_ports (service_id, name, protocol, port)
               SELECT id, 'http', 'tcp', 8080 FROM services"""
        )
        cur.execute(
            """INSERT INTO endpoints (service_id, ip, tags)
               SELECT s.id,
                      ('10.' || (j / 62500) || '.' || (j / 250 %% 250) || '.'
                       || (j %% 250 + 1))::inet,
                      ARRAY(SELECT 'tag-' || ((j + k) %% (%s + 8)) FROM generate_series(1, %s) k)
               FROM services s, generate_series(0, %s - 1) AS j WHERE s.name = 'big'""",
            (TAGS, TAGS, ENDPOINTS),
        )
        cur.execute(
            """INSERT INTO endpoints (service_id, ip)
               SELECT s.id, ('10.200.0.' || j)::inet
               FROM services s, generate_series(1, 60) AS j WHERE s.name = 'mid'"""
        )
        cur.execute(
            """INSERT INTO endpoints (service_id, ip)
               SELECT s.id, ('10.' || (101 + j) || '.' || (s.version / 250) || '.'
                             || (s.version %% 250 + 1))::inet
               FROM services s, generate_series(0, 1) AS j WHERE s.name LIKE %s""",
            ("svc-%",),
        )
        cur.execute("UPDATE registry_state SET version = %s", (SMALL + 2,))


def random_name() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=12))


# ---- step 2: the miss path, in process -------------------------------------------------------
def miss_costs() -> None:
    """Microseconds per miss of a random name, under a small service and under `big`, once the
    negative part of the answer cache is full (so every miss also evicts)."""
    import dns.message

    from service_discovery.catalog import Catalog
    from service_discovery.config import Config
    from service_discovery.dns import DnsServer
    from service_discovery.metrics import Metrics
    from service_discovery.model import Endpoint, Service, Snapshot
    from service_discovery.registry import Registry

    config = Config(dns_miss_budget_per_second=0)
    eps = tuple(
        Endpoint(f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}",
                 tuple(f"tag-{(i + k) % (TAGS + 8)}" for k in range(TAGS)))
        for i in range(ENDPOINTS)
    )  # fmt: skip
    small = (Endpoint("10.1.0.1"), Endpoint("10.1.0.2"), Endpoint("10.1.0.3"))
    services = {
        "big": Service("1", "big", {}, {}, eps, 1),
        "small": Service("2", "small", {}, {}, small, 2),
    }
    registry = Registry(config)
    registry.replace_all(Snapshot(2, services))
    server = DnsServer(config, Catalog(config, None, registry, None, Metrics()), Metrics())
    fill = config.dns_cache_size // 4 + 1000
    for _ in range(fill):  # the negative part full: every miss below evicts one
        server.respond(dns.message.make_query(f"{random_name()}.{ZONE}", "A").to_wire(), False)
    print(f"miss path, in process (answer cache full, {ENDPOINTS} x {TAGS} tags for big):")
    for name, label in (("small", "3 endpoints"), ("big", f"{ENDPOINTS} endpoints x {TAGS} tags")):
        queries = [
            dns.message.make_query(f"{random_name()}.{name}.{ZONE}", "A").to_wire()
            for _ in range(20000)
        ]
        server.respond(queries[0], False)  # builds the service's index, once per change
        runs = []
        for i in range(1, 4):
            chunk = queries[i * 5000 : (i + 1) * 5000]
            started = time.perf_counter()
            for q in chunk:
                server.respond(q, False)
            runs.append((time.perf_counter() - started) / len(chunk) * 1e6)
        print(f"  <random>.{name}: {min(runs):6.1f} us per miss  ({label}; best of 3 x 5,000)")


# ---- measuring the others -------------------------------------------------------------------
class Healthz(threading.Thread):
    """GET /healthz every 10 ms on one keep-alive connection; latencies in ms."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.latencies: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                self.latencies.append((time.perf_counter() - started) * 1000)
            except OSError:
                self.failures += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.stop.wait(max(0.0, 0.01 - (time.perf_counter() - started)))
        conn.close()


class TcpProbe(threading.Thread):
    """A TCP query from OTHERS_TCP every 50 ms, each on a new connection, 2 s timeout."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        import dns.message

        self.port = port
        self.query = dns.message.make_query(f"svc-1.{ZONE}", "A").to_wire()
        self.latencies: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        framed = len(self.query).to_bytes(2, "big") + self.query
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                with socket.create_connection(
                    ("127.0.0.1", self.port), timeout=2, source_address=(OTHERS_TCP, 0)
                ) as s:
                    s.sendall(framed)
                    size = int.from_bytes(_recv_exactly(s, 2), "big")
                    _recv_exactly(s, size)
                self.latencies.append((time.perf_counter() - started) * 1000)
            except OSError:
                self.failures += 1
            self.stop.wait(max(0.0, 0.05 - (time.perf_counter() - started)))


def _recv_exactly(s: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def dnsperf(
    port: int,
    source: str,
    queries: Path,
    seconds: float,
    rate: int = 0,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    cmd = ["taskset", "-c", str(CLIENT_CORE), "dnsperf", "-s", "127.0.0.1", "-p", str(port),
           "-a", source, "-d", str(queries), "-l", str(seconds), "-c", "4", "-q", "100", "-t", "1",
           *extra]  # fmt: skip
    if rate:
        # A flood does not wait for answers: dropped queries hold their slot for the 1 s
        # timeout, so the window of outstanding queries must cover more than a second of them.
        cmd += ["-Q", str(rate), "-q", str(min(max(2 * rate, 1000), 60000))]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def qps_of(proc: subprocess.Popen[str]) -> float:
    return perf_of(proc)[0]


def perf_of(proc: subprocess.Popen[str]) -> tuple[float, int, float]:
    """A dnsperf run's answers per second, answers, and queries sent per second."""
    out, _ = proc.communicate(timeout=120)
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    sent = re.search(r"Queries sent:\s+(\d+)", out)
    seconds = re.search(r"Run time \(s\):\s+([\d.]+)", out)
    if not qps or not done or not sent or not seconds:
        raise RuntimeError(f"dnsperf failed:\n{out}")
    return float(qps.group(1)), int(done.group(1)), int(sent.group(1)) / float(seconds.group(1))


def metrics(base: str) -> str:
    """The daemon's /metrics ("" if it does not answer within 30 s: a flood may stall it)."""
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
            return r.read().decode()
    except OSError:
        return ""


def sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}{{{re.escape(want)}}} ([0-9.e+-]+)$" if labels else (
        rf"^{re.escape(name)} ([0-9.e+-]+)$"
    )  # fmt: skip
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


class Window:
    """One measurement window: /healthz, the others' cached qps and their answers per CPU-second
    of the daemon (what a core of its own would give them: little moved by other load on a
    shared machine, lowered by whatever else the daemon spends its time on), maybe a TCP probe."""

    def __init__(
        self, daemon: Daemon, others: Path, tcp_probe: bool = False, extra: tuple[str, ...] = ()
    ) -> None:
        self.daemon = daemon
        self.others = others
        self.tcp_probe = tcp_probe
        self.extra = extra
        self.qps = self.per_cpu = 0.0
        self.healthz: list[float] = []
        self.tcp: TcpProbe | None = None

    def run(self) -> Window:
        healthz = Healthz(self.daemon.http_port)
        self.tcp = TcpProbe(self.daemon.dns_port) if self.tcp_probe else None
        healthz.start()
        if self.tcp is not None:
            self.tcp.start()
        cpu = self.daemon.cpu_seconds()
        perf = dnsperf(self.daemon.dns_port, OTHERS, self.others, DURATION, extra=self.extra)
        self.qps, done, _ = perf_of(perf)
        self.per_cpu = done / max(self.daemon.cpu_seconds() - cpu, 1e-3)
        healthz.stop.set()
        healthz.join()
        if self.tcp is not None:
            self.tcp.stop.set()
            self.tcp.join()
        self.healthz = healthz.latencies
        return self

    def line(self, label: str, quiet: Window | None) -> str:
        ratio = f"{self.qps / quiet.qps:5.0%}" if quiet else "    -"
        cpu_ratio = f"{self.per_cpu / quiet.per_cpu:5.0%}" if quiet else "    -"
        p50, p99 = percentile(self.healthz, 50), percentile(self.healthz, 99)
        others = f"{self.qps:6.0f} qps {ratio}, {self.per_cpu:6.0f} per CPU-s {cpu_ratio}"
        return f"  {label:<20} healthz p50 {p50:5.1f} ms p99 {p99:6.1f} ms | others {others}"


def flood(args: list[str]) -> subprocess.Popen[str]:
    """A flood of this file's (below), as a subprocess pinned to the client core."""
    cmd = ["taskset", "-c", str(CLIENT_CORE), PY, str(HERE), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> dict[str, float]:
    """Wait for a flood (each ends by itself), then its JSON summary."""
    try:
        out, _ = proc.communicate(timeout=DURATION + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# ---- the floods (subprocesses: `abuse.py _<flood> ...`) ---------------------------------------
def _watchers(base: str, count: int, seconds: float) -> None:
    """`count` blocking reads of the listing, each asked again at the new index when answered,
    and a write every second; prints how long after each write the last read was answered."""
    import aiohttp

    async def main() -> dict[str, float]:
        connector = aiohttp.TCPConnector(limit=0, local_addr=("127.0.1.2", 0))
        timeout = aiohttp.ClientTimeout(total=90)
        async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as http:
            async with http.get("/services") as r:
                index = int(r.headers["X-Index"])
            returns: list[list[float]] = [[] for _ in range(count)]  # per watcher: answered at
            stop = time.monotonic() + seconds + 20

            async def watcher(mine: list[float]) -> None:
                at = index
                while time.monotonic() < stop:
                    try:
                        async with http.get(f"/services?index={at}&wait=60s") as r:
                            await r.read()
                            at = int(r.headers.get("X-Index", at))
                        mine.append(time.monotonic())
                    except (aiohttp.ClientError, TimeoutError):
                        await asyncio.sleep(0.1)

            tasks = [asyncio.create_task(watcher(mine)) for mine in returns]
            await asyncio.sleep(1.0)
            writes = []
            for i in range(max(1, int(seconds) - 3)):
                writes.append(time.monotonic())
                async with http.put("/service/svc-1/register", json={"ip": f"10.250.0.{i + 1}"}):
                    pass
                await asyncio.sleep(1.0)
            waited = time.monotonic()  # at most 20 s more for the last write's releases
            while time.monotonic() - waited < 20 and not all(
                mine and mine[-1] > writes[-1] for mine in returns
            ):
                await asyncio.sleep(0.2)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        delays = []
        for sent in writes:  # each watcher's first answer after the write; the slowest of them
            firsts = [min((t for t in mine if t > sent), default=float("inf")) for mine in returns]
            delays.append((max(firsts) - sent) * 1000)
        return {"release_p50_ms": statistics.median(delays), "release_max_ms": max(delays)}

    print(json.dumps(asyncio.run(main())), flush=True)


def _tcp(port: int, clients: int, seconds: float) -> None:
    """`clients` connections from 127.0.1.1-4, each sending 64 pipelined queries for `big` and
    reading nothing, then one more query a second (whole frames only) to notice being cut off;
    a connection that fails is made again. Prints how long the server let them live."""
    import dns.message

    query = dns.message.make_query(f"big.{ZONE}", "A").to_wire()
    framed = len(query).to_bytes(2, "big") + query
    refused = 0
    lifetimes: list[float] = []  # seconds from connecting until the server cut it off

    async def client(n: int, stop: float) -> None:
        nonlocal refused
        loop = asyncio.get_running_loop()
        while loop.time() < stop:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            connected = 0.0
            try:
                sock.bind((f"127.0.1.{n % TCP_ADDRESSES + 1}", 0))
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 2)
                connected = loop.time()
                await asyncio.wait_for(loop.sock_sendall(sock, framed * 64), 2)
                while loop.time() < stop:
                    await asyncio.sleep(1.0)
                    await asyncio.wait_for(loop.sock_sendall(sock, framed), 2)
            except (OSError, TimeoutError):
                if connected and loop.time() - connected > 2.5:
                    lifetimes.append(loop.time() - connected)  # cut off after stalling
                else:
                    refused += 1  # closed over a cap (noticed at its next query, 1 s later)
                await asyncio.sleep(0.2)
            finally:
                sock.close()

    async def main() -> None:
        stop = asyncio.get_running_loop().time() + seconds
        await asyncio.gather(*(client(n, stop) for n in range(clients)))

    asyncio.run(main())
    summary = {"closed_over_a_cap": refused, "cut_off_after_stalling": len(lifetimes)}
    if lifetimes:
        summary |= {"lived_p50_s": statistics.median(lifetimes), "lived_max_s": max(lifetimes)}
    print(json.dumps(summary), flush=True)


def _amplify(port: int, rate: int, seconds: float) -> None:
    """A queries for `mid` (EDNS, 4096 bytes offered) from FLOOD, `rate` a second: bytes and
    datagrams out and back."""
    import dns.message

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((FLOOD, 0))
    sock.setblocking(False)
    sent = received = answers = queries = 0
    started = time.monotonic()
    while (now := time.monotonic()) < started + seconds:
        due = int((now - started) * rate)
        while queries < due:
            q = dns.message.make_query(f"mid.{ZONE}", "A", use_edns=0, payload=4096).to_wire()
            sock.sendto(q, ("127.0.0.1", port))
            sent += len(q)
            queries += 1
        while True:
            try:
                received += len(sock.recv(65535))
                answers += 1
            except BlockingIOError:
                break
        time.sleep(0.002)
    time.sleep(0.5)
    while True:
        try:
            received += len(sock.recv(65535))
            answers += 1
        except BlockingIOError:
            break
    print(
        json.dumps(
            {"queries": queries, "answers": answers, "bytes_out": sent, "bytes_back": received}
        ),
        flush=True,
    )


# ---- the runs --------------------------------------------------------------------------------
def files(work: Path) -> tuple[Path, Path]:
    others = work / "others.txt"
    others.write_text("".join(f"svc-{i}.{ZONE} A\n" for i in range(1, 201)))
    misses = work / "misses.txt"
    misses.write_text("".join(f"{random_name()}.big.{ZONE} A\n" for _ in range(300_000)))
    return others, misses


def warm(daemon: Daemon, others: Path) -> None:
    qps_of(dnsperf(daemon.dns_port, OTHERS, others, 1))


def server_cookie(port: int) -> str:
    """The COOKIE option (client and server cookie, hex) that OTHERS gets from the daemon: what
    dnsperf sends with `-E 10:<hex>` to be a client with a valid server cookie."""
    import dns.edns
    import dns.message
    import dns.query

    client = bytes.fromhex("c0ffee00c0ffee00")
    q = dns.message.make_query(
        f"svc-1.{ZONE}", "A", use_edns=0, options=[dns.edns.CookieOption(client, b"")]
    )
    reply = dns.query.udp(q, "127.0.0.1", port=port, timeout=2, source=OTHERS)
    cookie = next(o for o in reply.options if isinstance(o, dns.edns.CookieOption))
    return (cookie.client + cookie.server).hex()


def start_flood(name: str, daemon: Daemon, misses: Path, miss_rate: float) -> subprocess.Popen[str]:
    seconds = DURATION + 2
    if name == "misses":
        return dnsperf(daemon.dns_port, FLOOD, misses, seconds, rate=int(miss_rate))
    if name == "watchers":
        return flood(["_watchers", daemon.base, str(WATCHERS), str(seconds + 2)])
    if name == "tcp":  # outlives the idle timeout: the server's cut-offs are measured
        idle = float(daemon.env.get("DNS_TCP_IDLE_SECONDS") or 10)
        return flood(["_tcp", str(daemon.dns_port), str(TCP_CLIENTS), str(seconds + idle + 3)])
    return flood(["_amplify", str(daemon.dns_port), str(AMP_RATE), str(seconds)])


def limited(before: str, after: str) -> dict[str, float]:
    """What the limits did between two scrapes, by limit and action (zeros left out)."""
    out = {}
    for m in re.finditer(
        r'^sd_dns_limited_total{action="(\w+)",limit="(\w+)"} (\S+)$', after, re.M
    ):
        action, limit, value = m.group(1), m.group(2), float(m.group(3))
        delta = value - sample(before, "sd_dns_limited_total", action=action, limit=limit)
        if delta:
            out[f"{limit}_{action}"] = delta
    return out


def run(url: str, label: str, env: dict[str, str], others: Path, misses: Path,
        miss_rate: float, floods: list[str], cookies: bool = False) -> float:  # fmt: skip
    """One daemon with `env`, its quiet and flooded windows; the full miss rate if measured."""
    daemon = Daemon(url, core=SERVER_CORE, **EVERY_RUN, **env)
    try:
        daemon.wait_ready()
        print(f"\n{label} — {daemon.settings()}")
        extra: tuple[str, ...] = ()
        if cookies:
            extra = ("-E", f"10:{server_cookie(daemon.dns_port)}")
            print("  the others send a valid server cookie with every query (dnsperf -E 10:...)")
        warm(daemon, others)
        if not miss_rate:
            miss_rate = qps_of(dnsperf(daemon.dns_port, FLOOD, misses, DURATION))
            print(f"  full miss rate (closed loop, random names under big): {miss_rate:.0f} qps")
        for name in floods:
            ratios = []
            p99s = []  # /healthz p99 of each flooded window, and of the quiet one before it
            for _ in range(ROUNDS if name == "misses" else 1):
                quiet = Window(daemon, others, tcp_probe=name == "tcp", extra=extra).run()
                before = metrics(daemon.base)
                proc = start_flood(name, daemon, misses, miss_rate)
                time.sleep(1.0)  # the flood under way
                flooded = Window(daemon, others, tcp_probe=name == "tcp", extra=extra).run()
                after = metrics(daemon.base)
                print(quiet.line("quiet", None))
                print(flooded.line(f"{name} flood", quiet))
                ratios.append((flooded.qps / quiet.qps, flooded.per_cpu / quiet.per_cpu))
                summary: dict[str, float] = limited(before, after)
                if name == "misses":  # the client core is shared: it may send less than asked
                    answered, _, sent = perf_of(proc)
                    summary |= {"flood_asked_qps": round(miss_rate, 0), "flood_sent_qps": sent}
                    summary["flood_answered_qps"] = answered
                if name == "tcp" and flooded.tcp is not None:
                    probe = flooded.tcp
                    total = len(probe.latencies) + probe.failures
                    summary["others_tcp_answered"] = len(probe.latencies) / total if total else 0
                    summary["others_tcp_p99_ms"] = percentile(probe.latencies, 99)
                    summary["daemon_tcp_connections"] = sample(after, "sd_dns_tcp_connections")
                    summary["daemon_rss_mib"] = daemon.rss_mib()
                if name != "misses":
                    summary |= finish(proc)
                    if name == "tcp":
                        summary |= limited(after, metrics(daemon.base))
                if name == "amplification" and summary.get("bytes_out"):
                    summary["amplification"] = summary["bytes_back"] / summary["bytes_out"]
                    summary["answered_share"] = summary["answers"] / max(summary["queries"], 1)
                print("    " + ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in summary.items()))  # fmt: skip
                p99s.append((percentile(flooded.healthz, 99), percentile(quiet.healthz, 99)))
            if name == "misses":
                p99 = statistics.median(p[0] for p in p99s)
                quiet_p99 = statistics.median(p[1] for p in p99s)
                share = statistics.median(r[0] for r in ratios)
                cpu_share = statistics.median(r[1] for r in ratios)
                print(f"  misses flood, median of {len(ratios)} pairs: others get {share:.0%} of "
                      f"their quiet qps, {cpu_share:.0%} per CPU-s; /healthz p99 {p99:.1f} ms "
                      f"(quiet: {quiet_p99:.1f} ms)")  # fmt: skip
                if label == "defaults":
                    checks = (p99 < 50, share >= 0.8, cpu_share >= 0.8)
                    verdicts = ["met" if ok else "NOT met" for ok in checks]
                    print(f"  target: /healthz p99 < 50 ms: {verdicts[0]}; others >= 80 % of "
                          f"quiet: {verdicts[1]} in qps, {verdicts[2]} per CPU-s")  # fmt: skip
        return miss_rate
    finally:
        daemon.stop()


def main() -> None:
    ensure_apt("dnsperf")
    pin(CLIENT_CORE)
    for source in (FLOOD, OTHERS, OTHERS_TCP):  # loopback addresses on Linux, no set-up needed
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
    miss_costs()
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="sd-abuse-") as tmp:
        started = time.perf_counter()
        load(url)
        print(f"\nloaded big ({ENDPOINTS} x {TAGS} tags), mid (60), {SMALL} small services "
              f"in {time.perf_counter() - started:.1f}s; windows of {DURATION}s; server on CPU "
              f"{SERVER_CORE}, clients on CPU {CLIENT_CORE}; load average "
              f"{' '.join(open('/proc/loadavg').read().split()[:3])}")  # fmt: skip
        others, misses = files(Path(tmp))
        off: dict[str, str] = {}  # bench/common.py's LIMITS_OFF
        rate = run(url, "limits off", off, others, misses, 0, ["misses", "tcp"])
        defaults = {name: "" for name in LIMITS_OFF}  # unset: the defaults
        every = ["misses", "watchers", "tcp", "amplification"]
        run(url, "defaults", defaults, others, misses, rate, every)
        rrl = {**defaults, "DNS_RRL_RESPONSES_PER_SECOND": str(RRL_RATE)}
        run(url, "RRL on", rrl, others, misses, rate, ["misses", "amplification"], cookies=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_watchers":
        _watchers(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_tcp":
        _tcp(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_amplify":
        _amplify(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        main()
