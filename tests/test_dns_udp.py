"""The UDP listener, on both of its paths: recvmmsg/sendmmsg in batches (Linux) and the portable
recvfrom/sendto per datagram (forced here by clearing `udp.MMSG`).

Every test runs on both paths against a real DnsServer over a real Registry (no database: the
listener, not the registry, is under test), with real sockets on loopback. Batches are made by
queuing datagrams from many sockets before the server's loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from helpers import ZONE, sample

from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.dns import DnsServer, udp
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, Service, Snapshot
from service_discovery.registry import Registry

pytestmark = pytest.mark.asyncio

PATHS = ["batched", "portable"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "batched" and udp.MMSG is None:
        pytest.skip("no recvmmsg/sendmmsg here (not Linux)")
    saved = udp.MMSG
    if request.param == "portable":
        udp.MMSG = None  # the listener reads this when it is made
    try:
        yield request.param
    finally:
        udp.MMSG = saved


@contextlib.asynccontextmanager
async def dns_server(**settings: Any) -> AsyncIterator[tuple[DnsServer, Metrics, Registry]]:
    settings = {"bind_address": "127.0.0.1", "dns_port": 0, **settings}
    config = Config(**settings)
    registry = Registry(config)
    services = [
        Service(str(i), f"web{i}", {}, {}, (Endpoint(f"10.71.{i}.1"), Endpoint(f"10.71.{i}.2")), i)
        for i in range(1, 40)
    ]
    registry.replace_all(Snapshot(2, {s.key: s for s in services}))
    metrics = Metrics()
    server = DnsServer(config, Catalog(config, None, registry, None, metrics), metrics)
    metrics.before_render.append(server.flush_metrics)
    await server.start()
    try:
        yield server, metrics, registry
    finally:
        await server.stop()


def sockets(
    count: int, family: int = socket.AF_INET, host: str = "127.0.0.1"
) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, 0))
        s.setblocking(False)
        out.append(s)
    return out


async def reply(sock: socket.socket, timeout: float = 2.0) -> bytes | None:
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
    except TimeoutError:
        return None


async def test_a_batch_is_answered_each_to_its_sender(path: str) -> None:
    """1. 39 sockets each send a query for a different name, and every fifth socket before
    that a datagram that gets no answer (a response), all before the server reads any; 2.
    each socket gets exactly its own answer (its id, its name, its two addresses, rotated as
    usual), the silent datagrams nothing; 3. again, now from the answer cache."""
    async with dns_server() as (server, _, _):
        port = server.port
        clients = sockets(39)
        try:
            for round_ in range(2):
                queries = []
                for i, sock in enumerate(clients, start=1):
                    q = dns.message.make_query(f"web{i}.{ZONE}", "A")
                    q.id = 1000 * round_ + i
                    if i % 5 == 0:
                        junk = dns.message.make_response(q).to_wire()  # QR set: never answered
                        sock.sendto(junk, ("127.0.0.1", port))
                    sock.sendto(q.to_wire(), ("127.0.0.1", port))
                    queries.append(q)
                for i, (sock, q) in enumerate(zip(clients, queries, strict=True), start=1):
                    data = await reply(sock)
                    assert data is not None, f"no answer for web{i} ({path}, round {round_})"
                    r = dns.message.from_wire(data)
                    assert r.id == q.id and r.question == q.question
                    assert r.rcode() == dns.rcode.NOERROR
                    got = sorted(rd.address for rd in r.answer[0])
                    assert got == [f"10.71.{i}.1", f"10.71.{i}.2"]
                for sock in clients:
                    assert await reply(sock, timeout=0.05) is None  # nothing more, no echo
        finally:
            for sock in clients:
                sock.close()


async def test_answers_rotate_and_malformed_datagrams_keep_their_answers(path: str) -> None:
    """1. The same query three times in one batch: the first two answers list the addresses
    in different orders; 2. a datagram of 12 bytes with QDCOUNT 2 gets FORMERR; 3. one of
    9,000 bytes (a query, then zeros) its answer; 4. a 3-byte datagram nothing."""
    async with dns_server() as (server, _, _):
        (sock,) = sockets(1)
        try:
            q = dns.message.make_query(f"web3.{ZONE}", "A")
            for _ in range(3):
                sock.sendto(q.to_wire(), ("127.0.0.1", server.port))
            orders = []
            for _ in range(3):
                data = await reply(sock)
                assert data is not None
                orders.append([rd.address for rd in dns.message.from_wire(data).answer[0]])
            assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])

            two = b"\x00\x07\x01\x00\x00\x02" + b"\x00" * 6
            sock.sendto(two, ("127.0.0.1", server.port))
            data = await reply(sock)
            assert data is not None and data[:2] == two[:2]
            assert data[3] & 0xF == dns.rcode.FORMERR
            # bytes after the question, as before this listener, are not read: read whole, the
            # datagram is answered as its question asks
            sock.sendto(q.to_wire() + b"\x00" * 9000, ("127.0.0.1", server.port))
            data = await reply(sock)
            assert data is not None
            assert len(dns.message.from_wire(data).answer[0]) == 2
            sock.sendto(b"\x00\x01\x02", ("127.0.0.1", server.port))
            assert await reply(sock, timeout=0.2) is None
        finally:
            sock.close()


async def test_the_client_address_reaches_the_limits(path: str) -> None:
    """Miss budget of 1 a second (burst 2): 1. 12 misses from 127.0.1.7 in one batch: at most
    two answered in full, the rest truncated or dropped, as counted; 2. a miss from 127.0.2.9,
    another /24, in the same batch is answered: the budget is per sender."""
    async with dns_server(dns_miss_budget_per_second=1, dns_slip=2) as (server, metrics, _):
        flood = sockets(1, host="127.0.1.7")[0]
        other = sockets(1, host="127.0.2.9")[0]
        try:
            for i in range(12):
                q = dns.message.make_query(f"nope{i}.{ZONE}", "A")
                flood.sendto(q.to_wire(), ("127.0.0.1", server.port))
            other.sendto(
                dns.message.make_query(f"other.{ZONE}", "A").to_wire(), ("127.0.0.1", server.port)
            )
            answer = await reply(other)
            assert answer is not None
            assert dns.message.from_wire(answer).rcode() == dns.rcode.NXDOMAIN
            full = truncated = 0
            while (data := await reply(flood, timeout=0.3)) is not None:
                if dns.message.from_wire(data).flags & dns.flags.TC:
                    truncated += 1
                else:
                    full += 1
            assert full <= 2 and truncated >= 1
            dropped = sample(metrics, "sd_dns_limited_total", limit="misses", action="dropped")
            assert full + truncated + dropped == 12
        finally:
            flood.close()
            other.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_listener(path: str) -> None:
    """Bound to ::1: answers reach IPv6 senders, in a batch of several."""
    async with dns_server(bind_address="::1") as (server, _, _):
        clients = sockets(3, socket.AF_INET6, "::1")
        try:
            for i, sock in enumerate(clients, start=1):
                sock.sendto(
                    dns.message.make_query(f"web{i}.{ZONE}", "A").to_wire(), ("::1", server.port)
                )
            for i, sock in enumerate(clients, start=1):
                data = await reply(sock)
                assert data is not None
                got = sorted(rd.address for rd in dns.message.from_wire(data).answer[0])
                assert got == [f"10.71.{i}.1", f"10.71.{i}.2"]
        finally:
            for sock in clients:
                sock.close()


async def test_stop_closes_the_socket(path: str) -> None:
    """After stop, the port is free again and nothing answers there."""
    async with dns_server() as (server, _, _):
        port = server.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # would fail while the listener held it


async def test_a_datagram_seen_before_gets_the_answer_of_now(path: str) -> None:
    """1. The same datagram (but its id) three times: the same addresses, rotated; 2. the
    service changes (a third address, as sync applies a write); 3. the same datagram again
    lists the new address, and counts go on in the metrics."""
    async with dns_server() as (server, metrics, registry):
        (sock,) = sockets(1)
        try:
            q = dns.message.make_query(f"web5.{ZONE}", "A")

            async def addresses() -> list[str]:
                q.id = (q.id + 1) % 65536
                sock.sendto(q.to_wire(), ("127.0.0.1", server.port))
                data = await reply(sock)
                assert data is not None and data[:2] == q.id.to_bytes(2, "big")
                return sorted(rd.address for rd in dns.message.from_wire(data).answer[0])

            for _ in range(3):
                assert await addresses() == ["10.71.5.1", "10.71.5.2"]
            old = registry.get("web5")
            assert old is not None
            more = (*old.endpoints, Endpoint("10.71.5.3"))
            new = dataclasses.replace(old, endpoints=more, version=old.version + 1)
            registry.apply(new.version, "web5", new)
            assert await addresses() == ["10.71.5.1", "10.71.5.2", "10.71.5.3"]
            hits = sample(
                metrics, "sd_dns_queries_total", transport="udp", qtype="A", rcode="NOERROR"
            )
            assert hits == 4
        finally:
            sock.close()
