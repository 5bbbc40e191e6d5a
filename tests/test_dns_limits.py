"""What one DNS client may cost, over real sockets: the miss budget per client network, TCP
connections per client and the write timeout, response-rate limiting and DNS cookies.

Clients send from their own loopback addresses (127.0.1.x is "the flood", 127.0.2.x "the
others"), so limits keyed by /24 tell them apart. The server is the real DnsServer over a real
Registry loaded the way sync loads it: the limits, not the database, are under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from helpers import ZONE, eventually, sample

from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.dns import DnsServer
from service_discovery.dns import server as server_module
from service_discovery.dns.cookies import Cookies
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, Service, Snapshot
from service_discovery.registry import Registry

FLOOD, OTHER = "127.0.1.7", "127.0.2.9"


def _services() -> dict[str, Service]:
    # 3,000 addresses: a 48 KB answer over TCP, so a few hundred fill any socket buffer
    big = tuple(Endpoint(f"10.67.{i // 250}.{i % 250 + 1}") for i in range(3000))
    services = [
        Service("1", "webapp", {}, {}, (Endpoint("10.66.0.1"),), 1),
        Service("2", "big", {}, {}, big, 2),
        Service("3", "mid", {}, {}, tuple(Endpoint(f"10.68.0.{i + 1}") for i in range(40)), 3),
    ]
    return {s.key: s for s in services}


@contextlib.asynccontextmanager
async def dns_server(**settings: Any) -> AsyncIterator[tuple[DnsServer, Metrics]]:
    config = Config(bind_address="127.0.0.1", dns_port=0, **settings)
    registry = Registry(config)
    registry.replace_all(Snapshot(2, _services()))
    metrics = Metrics()
    server = DnsServer(config, Catalog(config, None, registry, None, metrics), metrics)
    metrics.before_render.append(server.flush_metrics)
    await server.start()
    try:
        yield server, metrics
    finally:
        await server.stop()


def limited(metrics: Metrics, limit: str, action: str) -> float:
    return sample(metrics, "sd_dns_limited_total", limit=limit, action=action)


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
    """Budget: 5 misses a second, 10 at once. 1. 40 random names from 127.0.1.7 over UDP: the
    burst and what refills meanwhile are answered; of the rest every other one gets an empty
    TC answer (DNS_SLIP 2) and the others nothing; 2. a cached name is still answered to that
    network, again and again; 3. another /24 (127.0.2.9) gets its own budget; 4. the flooded
    network's real client, retrying over TCP, is answered (a budget of its own), and beyond
    that TCP budget it gets REFUSED; 5. the metric counts it."""
    async with dns_server(dns_miss_budget_per_second=5) as (server, metrics):
        port = server.port
        async with udp_from(OTHER, port) as other:
            warm = await other(query(f"webapp.{ZONE}"))
            assert warm is not None and warm.answer

        async with udp_from(FLOOD, port) as flood:
            started = time.monotonic()
            replies = [await flood(query(f"rnd-{i}.{ZONE}"), timeout=0.15) for i in range(40)]
            refilled = 5 * (time.monotonic() - started)
            answered = [r for r in replies if r is not None and not r.flags & dns.flags.TC]
            truncated = [r for r in replies if r is not None and r.flags & dns.flags.TC]
            dropped = replies.count(None)
            assert 10 <= len(answered) <= 10 + refilled + 1, (len(answered), refilled)
            assert abs(len(truncated) - dropped) <= 1, (len(truncated), dropped)  # slip 2
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

        beyond = limited(metrics, "misses", "truncated") + limited(metrics, "misses", "dropped")
        assert beyond == 40 - len(answered)
        assert limited(metrics, "misses", "refused") >= 1


async def test_miss_budget_off() -> None:
    """DNS_MISS_BUDGET_PER_SECOND=0 switches the budget off: every miss is answered."""
    async with dns_server(dns_miss_budget_per_second=0) as (
        server,
        metrics,
    ):
        async with udp_from(FLOOD, server.port) as flood:
            for i in range(30):
                r = await flood(query(f"rnd-{i}.{ZONE}"))
                assert r is not None and r.rcode() == dns.rcode.NXDOMAIN
        assert limited(metrics, "misses", "truncated") == 0


def test_default_budget_is_generous() -> None:
    config = Config()
    assert config.dns_miss_budget_per_second >= 1000


# ---- item 3: DNS over TCP ---------------------------------------------------------------------
def connections(metrics: Metrics) -> float:
    return sample(metrics, "sd_dns_tcp_connections")


async def test_a_client_that_never_reads_its_answers_is_disconnected() -> None:
    """1. a client with a 4 KiB receive buffer pipelines 300 queries for a 48 KB answer and
    reads nothing; 2. the answers fill every buffer on the way and the server's writes stall;
    3. the server answered only the few queries whose answers fill its (bounded) buffers;
    4. within the idle timeout (0.5 s) of the stall the server resets the connection, so the
    connection count is 0 again and the client finds its connection reset."""
    async with dns_server(dns_tcp_idle_seconds=0.5) as (server, metrics):
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
            assert connections(metrics) == 1  # holding: its answers are queued, unread
            answered = sample(metrics, "sd_dns_queries_total", transport="tcp", qtype="A",
                              rcode="NOERROR")  # fmt: skip
            assert answered <= 12, answered  # 48 KB each: the buffers hold a few, not 300
            await eventually(lambda: connections(metrics) == 0, 5, "the stalled client cut off")
            assert limited(metrics, "tcp_write_timeout", "closed") == 1
            with pytest.raises(ConnectionResetError):
                while await asyncio.wait_for(loop.sock_recv(sock, 65536), 2):
                    pass
        finally:
            sock.close()


async def test_resetting_a_connection_the_client_reset_already_is_harmless() -> None:
    """The end of a race seen under a TCP flood: a write stalls, the client resets, and the
    idle timeout fires before the reset is noticed; the server then resets a connection whose
    socket is gone (uvloop's stand-in for it has no descriptor left). Timing that over real
    sockets is luck, so this builds the end state: 1. a connection with 10 MB queued for a
    client that reads nothing; 2. the client resets it; 3. `_reset` lets it go quietly."""
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket")  # as _serve_tcp does (its send buffer): uvloop keeps it
        writer.write(b"x" * 10_000_000)
        await eventually(writer.transport.is_closing, 5, "the client's reset noticed")
        await asyncio.sleep(0.1)  # and the socket closed
        try:
            server_module._reset(writer)
            outcome.set_result(None)
        except Exception as exc:  # the assertion below says which
            outcome.set_result(exc)

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = listener.sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            await asyncio.sleep(0.1)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert await asyncio.wait_for(outcome, 5) is None
    finally:
        listener.close()


async def test_tcp_connections_per_client_address() -> None:
    """Cap 2 per address. 1. two connections from 127.0.1.7 are served; 2. a third from that
    address is closed unanswered, while 127.0.1.8 (same /24, another address) and 127.0.2.9
    are served; 3. once one of the first two closes, 127.0.1.7 may connect again."""
    async with dns_server(dns_tcp_max_connections_per_client=2) as (server, metrics):
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
        assert limited(metrics, "tcp_per_client", "closed") == 1
        first[1].close()
        await eventually(lambda: connections(metrics) == 3, 5, "the closed connection counted out")
        again = await tcp_from(FLOOD, port)
        assert (await tcp_ask(again, soa)).rcode() == dns.rcode.NOERROR
        for stream in (second, neighbour, other, again):
            stream[1].close()


async def test_tcp_per_client_cap_off() -> None:
    """DNS_TCP_MAX_CONNECTIONS_PER_CLIENT=0: only the global cap applies."""
    async with dns_server(dns_tcp_max_connections_per_client=0) as (server, _metrics):
        streams = [await tcp_from(FLOOD, server.port) for _ in range(10)]
        for stream in streams:
            assert (await tcp_ask(stream, query(ZONE, "SOA"))).rcode() == dns.rcode.NOERROR
            stream[1].close()


# ---- item 4: DNS cookies and response-rate limiting --------------------------------------------
CLIENT_COOKIE = bytes.fromhex("0123456789abcdef")


def with_cookie(name: str, server_cookie: bytes = b"", rdtype: str = "A") -> dns.message.Message:
    option = dns.edns.CookieOption(CLIENT_COOKIE, server_cookie)
    return query(name, rdtype, use_edns=0, payload=1232, options=[option])


def cookie_of(reply: dns.message.Message | None) -> dns.edns.CookieOption | None:
    assert reply is not None
    found = [o for o in reply.options if isinstance(o, dns.edns.CookieOption)]
    return found[0] if found else None


async def test_cookies_are_answered_and_validated() -> None:
    """1. a client cookie alone gets the answer and a 16-byte server cookie; 2. sent back, that
    server cookie is valid and echoed unchanged; 3. from another address, or altered, it is not
    valid and a new one comes back; 4. a malformed COOKIE option is FORMERR; 5. over TCP too."""
    async with dns_server() as (server, _metrics):
        async with udp_from(FLOOD, server.port) as ask:
            first = await ask(with_cookie(f"webapp.{ZONE}"))
            got = cookie_of(first)
            assert first is not None and got is not None
            assert [rr.to_text() for rr in first.answer[0]] == ["10.66.0.1"]
            assert got.client == CLIENT_COOKIE and len(got.server) == 16
            assert got.server[0] == 1  # RFC 9018 version 1
            await asyncio.sleep(1.1)  # a new server cookie would now carry another timestamp
            again = cookie_of(await ask(with_cookie(f"webapp.{ZONE}", got.server)))
            assert again is not None and again.server == got.server
            altered = bytes([got.server[0]]) + got.server[1:-1] + bytes([got.server[-1] ^ 1])
            fresh = cookie_of(await ask(with_cookie(f"webapp.{ZONE}", altered)))
            assert fresh is not None and fresh.server != altered and len(fresh.server) == 16
            bad = query(
                f"webapp.{ZONE}", use_edns=0, options=[dns.edns.GenericOption(10, b"12345")]
            )
            reply = await ask(bad)
            assert reply is not None and reply.rcode() == dns.rcode.FORMERR
        async with udp_from(OTHER, server.port) as ask:
            elsewhere = cookie_of(await ask(with_cookie(f"webapp.{ZONE}", got.server)))
            assert elsewhere is not None and elsewhere.server != got.server
        stream = await tcp_from(FLOOD, server.port)
        try:
            over_tcp = cookie_of(await tcp_ask(stream, with_cookie(f"webapp.{ZONE}", got.server)))
            assert over_tcp is not None and over_tcp.server == got.server
        finally:
            stream[1].close()


def test_server_cookie_lifetime() -> None:
    """A server cookie (RFC 9018 layout) is echoed while under half an hour old, renewed (still
    valid) until an hour, invalid after that or when it claims to come from the future, and
    bound to the client's address and the secret."""
    now = [1_700_000_000.0]
    cookies = Cookies(bytes(16), clock=lambda: now[0])
    option, valid = cookies.answer(CLIENT_COOKIE, "10.0.0.1") or (b"", True)
    assert not valid and len(option) == 4 + 24
    sent = option[4:]

    def check(at: float, client: str = "10.0.0.1", secret: bytes = bytes(16)) -> tuple[bool, bool]:
        """(valid, echoed unchanged)"""
        now[0] = at
        answer = Cookies(secret, clock=lambda: now[0]).answer(sent, client)
        assert answer is not None
        return answer[1], answer[0][4:] == sent

    start = 1_700_000_000.0
    assert check(start + 1799) == (True, True)
    assert check(start + 1801) == (True, False)  # renewed: a new timestamp
    assert check(start + 3599) == (True, False)
    assert check(start + 3601) == (False, False)
    assert check(start - 301) == (False, False)
    assert check(start + 10, client="10.0.0.2") == (False, False)
    assert check(start + 10, secret=bytes(15) + b"\x01") == (False, False)
    assert cookies.answer(b"short", "10.0.0.1") is None
    assert cookies.answer(CLIENT_COOKIE + b"x" * 7, "10.0.0.1") is None  # 9-15 bytes
    assert cookies.answer(CLIENT_COOKIE + b"x" * 33, "10.0.0.1") is None  # over 40 bytes


async def test_cookies_off() -> None:
    async with dns_server(dns_cookies=False) as (server, _metrics):
        async with udp_from(FLOOD, server.port) as ask:
            reply = await ask(with_cookie(f"webapp.{ZONE}"))
            assert reply is not None and reply.answer and cookie_of(reply) is None


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) missing")
async def test_dig_sees_a_good_server_cookie() -> None:
    async with dns_server() as (server, _metrics):
        proc = await asyncio.create_subprocess_exec(
            "dig", f"-p{server.port}", "@127.0.0.1", "-b", FLOOD, "+cookie", f"webapp.{ZONE}",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out = (await asyncio.wait_for(proc.communicate(), 20))[0].decode()
    cookie_lines = [line for line in out.splitlines() if line.startswith("; COOKIE:")]
    assert len(cookie_lines) == 1 and cookie_lines[0].endswith("(good)"), out
    assert "10.66.0.1" in out


async def test_rrl_limits_one_network_spares_others_and_cookies() -> None:
    """RRL at 3 answers a second (6 at once), slip 2. 1. 40 queries for a cached name from
    127.0.1.7 without a cookie: the burst and what refills meanwhile answered, of the rest
    every other one an empty TC answer and the others dropped; 2. 127.0.2.9 is answered in full
    meanwhile; 3. from 127.0.1.7 again, with a valid server cookie: every answer, though its
    network is still over the rate."""
    settings = {"dns_rrl_responses_per_second": 3, "dns_slip": 2}
    async with dns_server(**settings) as (server, metrics):
        async with udp_from(FLOOD, server.port) as ask:
            started = time.monotonic()
            replies = [await ask(query(f"webapp.{ZONE}"), timeout=0.15) for _ in range(40)]
            refilled = 3 * (time.monotonic() - started)
            full = [r for r in replies if r is not None and not r.flags & dns.flags.TC]
            truncated = [r for r in replies if r is not None and r.flags & dns.flags.TC]
            dropped = replies.count(None)
            assert 6 <= len(full) <= 6 + refilled + 1, (len(full), refilled)
            assert all(not r.answer for r in truncated)
            assert abs(len(truncated) - dropped) <= 1, (len(truncated), dropped)
        async with udp_from(OTHER, server.port) as ask:
            for _ in range(5):
                reply = await ask(query(f"webapp.{ZONE}"))
                assert reply is not None and reply.answer
        async with udp_from(FLOOD, server.port) as ask:
            cookie = None
            for _ in range(6):  # the answers that get through carry a server cookie
                cookie = cookie_of(
                    await ask(with_cookie(f"webapp.{ZONE}"), timeout=0.15) or query("x")
                )
                if cookie is not None:
                    break
            assert cookie is not None
            for _ in range(20):
                reply = await ask(with_cookie(f"webapp.{ZONE}", cookie.server))
                assert reply is not None and reply.answer and not reply.flags & dns.flags.TC
        assert limited(metrics, "rrl", "dropped") >= dropped
        assert limited(metrics, "rrl", "truncated") >= len(truncated)


async def test_rrl_is_off_by_default() -> None:
    assert Config().dns_rrl_responses_per_second == 0
    async with dns_server() as (server, _metrics):
        async with udp_from(FLOOD, server.port) as ask:
            for _ in range(300):
                reply = await ask(query(f"webapp.{ZONE}"))
                assert reply is not None and reply.answer


async def test_without_a_cookie_udp_answers_are_small_while_rrl_is_on() -> None:
    """A 40-address answer (about 700 bytes) to an EDNS query offering 1232 bytes: with RRL on,
    TC without a valid server cookie (512 bytes at most), in full with one; with RRL off, in
    full either way."""
    name = f"mid.{ZONE}"
    async with dns_server(dns_rrl_responses_per_second=1000) as (server, _metrics):
        async with udp_from(FLOOD, server.port) as ask:
            plain = await ask(query(name, use_edns=0, payload=1232))
            assert plain is not None and plain.flags & dns.flags.TC and not plain.answer
            first = await ask(with_cookie(name))
            assert first is not None and first.flags & dns.flags.TC  # not valid yet
            cookie = cookie_of(first)
            assert cookie is not None
            proven = await ask(with_cookie(name, cookie.server))
            assert proven is not None and not proven.flags & dns.flags.TC
            assert len(proven.answer[0]) == 40
    async with dns_server() as (server, _metrics):
        async with udp_from(FLOOD, server.port) as ask:
            plain = await ask(query(name, use_edns=0, payload=1232))
            assert plain is not None and not plain.flags & dns.flags.TC


@pytest.fixture(autouse=True)
def loopback_aliases() -> None:
    """127.0.1.x and 127.0.2.x are loopback addresses on Linux without configuration."""
    for source in (FLOOD, OTHER):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
