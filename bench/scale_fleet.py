"""The scale bench's many-replica phases: fan-out of writes to every replica's DNS, the
database's CPU per write, a replica restarting under load, and a rolling deployment (churn).

Addresses: the bulk load gives endpoint n (0-based over the registry) 10.0.0.0 + n; a churned
service gets 10.128.0.0 + n for the same n; fan-out writes use 10.240.0.0 + i. So a registry
of up to 2^23 endpoints never reuses an address, and an answer's addresses tell which phase
wrote them. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg2
from common import Daemon
from scale_dns import Answer, Prober, failed

CHURN_BASE = int(ipaddress.IPv4Address("10.128.0.0"))
FANOUT_BASE = int(ipaddress.IPv4Address("10.240.0.0"))
STALE_LIMIT = 1.0  # seconds: no answer may list an endpoint deregistered longer ago


def address(base: int, n: int) -> str:
    return str(ipaddress.IPv4Address(base + n))


# ---- the database's CPU ------------------------------------------------------------------------
def backend_pids(url: str) -> set[int]:
    """The PostgreSQL client backends connected to the bench's database (this query's own
    aside): on a shared server, other databases' backends are other people's work, and an
    autovacuum worker's is the server's housekeeping."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        pids = {row[0] for row in cur.fetchall()}
    conn.close()
    return pids


def cpu_of(pids: set[int]) -> dict[int, float]:
    """utime + stime of each process still alive, in seconds."""
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


# ---- fan-out ---------------------------------------------------------------------------------
async def fan_out(
    replicas: list[Daemon], services: int, writes: int, limit: float = 10.0
) -> tuple[list[float], int]:
    """Milliseconds from sending each write (a registration through replicas[0]) until every
    replica's DNS answers it, polling all of them over UDP; and how many writes were not
    visible everywhere within `limit` seconds (left out of the delays)."""
    probers = [await Prober.open(d.dns_port) for d in replicas]
    delays: list[float] = []
    missed = 0
    try:
        async with aiohttp.ClientSession(base_url=replicas[0].base) as http:
            for i in range(writes):
                name, ip = f"svc-{random.randint(1, services)}", address(FANOUT_BASE, i)
                started = time.monotonic()
                async with http.put(f"/service/{name}/register", json={"ip": ip}) as r:
                    assert r.status == 200, await r.text()
                waiting = list(probers)
                last = started
                while waiting and time.monotonic() - started < limit:
                    answers = await asyncio.gather(*(p.ask(name) for p in waiting))
                    seen = [ip in a.addresses for a in answers]
                    last = max(
                        [a.received for a, s in zip(answers, seen, strict=True) if s], default=last
                    )
                    waiting = [p for p, s in zip(waiting, seen, strict=True) if not s]
                    if waiting:  # a short pause: back-to-back polls would take a core
                        await asyncio.sleep(0.001)
                if waiting:
                    missed += 1
                else:
                    delays.append((last - started) * 1000)
    finally:
        for p in probers:
            p.close()
    return delays, missed


# ---- serving while one replica reloads -------------------------------------------------------
@dataclass
class Tally:
    sent: int = 0
    failed: int = 0  # of which `timeouts` had no answer in 2 s, the others an error rcode
    timeouts: int = 0
    latencies: list[float] = field(default_factory=list)


class LoopLag:
    """The longest this process's event loop was late waking a 50 ms sleep: when it is large,
    the bench itself was starved of CPU and its latencies are partly its own."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            self.worst = max(self.worst, time.monotonic() - t - 0.05)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def query_while(
    probers: list[Prober],
    names: Callable[[], str],
    stop: asyncio.Event,
    qps: float,
    limit: float,
    sink: Callable[[int, str, Answer], None] | None = None,
) -> list[Tally]:
    """Query the probers' servers round-robin at about `qps` in all until `stop` is set (or
    `limit` seconds pass); one tally per server. `sink` sees every answer."""
    tallies = [Tally() for _ in probers]
    workers = 64  # enough that the rate holds while answers are slow
    interval = workers / qps
    deadline = time.monotonic() + limit

    async def worker(k: int) -> None:
        due = time.monotonic() + k * interval / workers
        turn = k
        while not stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            due += interval
            turn += 1
            which = turn % len(probers)
            name = names()
            answer = await probers[which].ask(name)
            tally = tallies[which]
            tally.sent += 1
            tally.failed += failed(answer)
            tally.timeouts += answer.rcode == -1
            tally.latencies.append((answer.received - answer.sent) * 1000)
            if sink is not None:
                sink(which, name, answer)

    await asyncio.gather(*(worker(k) for k in range(workers)))
    return tallies


async def restart_one(
    replicas: list[Daemon],
    index: int,
    respawn: Callable[[], Daemon],
    services: int,
    qps: float,
    limit: float,
) -> tuple[Daemon, float, list[Tally], float]:
    """Stop replicas[index], start a new one (respawn) and time spawn to /ready 200, while the
    others are queried; the new daemon, its reload seconds, the others' tallies, and the
    bench's worst event loop lag (seconds)."""
    others = [d for k, d in enumerate(replicas) if k != index]
    probers = [await Prober.open(d.dns_port) for d in others]
    stop = asyncio.Event()
    lag = LoopLag()
    try:
        with lag:
            querying = asyncio.create_task(
                query_while(
                    probers, lambda: f"svc-{random.randint(1, services)}", stop, qps, limit + 30
                )
            )
            await asyncio.sleep(0.5)
            await asyncio.to_thread(replicas[index].stop)
            fresh = respawn()
            try:
                ready = await asyncio.to_thread(fresh.wait_ready, limit)
            finally:
                await asyncio.sleep(0.5)
                stop.set()
                tallies = await querying
    finally:
        for p in probers:
            p.close()
    return fresh, ready, tallies, lag.worst


