"""Hostile input: random and mutated packets never crash the DNS server, never get an answer
larger than the query allows, and every answer is a well-formed DNS message.

The server here is the real DnsServer over a real Registry loaded the way sync loads it
(no database needed: the packets, not the data, are under test). `-m slow` runs far more cases.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Iterator

import dns.edns
import dns.message
import dns.rcode
import pytest
from helpers import sample
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.dns import DnsServer
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, NamedPort, Service, Snapshot
from service_discovery.registry import Registry

ZONE = "svc.cluster.local"
CONFIG = Config(bind_address="127.0.0.1", dns_port=0, dns_cache_size=500)
QUICK = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=15000, deadline=None, suppress_health_check=list(HealthCheck))


def _services() -> dict[str, Service]:
    many = tuple(Endpoint(f"10.66.{i // 250}.{i % 250 + 1}", ("bulk",)) for i in range(200))
    services = [
        Service("1", "webapp", {}, {"http": NamedPort("http", "tcp", 8000)},
                (Endpoint("127.0.0.1", ("canary",)), Endpoint("fd00::1")), 1),
        Service("2", "big", {}, {"dns": NamedPort("dns", "udp", 53)}, many, 2),
        Service("3", "empty", {}, {}, (), 3),
    ]  # fmt: skip
    return {s.key: s for s in services}


@pytest.fixture(scope="module")
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture(scope="module")
def server(metrics: Metrics) -> Iterator[DnsServer]:
    registry = Registry(CONFIG)
    registry.replace_all(Snapshot(3, _services()))
    yield DnsServer(CONFIG, reads(registry), metrics)


def reads(registry: Registry) -> Catalog:
    """The catalog's reads of `registry`, as DNS reads it (no store or leases needed)."""
    return Catalog(CONFIG, None, registry, None, Metrics())


def _limit(query: bytes, tcp: bool) -> int:
    """The most the query allows: 65535 over TCP; over UDP 512, or with an OPT record at most
    DNS_MAX_UDP_SIZE (the exact EDNS size is checked in test_dns.py)."""
    if tcp:
        return 65535
    has_additional = len(query) >= 12 and (query[10] or query[11])
    return CONFIG.dns_max_udp_size if has_additional else 512


def check(server: DnsServer, query: bytes, tcp: bool = False) -> None:
    reply = server.respond(query, tcp)
    if reply is None:
        assert len(query) < 12 or query[2] & 0x80  # only headerless packets and responses
        return
    assert len(reply) <= _limit(query, tcp)
    assert reply[:2] == query[:2] and reply[2] & 0x80  # same id, QR set
    assert not reply[3] & 0x80  # RA never set
    msg = dns.message.from_wire(reply)  # well-formed, whatever came in
    assert msg.rcode() != dns.rcode.SERVFAIL  # SERVFAIL here would mean an internal error


def internal_errors(metrics: Metrics) -> float:
    return sample(metrics, "sd_internal_errors_total", frontend="dns")


NAMES = [
    f"webapp.{ZONE}", f"big.{ZONE}", f"_http._tcp.webapp.{ZONE}", f"_dns._udp.big.{ZONE}",
    f"canary.webapp.{ZONE}", f"bulk.big.{ZONE}", f"empty.{ZONE}", ZONE, f"ns.{ZONE}",
    f"nothing.{ZONE}", "example.com", "1.0.0.127.in-addr.arpa", "1.0.66.10.in-addr.arpa",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", ".",
]  # fmt: skip
TYPES = ["A", "AAAA", "SRV", "SOA", "NS", "PTR", "ANY", "TXT", "AXFR", "IXFR", "MX", "TYPE999"]


