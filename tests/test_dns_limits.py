"""What one DNS client may cost, over real sockets: the miss budget per client network, TCP
connections per client and the write timeout, response-rate limiting and DNS cookies.

Clients send from their own loopback addresses (127.0.1.x is "the flood", 127.0.2.x "the
others"), so limits keyed by /24 tell them apart. The server is the real DnsServer over a real
Registry loaded the way sync loads it: the limits, not the database, are under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest

from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.dns import DnsServer
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, Service, Snapshot
from service_discovery.registry import Registry

ZONE = "svc.cluster.local"
FLOOD, OTHER = "127.0.1.7", "127.0.2.9"


def _services() -> dict[str, Service]:
    # 3,000 addresses: a 48 KB answer over TCP, so a few hundred fill any socket buffer
    big = tuple(Endpoint(f"10.67.{i // 250}.{i % 250 + 1}") for i in range(3000))
    services = [
        Service("1", "webapp", {}, {}, (Endpoint("10.66.0.1"),), 1),
        Service("2", "big", {}, {}, big, 2),
    ]
    return {s.key: s for s in services}


@contextlib.asynccontextmanager
async def dns_server(**settings: Any) -> AsyncIterator[DnsServer]:
    config = Config(bind_address="127.0.0.1", dns_port=0, **settings)
    registry = Registry(config)
    registry.replace_all(Snapshot(2, _services()))
    server = DnsServer(config, Catalog(config, None, registry, None, Metrics()), Metrics())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def limited(server: DnsServer, limit: str, action: str) -> float:
    server.flush_metrics()
    value = server._metrics.collector_registry.get_sample_value(
        "sd_dns_limited_total", {"limit": limit, "action": action}
    )
    return value or 0.0


class _Replies(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


@contextlib.asynccontextmanager
async def udp_from(source: str, port: int) -> AsyncIterator[Callable[..., Any]]:
    """`ask(message)` over UDP from `source`: the reply as a dnspython message, or None."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Replies, local_addr=(source, 0), remote_addr=("127.0.0.1", port)
    )

    async def ask(query: dns.message.Message, timeout: float = 1.0) -> dns.message.Message | None:
        transport.sendto(query.to_wire())
        try:
            return dns.message.from_wire(await asyncio.wait_for(proto.queue.get(), timeout))
        except TimeoutError:
            return None

    try:
        yield ask
    finally:
        transport.close()


async def tcp_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def tcp_ask(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], query: dns.message.Message
) -> dns.message.Message:
    reader, writer = stream
    wire = query.to_wire()
    writer.write(len(wire).to_bytes(2, "big") + wire)
    await writer.drain()
    size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 3), "big")
    return dns.message.from_wire(await reader.readexactly(size))


def query(name: str, rdtype: str = "A", **kwargs: Any) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)


# ---- item 1: the miss budget ------------------------------------------------------------------
async def test_miss_budget_truncates_one_network_and_spares_others_and_cached_answers() -> None:
    """Budget: 1 miss a second, 10 at once. 1. 40 random names from 127.0.1.7 over UDP: at most
    the burst (and what refills meanwhile) is answered, the rest get an empty TC answer; 2. a
    cached name is still answered to that network, again and again; 3. another /24 (127.0.2.9)
    misses as it likes; 4. the flooded network's real client, retrying over TCP, is answered
    (its own budget), and beyond that TCP budget it gets REFUSED; 5. the metric counts it."""
    async with dns_server(dns_miss_budget_per_second=1, dns_miss_budget_burst=10) as server:
        port = server.port
        async with udp_from(OTHER, port) as other:
            warm = await other(query(f"webapp.{ZONE}"))
            assert warm is not None and warm.answer

        async with udp_from(FLOOD, port) as flood:
            replies = [await flood(query(f"rnd-{i}.{ZONE}")) for i in range(40)]
            assert all(r is not None for r in replies)
            answered = [r for r in replies if r is not None and not r.flags & dns.flags.TC]
            truncated = [r for r in replies if r is not None and r.flags & dns.flags.TC]
            assert 10 <= len(answered) <= 13, len(answered)
            assert all(r.rcode() == dns.rcode.NXDOMAIN for r in answered)
            assert all(not r.answer and not r.authority for r in truncated)
            assert all(r.rcode() == dns.rcode.NOERROR for r in truncated)
            for _ in range(30):  # cached answers never touch the budget
                r = await flood(query(f"webapp.{ZONE}"))
                assert r is not None and not r.flags & dns.flags.TC
                assert [rr.to_text() for rr in r.answer[0]] == ["10.66.0.1"]

        async with udp_from(OTHER, port) as other:
            for i in range(9):  # its burst, less the one miss that warmed the cache
                r = await other(query(f"other-{i}.{ZONE}"))
                assert r is not None and not r.flags & dns.flags.TC
                assert r.rcode() == dns.rcode.NXDOMAIN

        stream = await tcp_from(FLOOD, port)
        try:
            r = await tcp_ask(stream, query(f"rnd-0.{ZONE}"))  # the TC'd name, over TCP
            assert r.rcode() == dns.rcode.NXDOMAIN and not r.flags & dns.flags.TC
            rcodes = [(await tcp_ask(stream, query(f"tcp-{i}.{ZONE}"))).rcode() for i in range(15)]
            assert dns.rcode.REFUSED in rcodes and rcodes[0] == dns.rcode.NXDOMAIN
        finally:
            stream[1].close()

        assert limited(server, "misses", "truncated") >= 40 - 13
        assert limited(server, "misses", "refused") >= 1