# ---- churn: a rolling deployment ----------------------------------------------------------------
@dataclass
class Churn:
    planned: int = 0
    calls: int = 0  # done: the schedule stops at 3 x the planned time + 60 s
    seconds: float = 0.0  # first call sent to last acknowledged
    behind: float = 0.0  # the most a call started after its turn in the schedule
    removed: int = 0
    call_ms: list[float] = field(default_factory=list)
    tallies: list[Tally] = field(default_factory=list)
    stale: int = 0  # answers that listed an endpoint deregistered > STALE_LIMIT s before
    worst: float | None = None  # the longest such lag seen, seconds (None: never listed after)
    loop_lag: float = 0.0  # the bench's worst event loop lag, seconds (see LoopLag)
    listed_after_ack: int = 0
    stale_by_replica: list[int] = field(
        default_factory=list
    )  # answers listing an endpoint after its removal was acknowledged


async def churn(
    replicas: list[Daemon],
    services: int,
    per_service: int,
    fraction: float,
    seconds: float,
    qps: float,
) -> Churn:
    """Replace the endpoints of `fraction` of the services, spread evenly over `seconds`, with
    one `PUT /service/{name}/endpoints {"replace": true}` each through the replicas in turn,
    while every replica is queried over DNS; then compare every answer's addresses with the
    time each removed address's deregistration was acknowledged."""
    chosen = random.sample(range(1, services + 1), max(1, round(services * fraction)))
    acked: dict[str, float] = {}  # address -> when its removal was acknowledged
    recent: list[int] = []  # services in the order their replacement was acknowledged
    result = Churn(planned=len(chosen))
    seen: list[tuple[int, float, frozenset[str]]] = []  # (replica, sent, addresses)
    probers = [await Prober.open(d.dns_port) for d in replicas]
    sessions = [aiohttp.ClientSession(base_url=d.base) for d in replicas]
    schedule = iter(enumerate(chosen))
    stop = asyncio.Event()
    spacing = seconds / len(chosen)
    started = time.monotonic()
    deadline = started + seconds * 3 + 60

    def name() -> str:
        # Half the queries ask for a service replaced within the last second or so: the ones
        # a stale copy would answer wrongly.
        if recent and random.random() < 0.5:
            return f"svc-{recent[-random.randint(1, min(len(recent), 50))]}"
        return f"svc-{random.choice(chosen)}"

    def sink(which: int, _name: str, answer: Answer) -> None:
        if answer.addresses:
            seen.append((which, answer.sent, answer.addresses))

    async def writer() -> None:
        for k, v in schedule:
            due = started + k * spacing
            now = time.monotonic()
            if now > deadline:
                return
            result.behind = max(result.behind, now - due)
            await asyncio.sleep(max(0.0, due - now))
            first = (v - 1) * per_service
            body = {
                "endpoints": [{"ip": address(CHURN_BASE, first + j)} for j in range(per_service)],
                "replace": True,
            }
            sent = time.monotonic()
            async with sessions[k % len(sessions)].put(
                f"/service/svc-{v}/endpoints", json=body
            ) as r:
                assert r.status == 200, await r.text()
                removed = (await r.json())["removed"]
            now = time.monotonic()
            result.call_ms.append((now - sent) * 1000)
            result.calls += 1
            result.removed += len(removed)
            for ip in removed:
                acked[ip] = now
            recent.append(v)

    try:
        querying = asyncio.create_task(
            query_while(probers, name, stop, qps, seconds * 3 + 60, sink)
        )
        lag = LoopLag()
        try:
            with lag:
                # calls in flight at once: a replace call takes a few hundred ms when busy
                writers = asyncio.gather(*(writer() for _ in range(64)))
                await asyncio.wait_for(writers, seconds * 3 + 90)
        finally:
            result.seconds = time.monotonic() - started
            result.loop_lag = lag.worst
            await asyncio.sleep(STALE_LIMIT + 0.5)  # answers after the last removal count too
            stop.set()
            result.tallies = await querying
    finally:
        for s in sessions:
            await s.close()
        for p in probers:
            p.close()
    result.stale_by_replica = [0] * len(replicas)
    for which, sent, addresses in seen:
        lags = [sent - acked[ip] for ip in addresses if ip in acked and sent > acked[ip]]
        if lags:
            lag = max(lags)
            result.listed_after_ack += 1
            result.worst = lag if result.worst is None else max(result.worst, lag)
            result.stale += lag > STALE_LIMIT
            result.stale_by_replica[which] += lag > STALE_LIMIT
    return result
