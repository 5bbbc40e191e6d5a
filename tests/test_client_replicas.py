"""A lease kept by the client library through what a registry goes through: a replica
restarting and a database outage, with two replicas (subprocesses) behind a TCP proxy in front
of PostgreSQL that the test can close; the other replica's DNS is watched all along.

Every process started here is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import pytest
from helpers import ZONE, eventually
from pgproxy import TcpProxy
from replicas import replica, stopped
from service_discovery_client import AsyncClient, Client

TOKEN = "replica-test-token"
TTL = 12  # renewed every 4 s; more than the outage plus a renewal's retry
OUTAGE = 5.0


@pytest.fixture
def lease_database(new_database: Callable[..., Any]) -> Iterator[str]:
    """A database of its own: the reaper and the mass-expiry guard count every lease in it."""
    with new_database("sd_client_lease") as url:
        yield url


@pytest.fixture
async def proxy(lease_database: str) -> AsyncIterator[TcpProxy]:
    p = TcpProxy(lease_database)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


class DnsWatch:
    """Asks a replica's DNS for `<name>.<zone> A` every 50 ms and records every answer."""

    def __init__(self, port: int, name: str) -> None:
        self.port, self.qname = port, f"{name}.{ZONE}"
        self.answers: list[tuple[str, list[str]]] = []  # (rcode or "timeout", addresses)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        for _ in range(100_000):  # bounded; stop() ends it
            q = dns.message.make_query(self.qname, "A")
            try:
                r = await dns.asyncquery.udp(q, "127.0.0.1", port=self.port, timeout=1)
                ips = sorted(rr.address for rrset in r.answer for rr in rrset)
                self.answers.append((dns.rcode.to_text(r.rcode()), ips))
            except dns.exception.Timeout:
                self.answers.append(("timeout", []))
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Holder:
    """The lease under test, sync (a thread) or async (a task), driven from this loop."""

    def __init__(self, flavour: str, addrs: list[str], name: str, ip: str) -> None:
        self.flavour, self.addrs, self.name, self.ip = flavour, addrs, name, ip
        self.sync = Client(addrs, token=TOKEN, timeout=2)
        self.aio = AsyncClient(addrs, token=TOKEN, timeout=2)
        self.lease: Any = None

    async def start(self) -> None:
        await asyncio.to_thread(self.sync.create_service, self.name)
        if self.flavour == "sync":
            self.lease = self.sync.lease(self.name, self.ip, ttl=TTL)
            await asyncio.to_thread(self.lease.start)
        else:
            self.lease = await self.aio.lease(self.name, self.ip, ttl=TTL).start()

    async def stop(self) -> None:
        if self.flavour == "sync":
            await asyncio.to_thread(self.lease.stop)
        else:
            await self.lease.stop()
        await self.aio.close()


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_lease_survives_a_replica_restart_and_a_database_outage(
    flavour: str,
    lease_database: str,
    proxy: TcpProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. replicas A and B reach PostgreSQL through a proxy; a client given [A, B] holds a
    lease (ttl 12 s); B's DNS is asked for the service every 50 ms from now on;
    2. A restarts (SIGTERM, start, ready): renewals go on, through B;
    3. the database refuses every connection for 5 s: renewals fail (503), are logged and
    retried; 4. it is back: renewals succeed again, and go on past the moment the lease would
    have lapsed had they stopped; `held` was true throughout;
    5. B's DNS had the endpoint in every answer; after exit (deregistered) it leaves."""
    caplog.set_level(logging.WARNING, logger="service_discovery_client")
    name, ip = f"lease-{uuid.uuid4().hex[:8]}", "10.77.0.1"
    env = {"SD_API_TOKENS": TOKEN, "LOGGER_LEVEL": "warning"}
    a = replica(proxy.url(lease_database), tmp_path / "a.log", **env)
    b = replica(proxy.url(lease_database), tmp_path / "b.log", **env)
    holder = Holder(flavour, [a.base, b.base], name, ip)
    watch = DnsWatch(b.dns_port, name)
    held_samples: list[bool] = []
    sampler: asyncio.Task[None] | None = None
    try:
        for r in (a, b):
            r.start()
        for r in (a, b):
            await r.wait_ready()
        # Step 1
        await holder.start()
        state = holder.lease.state
        watch.start()
        await eventually(lambda: any(ip in ips for _, ips in watch.answers), 5, "the ip in DNS")

        async def sample_held() -> None:
            for _ in range(100_000):  # bounded; cancelled at the end
                held_samples.append(holder.lease.held)
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample_held())

        # Step 2: A restarts; the renewals in between go through B.
        renewals = state.renewals
        assert await asyncio.to_thread(stopped, a) == 0
        await eventually(lambda: state.renewals > renewals, TTL, "a renewal while A is down")
        a.start()
        await a.wait_ready()
        renewals = state.renewals
        await eventually(lambda: state.renewals > renewals, TTL, "a renewal after A is back")

        # Step 3: the database goes away for OUTAGE seconds.
        failures = state.failures
        await proxy.refuse()
        await asyncio.sleep(OUTAGE)
        assert state.failures > failures, "no renewal was tried during the outage"
        assert "renewing the lease of 10.77.0.1" in caplog.text

        # Step 4: back; renewals resume and carry the lease past its old expiry.
        before_expiry = state.expires_at
        await proxy.restore()
        renewals = state.renewals
        await eventually(lambda: state.renewals > renewals, TTL, "a renewal after the outage")
        assert before_expiry is not None and state.expires_at is not None
        assert state.expires_at > before_expiry
        await eventually(lambda: time.time() > before_expiry + 1.5, TTL + 5, "old expiry passed")
        assert holder.lease.held

        # Step 5
        await watch.stop()
        assert watch.answers, "no DNS answer"
        # from the first answer that has it: B learns of the registration (taken by A) a few
        # milliseconds after A acknowledged it
        first = next(i for i, (_, ips) in enumerate(watch.answers) if ip in ips)
        missing = [
            (i, rc, ips)
            for i, (rc, ips) in enumerate(watch.answers)
            if ip not in ips and i >= first
        ]
        assert not missing, (
            f"{len(missing)} of {len(watch.answers)} answers lacked it: {missing[:5]}"
        )
        assert all(held_samples), "the lease was not held at some point"
        await holder.stop()

        async def gone() -> bool:
            q = dns.message.make_query(f"{name}.{ZONE}", "A")
            r = await dns.asyncquery.udp(q, "127.0.0.1", port=b.dns_port, timeout=1)
            return not r.answer

        deadline = time.monotonic() + 5
        while not await gone():
            assert time.monotonic() < deadline, "still in DNS after the lease ended"
            await asyncio.sleep(0.05)
    finally:
        if sampler is not None:
            sampler.cancel()
        if watch._task is not None:
            await watch.stop()
        await holder.aio.close()
        for r in (a, b):
            await asyncio.to_thread(r.stop)