@st.composite
def valid_queries(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(NAMES))
    name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    edns = draw(st.sampled_from([None, 0, 1]))
    payload = draw(st.integers(0, 65535))
    # a COOKIE option (RFC 7873): a client cookie, maybe a server cookie of any allowed size
    cookie = draw(st.sampled_from([None, 0, 8, 16, 32]))
    options = []
    if edns is not None and cookie is not None:
        server = draw(st.binary(min_size=cookie, max_size=cookie))
        options.append(dns.edns.CookieOption(draw(st.binary(min_size=8, max_size=8)), server))
    q = dns.message.make_query(
        name,
        draw(st.sampled_from(TYPES)),
        use_edns=False if edns is None else edns,
        payload=payload,
        options=options,
    )
    q.id = draw(st.integers(0, 65535))
    return q.to_wire()


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_queries()))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "count", "flags"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=40))
        elif op == "count" and len(data) >= 12:
            struct.pack_into(
                "!H", data, draw(st.sampled_from([4, 6, 8, 10])), draw(st.integers(0, 65535))
            )
        elif op == "flags" and len(data) >= 4:
            struct.pack_into("!H", data, 2, draw(st.integers(0, 65535)))
    return bytes(data)


@st.composite
def structured_junk(draw: st.DrawFn) -> bytes:
    """A header and a question whose labels have any length byte (0-255) followed by that many
    bytes, then maybe an OPT-like record: reaches the name parser's edge cases."""
    header = struct.pack(
        "!HHHHHH", draw(st.integers(0, 65535)), draw(st.sampled_from([0, 0x0100, 0x0120])),
        1, 0, 0, draw(st.sampled_from([0, 1, 2])),
    )  # fmt: skip
    name = b""
    for _ in range(draw(st.integers(0, 8))):
        length = draw(st.one_of(st.integers(0, 70), st.integers(0, 255)))
        name += bytes([length]) + draw(st.binary(min_size=length, max_size=length))
    tail = struct.pack("!HH", draw(st.integers(0, 65535)), draw(st.sampled_from([1, 3, 255])))
    opt = b""
    if draw(st.booleans()):
        opt = b"\x00" + struct.pack(
            "!HHIH", 41, draw(st.integers(0, 65535)), draw(st.integers(0, 2**32 - 1)), 0
        )
    return header + name + b"\x00" + tail + opt


@given(query=structured_junk(), tcp=st.booleans())
@QUICK
def test_structured_junk(server: DnsServer, query: bytes, tcp: bool) -> None:
    check(server, query, tcp)


@given(query=st.binary(max_size=700), tcp=st.booleans())
@QUICK
def test_random_packets(server: DnsServer, query: bytes, tcp: bool) -> None:
    check(server, query, tcp)


@given(query=mutated_queries(), tcp=st.booleans())
@QUICK
def test_mutated_queries(server: DnsServer, query: bytes, tcp: bool) -> None:
    check(server, query, tcp)


@given(query=valid_queries(), tcp=st.booleans())
@QUICK
def test_valid_queries_are_answered_within_their_limit(
    server: DnsServer, query: bytes, tcp: bool
) -> None:
    reply = server.respond(query, tcp)
    assert reply is not None
    q = dns.message.from_wire(query)
    limit = 65535 if tcp else (512 if q.edns < 0 else max(512, min(q.payload, 1232)))
    assert len(reply) <= limit
    r = dns.message.from_wire(reply)
    assert r.id == q.id and r.question[0].name.to_text() == q.question[0].name.to_text()
    assert (r.edns >= 0) == (q.edns >= 0)


LIMITED = Config(
    bind_address="127.0.0.1", dns_port=0, dns_cache_size=500, dns_rrl_responses_per_second=10,
    dns_miss_budget_per_second=10,
)  # fmt: skip


@pytest.fixture(scope="module")
def limited_metrics() -> Metrics:
    return Metrics()


@pytest.fixture(scope="module")
def limited_server(limited_metrics: Metrics) -> Iterator[DnsServer]:
    registry = Registry(LIMITED)
    registry.replace_all(Snapshot(3, _services()))
    yield DnsServer(LIMITED, Catalog(LIMITED, None, registry, None, Metrics()), limited_metrics)


@given(
    query=st.one_of(valid_queries(), mutated_queries(), structured_junk()),
    client=st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.9.1", "fd00::1", "fd00:0:0:1::1"]),
)
@QUICK
def test_limited_paths_survive_junk(
    limited_server: DnsServer, limited_metrics: Metrics, query: bytes, client: str
) -> None:
    """With RRL and the miss budget tight, queries over UDP from a few networks: a reply, when
    there is one, is well-formed and within the query's limit (limits only drop or shrink)."""
    reply = limited_server._handler.respond_udp(query, False, client)
    if reply is not None:
        assert len(reply) <= _limit(query, False)
        assert reply[:2] == query[:2] and reply[2] & 0x80
        assert dns.message.from_wire(reply).rcode() != dns.rcode.SERVFAIL
    assert internal_errors(limited_metrics) == 0