async def test_miss_budget_off() -> None:
    """DNS_MISS_BUDGET_PER_SECOND=0 switches the budget off: every miss is answered."""
    async with dns_server(dns_miss_budget_per_second=0, dns_miss_budget_burst=1) as server:
        async with udp_from(FLOOD, server.port) as flood:
            for i in range(30):
                r = await flood(query(f"rnd-{i}.{ZONE}"))
                assert r is not None and r.rcode() == dns.rcode.NXDOMAIN
        assert limited(server, "misses", "truncated") == 0


def test_default_budget_is_generous() -> None:
    config = Config()
    assert config.dns_miss_budget_per_second >= 1000 and config.dns_miss_budget_burst >= 2000


# ---- item 3: DNS over TCP ---------------------------------------------------------------------
def connections(server: DnsServer) -> float:
    value = server._metrics.collector_registry.get_sample_value("sd_dns_tcp_connections")
    return value or 0.0


async def test_a_client_that_never_reads_its_answers_is_disconnected() -> None:
    """1. a client with a 4 KiB receive buffer pipelines 300 queries for a 48 KB answer and
    reads nothing; 2. the answers fill every buffer on the way and the server's writes stall;
    3. within the idle timeout (0.5 s) of the stall the server resets the connection, so the
    connection count is 0 again and the client finds its connection reset."""
    async with dns_server(dns_tcp_idle_seconds=0.5) as server:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        sock.bind((FLOOD, 0))
        try:
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            wire = query(f"big.{ZONE}").to_wire()
            framed = (len(wire).to_bytes(2, "big") + wire) * 300
            await asyncio.wait_for(loop.sock_sendall(sock, framed), 5)
            await asyncio.sleep(0.2)
            assert connections(server) == 1  # holding: its answers are queued, unread
            for _ in range(60):  # 3 s: the stall began at most a moment ago
                if connections(server) == 0:
                    break
                await asyncio.sleep(0.05)
            assert connections(server) == 0
            assert limited(server, "tcp_write_timeout", "closed") == 1
            with pytest.raises(ConnectionResetError):
                while await asyncio.wait_for(loop.sock_recv(sock, 65536), 2):
                    pass
        finally:
            sock.close()


async def test_tcp_connections_per_client_address() -> None:
    """Cap 2 per address. 1. two connections from 127.0.1.7 are served; 2. a third from that
    address is closed unanswered, while 127.0.1.8 (same /24, another address) and 127.0.2.9
    are served; 3. once one of the first two closes, 127.0.1.7 may connect again."""
    async with dns_server(dns_tcp_max_connections_per_client=2) as server:
        port = server.port
        soa = query(ZONE, "SOA")
        first, second = await tcp_from(FLOOD, port), await tcp_from(FLOOD, port)
        for stream in (first, second):
            assert (await tcp_ask(stream, soa)).rcode() == dns.rcode.NOERROR
        third = await tcp_from(FLOOD, port)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
            await tcp_ask(third, soa)
        third[1].close()
        neighbour, other = await tcp_from("127.0.1.8", port), await tcp_from(OTHER, port)
        for stream in (neighbour, other):
            assert (await tcp_ask(stream, soa)).rcode() == dns.rcode.NOERROR
        assert limited(server, "tcp_per_client", "closed") == 1
        first[1].close()
        for _ in range(40):
            if connections(server) == 3:
                break
            await asyncio.sleep(0.05)
        again = await tcp_from(FLOOD, port)
        assert (await tcp_ask(again, soa)).rcode() == dns.rcode.NOERROR
        for stream in (second, neighbour, other, again):
            stream[1].close()


async def test_tcp_per_client_cap_off() -> None:
    """DNS_TCP_MAX_CONNECTIONS_PER_CLIENT=0: only the global cap applies."""
    async with dns_server(dns_tcp_max_connections_per_client=0) as server:
        streams = [await tcp_from(FLOOD, server.port) for _ in range(10)]
        for stream in streams:
            assert (await tcp_ask(stream, query(ZONE, "SOA"))).rcode() == dns.rcode.NOERROR
            stream[1].close()


@pytest.fixture(autouse=True)
def loopback_aliases() -> None:
    """127.0.1.x and 127.0.2.x are loopback addresses on Linux without configuration."""
    for source in (FLOOD, OTHER):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