def test_no_internal_errors_and_still_answering(server: DnsServer, metrics: Metrics) -> None:
    assert internal_errors(metrics) == 0
    reply = server.respond(dns.message.make_query(f"webapp.{ZONE}", "A").to_wire(), False)
    assert reply is not None
    assert [rr.to_text() for rr in dns.message.from_wire(reply).answer[0]] == ["127.0.0.1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy",
    [st.binary(max_size=1500), mutated_queries(), structured_junk()],
    ids=["random", "mutated", "structured"],
)
def test_long_fuzz(server: DnsServer, metrics: Metrics, strategy: st.SearchStrategy[bytes]) -> None:
    @given(query=strategy, tcp=st.booleans())
    @LONG
    def run(query: bytes, tcp: bool) -> None:
        check(server, query, tcp)

    run()
    assert internal_errors(metrics) == 0


# ---- over real sockets ----------------------------------------------------------------------
def _junk(rng: random.Random, seeds: list[bytes]) -> bytes:
    if rng.random() < 0.3:
        return rng.randbytes(rng.randrange(0, 600))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randrange(1, 5)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            del data[rng.randrange(len(data) + 1) :]
    return bytes(data)


async def test_sockets_survive_junk_and_answer_the_next_query() -> None:
    """1. 3,000 junk datagrams, 2. junk over TCP connections, 3. a valid query still answered
    over both, 4. no reply was larger than its query allowed and no internal error."""
    await _socket_fuzz(3000)


@pytest.mark.slow
async def test_hundred_thousand_mutated_packets() -> None:
    """The long run: 100,000 mutated or random datagrams, then the same checks."""
    await _socket_fuzz(100_000)


async def _socket_fuzz(datagrams: int) -> None:
    registry = Registry(CONFIG)
    registry.replace_all(Snapshot(3, _services()))
    metrics = Metrics()
    server = DnsServer(CONFIG, reads(registry), metrics)
    await server.start()
    loop = asyncio.get_running_loop()
    rng = random.Random(20240611)
    seeds = [
        dns.message.make_query(n, t, use_edns=e, payload=4096).to_wire()
        for n in NAMES for t in ("A", "SRV", "AAAA") for e in (False, 0)
    ]  # fmt: skip
    replies: list[bytes] = []

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            replies.append(data)

    transport, _ = await loop.create_datagram_endpoint(
        Client, remote_addr=("127.0.0.1", server.port)
    )
    try:
        for i in range(datagrams):
            transport.sendto(_junk(rng, seeds))
            if i % 100 == 0:
                await asyncio.sleep(0.01)  # let the server keep up; we test input, not load
        await asyncio.sleep(0.3)
        assert replies, "the server answered none of the well-formed packets"
        for reply in replies:
            assert len(reply) <= CONFIG.dns_max_udp_size
            dns.message.from_wire(reply)

        for _ in range(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for _ in range(rng.randrange(1, 4)):
                packet = _junk(rng, seeds)
                writer.write(len(packet).to_bytes(2, "big") + packet)
            if rng.random() < 0.5:
                writer.write(rng.randbytes(rng.randrange(1, 50)))  # a broken length prefix
            await writer.drain()
            writer.close()

        good = dns.message.make_query(f"webapp.{ZONE}", "A")
        transport.sendto(good.to_wire())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        payload = good.to_wire()
        writer.write(len(payload).to_bytes(2, "big") + payload)
        size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 3), "big")
        tcp_reply = dns.message.from_wire(await reader.readexactly(size))
        assert [rr.to_text() for rr in tcp_reply.answer[0]] == ["127.0.0.1"]
        writer.close()
        await asyncio.sleep(0.1)
        last = dns.message.from_wire(replies[-1])
        assert last.id == good.id and [rr.to_text() for rr in last.answer[0]] == ["127.0.0.1"]
        assert internal_errors(metrics) == 0
    finally:
        transport.close()
        await server.stop()
