"""The DNS server over real UDP and TCP sockets, with dnspython and dig as clients, answering from
a registry copy loaded from the run's PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import dns.asyncquery
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dnslib
import pytest
from helpers import eventually, put_ok, sample

from service_discovery.app import App, run_app
from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.dns import DnsServer
from service_discovery.model import EndpointSpec, NamedPort, ServiceSpec

pytestmark = pytest.mark.asyncio

ZONE = "svc.cluster.local"
TRANSPORTS = ["udp", "tcp"]


# ---- clients ---------------------------------------------------------------------------------
async def ask(
    port: int,
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    edns: int | None = 0,
    payload: int = 1232,
) -> dns.message.Message:
    """One query with dnspython; edns=None sends no OPT record."""
    q = dns.message.make_query(
        name, rdtype, use_edns=edns if edns is not None else False, payload=payload
    )
    if tcp:
        return await dns.asyncquery.tcp(q, "127.0.0.1", port=port, timeout=3)
    return await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=3, raise_on_truncation=False)


class _Catch(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)


@contextlib.asynccontextmanager
async def udp_client(port: int) -> AsyncIterator[Callable[..., Any]]:
    """Send raw datagrams; `exchange(payload, timeout)` returns the reply bytes or None."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Catch, remote_addr=("127.0.0.1", port))

    async def exchange(payload: bytes, timeout: float = 2.0) -> bytes | None:
        transport.sendto(payload)
        try:
            return await asyncio.wait_for(proto.replies.get(), timeout)
        except TimeoutError:
            return None

    try:
        yield exchange
    finally:
        transport.close()


async def tcp_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    writer.write(struct.pack("!H", len(payload)) + payload)
    await writer.drain()
    size = struct.unpack("!H", await reader.readexactly(2))[0]
    return await reader.readexactly(size)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    """True once the server closes (FIN, or RST when our unread query was discarded)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionResetError:
        return True


def wire(name: str, rdtype: str = "A", *, edns: int | None = None, payload: int = 1232) -> bytes:
    q = dns.message.make_query(
        name, rdtype, use_edns=edns if edns is not None else False, payload=payload
    )
    q.id = 0x1234
    return q.to_wire()


async def dig(port: int, *args: str) -> str:
    """dig's output with runs of blanks collapsed, so lines compare as zone-file lines."""
    proc = await asyncio.create_subprocess_exec(
        "dig", f"-p{port}", "@127.0.0.1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return "\n".join(" ".join(line.split()) for line in out.decode().splitlines())


def records(section: list[Any]) -> list[str]:
    """dnspython RRsets as sorted zone-file lines."""
    return sorted(
        " ".join(line.split()) for rrset in section for line in rrset.to_text().split("\n")
    )


needs_dig = pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) missing")


# ---- set-up helpers -----------------------------------------------------------------------------
async def make_service(
    app: App, name: str, ips: list[str], ports: dict[str, NamedPort] | None = None,
    tags: dict[str, tuple[str, ...]] | None = None,
) -> None:  # fmt: skip
    catalog = app.catalog
    assert catalog is not None
    await catalog.create_service(ServiceSpec(name, {}, ports or {}))
    gate = asyncio.Semaphore(8)  # within the pool, and quicker than one at a time

    async def register(ip: str) -> None:
        async with gate:
            await catalog.register(name, EndpointSpec(ip, (tags or {}).get(ip, ())))

    await asyncio.gather(*(register(ip) for ip in ips))


def ips(count: int, base: str | None = None) -> list[str]:
    """Distinct IPv4 addresses in a random 10.x /16: tests share one database, and PTR answers
    list every service holding an address."""
    base = base or f"10.{random.randrange(100, 250)}"
    return [f"{base}.{i // 250}.{i % 250 + 1}" for i in range(count)]


@pytest.fixture
def net() -> str:
    """A random 10.x.y /24 for this test's endpoints."""
    return f"10.{random.randrange(30, 100)}.{random.randrange(256)}"


@pytest.fixture
def fresh_database(new_database: Callable[..., Any]) -> Iterator[str]:
    """A migrated database of its own, for tests that need exact names such as `webapp`."""
    with new_database("sd_dns") as url:
        yield url


# ---- the design's README ------------------------------------------------------------------------
@needs_dig
async def test_readme_dig_answers(make_config: Callable[..., Config], fresh_database: str) -> None:
    """1. the design's transcript over HTTP, 2. its two dig commands give its lines exactly."""
    async with run_app(make_config(database_url=fresh_database)) as app:
        base = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            await put_ok(http, "/service", {"name": "webapp", "attributes": {}})
            await put_ok(http, "/service/webapp/register", {"ip": "127.0.0.1", "tags": []})
            await put_ok(http, "/service/webapp/port", {"http": {"protocol": "tcp", "port": 8000}})
        srv = await dig(app.dns_port, f"_http._tcp.webapp.{ZONE}", "SRV", "+noall", "+answer")
        assert srv == f"_http._tcp.webapp.{ZONE}. 5 IN SRV 1 1 8000 webapp.{ZONE}."
        a = await dig(app.dns_port, f"webapp.{ZONE}", "A", "+noall", "+answer")
        assert a == f"webapp.{ZONE}. 5 IN A 127.0.0.1"
        # and the full output says authoritative, no recursion, NOERROR
        full = await dig(app.dns_port, f"webapp.{ZONE}", "A")
        assert "status: NOERROR" in full and "flags: qr aa rd;" in full
        # a third decoder (dnslib) reads the same SRV answer and its additional address
        async with udp_client(app.dns_port) as exchange:
            reply = await exchange(wire(f"_http._tcp.webapp.{ZONE}", "SRV", edns=0))
        assert reply is not None
        parsed = dnslib.DNSRecord.parse(reply)
        assert [" ".join(rr.toZone().split()) for rr in parsed.rr] == [srv]
        assert [" ".join(rr.toZone().split()) for rr in parsed.ar if rr.rtype == 1] == [a]


# ---- the rules, over both transports ------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_records_and_rcodes(app: App, unique_name: str, transport: str, net: str) -> None:
    tcp = transport == "tcp"
    name = unique_name
    await make_service(
        app, name, [f"{net}.1", f"{net}.2", "fd00:20::1"],
        ports={"http": NamedPort("http", "tcp", 8000), "dns": NamedPort("dns", "udp", 53, 5, 7)},
        tags={f"{net}.2": ("canary",)},
    )  # fmt: skip
    empty = f"{name}-empty"
    await make_service(app, empty, [], ports={"http": NamedPort("http", "tcp", 9000)})
    port = app.dns_port
    fqdn = f"{name}.{ZONE}."
    rev = ".".join(reversed(net.split(".")))
    serial = app.registry.version & 0xFFFFFFFF
    soa = f"{ZONE}. 5 IN SOA ns.{ZONE}. hostmaster.{ZONE}. {serial} 3600 600 1209600 5"

    r = await ask(port, fqdn, "A", tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and not r.flags & dns.flags.RA
    assert records(r.answer) == [f"{fqdn} 5 IN A {net}.1", f"{fqdn} 5 IN A {net}.2"]
    r = await ask(port, fqdn, "AAAA", tcp=tcp)
    assert records(r.answer) == [f"{fqdn} 5 IN AAAA fd00:20::1"]
    r = await ask(port, f"_dns._udp.{fqdn}", "SRV", tcp=tcp)
    assert records(r.answer) == [f"_dns._udp.{fqdn} 5 IN SRV 5 7 53 {fqdn}"]
    assert records(r.additional) == [
        f"{fqdn} 5 IN A {net}.1", f"{fqdn} 5 IN A {net}.2", f"{fqdn} 5 IN AAAA fd00:20::1",
    ]  # fmt: skip
    r = await ask(port, f"canary.{fqdn}", "A", tcp=tcp)
    assert records(r.answer) == [f"canary.{fqdn} 5 IN A {net}.2"]

    # NODATA: the name exists without that type -> NOERROR, no answer, SOA (negative TTL)
    for qname, rdtype in [
        (f"{empty}.{ZONE}.", "A"), (f"_http._tcp.{fqdn}", "A"), (f"_tcp.{fqdn}", "SRV"),
        (f"canary.{fqdn}", "AAAA"), (fqdn, "TXT"),
    ]:  # fmt: skip
        r = await ask(port, qname, rdtype, tcp=tcp)
        assert (r.rcode(), r.answer, records(r.authority)) == (dns.rcode.NOERROR, [], [soa]), qname
    v4only = f"{empty}.{ZONE}."
    r = await ask(port, f"_http._tcp.{v4only}", "SRV", tcp=tcp)
    assert records(r.answer) == [f"_http._tcp.{v4only} 5 IN SRV 1 1 9000 {v4only}"]
    # NXDOMAIN with the SOA, whose minimum is the negative TTL
    for qname in [f"nothing-{name}.{ZONE}.", f"red.{fqdn}", f"_http._udp.{fqdn}"]:
        r = await ask(port, qname, "A", tcp=tcp)
        assert (r.rcode(), records(r.authority)) == (dns.rcode.NXDOMAIN, [soa]), qname
        assert r.flags & dns.flags.AA
    # outside the zone: REFUSED, not authoritative, never recursion
    for qname in ["example.com.", "cluster.local.", f"{name}.svc.cluster.locals."]:
        r = await ask(port, qname, "A", tcp=tcp)
        assert r.rcode() == dns.rcode.REFUSED and not r.flags & (dns.flags.AA | dns.flags.RA)
    r = await ask(port, f"{ZONE}.", "AXFR", tcp=tcp)
    assert r.rcode() == dns.rcode.REFUSED
    # apex, NS host, ANY, PTR
    r = await ask(port, f"{ZONE}.", "SOA", tcp=tcp)
    assert records(r.answer) == [soa]
    r = await ask(port, f"{ZONE}.", "NS", tcp=tcp)
    assert records(r.answer) == [f"{ZONE}. 5 IN NS ns.{ZONE}."]
    assert records(r.additional) == [f"ns.{ZONE}. 5 IN A 127.0.0.1"]
    r = await ask(port, fqdn, "ANY", tcp=tcp)
    assert records(r.answer) == [f"{fqdn} 5 IN A {net}.1", f"{fqdn} 5 IN A {net}.2"]
    r = await ask(port, f"1.{rev}.in-addr.arpa.", "PTR", tcp=tcp)
    assert records(r.answer) == [f"1.{rev}.in-addr.arpa. 5 IN PTR {fqdn}"]
    r = await ask(port, f"200.{rev}.in-addr.arpa.", "PTR", tcp=tcp)
    assert r.rcode() == dns.rcode.NXDOMAIN
    r = await ask(port, "1.0.0.198.in-addr.arpa.", "PTR", tcp=tcp)
    assert r.rcode() == dns.rcode.REFUSED


@needs_dig
async def test_rules_with_dig(app: App, unique_name: str, net: str) -> None:
    await make_service(app, unique_name, [f"{net}.1"], ports={"http": NamedPort("http", "tcp", 80)})
    port, fqdn = app.dns_port, f"{unique_name}.{ZONE}."
    rev = ".".join(reversed(net.split(".")))
    assert await dig(port, fqdn, "A", "+short") == f"{net}.1"
    assert await dig(port, f"_http._tcp.{fqdn}", "SRV", "+short") == f"1 1 80 {fqdn}"
    assert await dig(port, "+tcp", fqdn, "A", "+short") == f"{net}.1"
    assert await dig(port, f"1.{rev}.in-addr.arpa", "PTR", "+short") == fqdn
    assert "status: NXDOMAIN" in await dig(port, f"x-{fqdn}", "A")
    nodata = await dig(port, fqdn, "AAAA")
    assert "status: NOERROR" in nodata and "ANSWER: 0, AUTHORITY: 1" in nodata
    refused = await dig(port, "example.com", "A")
    assert "status: REFUSED" in refused and "flags: qr rd;" in refused
    assert "status: NOTIMP" in await dig(port, "+opcode=status", fqdn)
    assert "status: BADVERS" in await dig(port, "+edns=1", "+noednsnegotiation", fqdn)
    serial = await dig(port, ZONE, "SOA", "+short")
    assert serial.split()[2] == str(app.registry.version & 0xFFFFFFFF)


async def test_question_case_is_echoed_0x20(app: App, unique_name: str) -> None:
    await make_service(app, unique_name, ["10.22.0.1"])
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(f"{unique_name}.{ZONE}"))
    for attempt in range(2):  # a miss, then a cache hit built from the other spelling
        qname = mixed if attempt else mixed.swapcase()
        query = wire(qname)
        async with udp_client(app.dns_port) as exchange:
            reply = await exchange(query)
        assert reply is not None
        assert reply[:2] == query[:2]
        assert reply[12 : len(query)] == query[12:]  # the question, byte for byte
        msg = dns.message.from_wire(reply)
        assert [rr.to_text() for rr in msg.answer[0]] == ["10.22.0.1"]


async def test_rd_bit_is_copied_and_ra_never_set(app: App, unique_name: str) -> None:
    await make_service(app, unique_name, ["10.23.0.1"])
    async with udp_client(app.dns_port) as exchange:
        for rd in (True, False, True):
            q = dns.message.make_query(f"{unique_name}.{ZONE}", "A")
            q.flags = dns.flags.RD if rd else 0
            r = dns.message.from_wire(await exchange(q.to_wire()))
            assert bool(r.flags & dns.flags.RD) == rd and not r.flags & dns.flags.RA


# ---- size, EDNS0, truncation, rotation ----------------------------------------------------------
@pytest.fixture
async def big(app: App, unique_name: str) -> tuple[str, list[str]]:
    """A service of 200 IPv4 endpoints and a named port: its name and addresses."""
    addresses = ips(200)
    await make_service(app, unique_name, addresses, ports={"http": NamedPort("http", "tcp", 80)})
    return f"{unique_name}.{ZONE}.", addresses


async def test_truncation_and_tcp_retry(app: App, big: tuple[str, list[str]]) -> None:
    port = app.dns_port
    big_name, addresses = big
    everyone = sorted(addresses)
    for edns, payload in [(None, 512), (0, 512), (0, 1232), (0, 4096), (0, 65000)]:
        r = await ask(port, big_name, "A", edns=edns, payload=payload)
        assert r.flags & dns.flags.TC and r.answer == [], (edns, payload)  # no partial RRsets
        assert len(r.to_wire()) <= (512 if edns is None else min(max(payload, 512), 1232))
        assert (r.edns == 0) == (edns == 0) and (r.payload == 1232 if edns == 0 else True)
    r = await ask(port, big_name, "A", tcp=True)
    assert not r.flags & dns.flags.TC
    assert sorted(rr.to_text() for rr in r.answer[0]) == everyone
    # The SRV answer fits; leaving the addresses out is not truncation (RFC 2181 9).
    r = await ask(port, f"_http._tcp.{big_name}", "SRV")
    assert not r.flags & dns.flags.TC and len(r.answer) == 1 and r.additional == []
    r = await ask(port, f"_http._tcp.{big_name}", "SRV", tcp=True)
    assert len(r.additional[0]) == 200


@needs_dig
async def test_dig_retries_over_tcp(app: App, big: tuple[str, list[str]]) -> None:
    out = await dig(app.dns_port, big[0], "A")
    assert "Truncated, retrying in TCP mode." in out
    assert sum(1 for line in out.splitlines() if line.startswith(big[0])) == 200


async def test_larger_udp_limit_when_configured_and_asked(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    async with run_app(make_config(dns_max_udp_size=4096)) as app:
        await make_service(app, unique_name, ips(200, "10.78"))
        r = await ask(app.dns_port, f"{unique_name}.{ZONE}.", "A", payload=4096)
        assert not r.flags & dns.flags.TC and len(r.answer[0]) == 200 and r.payload == 4096
        r = await ask(app.dns_port, f"{unique_name}.{ZONE}.", "A", payload=1400)
        assert r.flags & dns.flags.TC  # the client's smaller size wins


async def test_answers_rotate(app: App, unique_name: str) -> None:
    addresses = ips(5, "10.24")
    await make_service(app, unique_name, addresses)
    firsts = []
    for _ in range(10):
        r = await ask(app.dns_port, f"{unique_name}.{ZONE}", "A")
        order = [rr.to_text() for rr in r.answer[0]]
        assert sorted(order) == sorted(addresses)
        firsts.append(order[0])
    assert set(firsts) == set(addresses)  # every address leads in turn


@pytest.mark.slow
async def test_tcp_beyond_65535_bytes_sends_what_fits(app: App, unique_name: str) -> None:
    """4,200 IPv4 records do not fit one TCP message: whole records up to 64 KiB, TC set."""
    await make_service(app, unique_name, ips(4200, "10.79"))
    r = await ask(app.dns_port, f"{unique_name}.{ZONE}", "A", tcp=True)
    assert r.flags & dns.flags.TC
    count = len(r.answer[0])
    assert 4000 < count < 4200 and len(r.to_wire()) <= 65535


# ---- readiness, freshness --------------------------------------------------------------------
async def test_servfail_before_the_registry_loads(make_config: Callable[..., Config]) -> None:
    """1. start an app whose database is unreachable, 2. every in-zone name is SERVFAIL (never
    NXDOMAIN), 3. names outside the zone still get SERVFAIL rather than a guess."""
    app = App(
        make_config(database_url="postgresql://nobody@127.0.0.1:9/none", db_timeout_seconds=0.2)
    )
    await app.start()
    try:
        for tcp in (False, True):
            for qname in [f"webapp.{ZONE}", f"_http._tcp.webapp.{ZONE}", ZONE]:
                r = await ask(app.dns_port, qname, "A", tcp=tcp)
                assert r.rcode() == dns.rcode.SERVFAIL and not r.flags & dns.flags.AA
        assert not app.registry.loaded
    finally:
        await app.stop()


async def test_changes_over_http_show_in_dns(
    app: App, http: aiohttp.ClientSession, unique_name: str
) -> None:
    """1. unknown name: NXDOMAIN (cached), 2. create + register over HTTP: A answers, 3. a port
    makes SRV, 4. deregister: NODATA, 5. delete: NXDOMAIN again."""
    port, fqdn = app.dns_port, f"{unique_name}.{ZONE}."
    for _ in range(2):
        assert (await ask(port, fqdn)).rcode() == dns.rcode.NXDOMAIN
    await put_ok(http, "/service", {"name": unique_name, "attributes": {}})
    await put_ok(http, f"/service/{unique_name}/register", {"ip": "10.25.0.1", "tags": ["canary"]})
    assert records((await ask(port, fqdn)).answer) == [f"{fqdn} 5 IN A 10.25.0.1"]
    assert records((await ask(port, f"canary.{fqdn}")).answer) == [
        f"canary.{fqdn} 5 IN A 10.25.0.1"
    ]
    await put_ok(http, f"/service/{unique_name}/register", {"ip": "10.25.0.2", "tags": []})
    assert len((await ask(port, fqdn)).answer[0]) == 2
    assert (await ask(port, f"_web._tcp.{fqdn}", "SRV")).rcode() == dns.rcode.NXDOMAIN
    await put_ok(http, f"/service/{unique_name}/ports", {"web": {"protocol": "tcp", "port": 8080}})
    r = await ask(port, f"_web._tcp.{fqdn}", "SRV")
    assert records(r.answer) == [f"_web._tcp.{fqdn} 5 IN SRV 1 1 8080 {fqdn}"]
    for ip in ("10.25.0.1", "10.25.0.2"):
        resp = await http.delete(f"/service/{unique_name}/endpoints/{ip}")
        assert resp.status in (200, 204), await resp.text()
    r = await ask(port, fqdn)
    assert (r.rcode(), r.answer) == (dns.rcode.NOERROR, [])
    assert (await ask(port, f"canary.{fqdn}")).rcode() == dns.rcode.NXDOMAIN
    resp = await http.delete(f"/service/{unique_name}")
    assert resp.status in (200, 204), await resp.text()
    assert (await ask(port, fqdn)).rcode() == dns.rcode.NXDOMAIN


async def test_soa_serial_moves_with_the_registry(app: App, unique_name: str) -> None:
    before = (await ask(app.dns_port, ZONE, "SOA")).answer[0][0].serial
    await make_service(app, unique_name, ["10.26.0.1"])
    after = (await ask(app.dns_port, ZONE, "SOA")).answer[0][0].serial
    assert after > before and after == app.registry.version & 0xFFFFFFFF
    nx = await ask(app.dns_port, f"nothing-{unique_name}.{ZONE}")
    assert nx.authority[0][0].serial == after


# ---- protocol errors --------------------------------------------------------------------------
async def test_malformed_and_unsupported_queries(app: App, unique_name: str) -> None:
    await make_service(app, unique_name, ["10.27.0.1"])
    good = wire(f"{unique_name}.{ZONE}")

    def with_qdcount(count: int) -> bytes:
        return good[:4] + struct.pack("!H", count) + good[6:]

    def rcode(reply: bytes | None) -> int:
        assert reply is not None
        return dns.message.from_wire(reply, ignore_trailing=True).rcode()

    async with udp_client(app.dns_port) as exchange:
        assert await exchange(good[:11], timeout=0.3) is None  # too short: dropped
        assert await exchange(b"", timeout=0.3) is None
        response = bytearray(good)
        response[2] |= 0x80
        assert await exchange(bytes(response), timeout=0.3) is None  # never answer a response
        assert rcode(await exchange(with_qdcount(0))) == dns.rcode.FORMERR
        assert rcode(await exchange(with_qdcount(2))) == dns.rcode.FORMERR
        assert rcode(await exchange(good[:-2])) == dns.rcode.FORMERR  # question cut short
        bad_label = good[:12] + b"\xc0\x0c" + good[-4:]  # compression in the question
        assert rcode(await exchange(bad_label)) == dns.rcode.FORMERR
        for opcode in (dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE):
            q = bytearray(good)
            q[2] = (q[2] & 0x87) | (opcode << 3)
            reply = await exchange(bytes(q))
            assert rcode(reply) == dns.rcode.NOTIMP, opcode
        two_opts = wire(f"{unique_name}.{ZONE}", edns=0)
        two_opts = two_opts[:11] + b"\x02" + two_opts[12:] + two_opts[-11:]
        assert rcode(await exchange(two_opts)) == dns.rcode.FORMERR
        badvers = dns.message.from_wire(await exchange(wire(f"{unique_name}.{ZONE}", edns=1)))
        assert badvers.rcode() == dns.rcode.BADVERS and badvers.edns == 0
        # and after all that, a good query is answered
        ok = dns.message.from_wire(await exchange(good))
        assert [rr.to_text() for rr in ok.answer[0]] == ["10.27.0.1"]


# ---- TCP --------------------------------------------------------------------------------------
async def test_tcp_many_queries_per_connection_and_pipelining(app: App, unique_name: str) -> None:
    await make_service(app, unique_name, ["10.28.0.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", app.dns_port)
    try:
        for i in range(3):
            reply = dns.message.from_wire(
                await tcp_exchange(reader, writer, wire(f"{unique_name}.{ZONE}"))
            )
            assert [rr.to_text() for rr in reply.answer[0]] == ["10.28.0.1"], i
        # three queries in one write, three answers in order
        queries = []
        for i, qname in enumerate([f"{unique_name}.{ZONE}", f"x.{ZONE}", ZONE]):
            q = dns.message.make_query(qname, "SOA" if qname == ZONE else "A")
            q.id = 100 + i
            queries.append(q.to_wire())
        writer.write(b"".join(struct.pack("!H", len(q)) + q for q in queries))
        await writer.drain()
        got = []
        for _ in queries:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            got.append(dns.message.from_wire(await reader.readexactly(size)).id)
        assert got == [100, 101, 102]
    finally:
        writer.close()


async def test_tcp_idle_timeout_and_connection_limit(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    config = make_config(dns_tcp_idle_seconds=0.3, dns_tcp_max_connections=2)
    async with run_app(config) as app:
        port = app.dns_port
        q = wire(f"{ZONE}", "SOA")
        first = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.open_connection("127.0.0.1", port)
        await tcp_exchange(*first, q)
        await tcp_exchange(*second, q)
        assert sample(app.metrics, "sd_dns_tcp_connections") == 2
        third_reader, third_writer = await asyncio.open_connection("127.0.0.1", port)
        third_writer.write(struct.pack("!H", len(q)) + q)
        assert await closed_by_server(third_reader)  # no answer
        third_writer.close()
        # idle connections are closed by the server after dns_tcp_idle_seconds
        assert await closed_by_server(first[0]) and await closed_by_server(second[0])
        await eventually(lambda: sample(app.metrics, "sd_dns_tcp_connections") == 0)
        # and a new connection is served again
        fresh = await asyncio.open_connection("127.0.0.1", port)
        assert dns.message.from_wire(await tcp_exchange(*fresh, q)).rcode() == dns.rcode.NOERROR
        fresh[1].close()
        first[1].close()
        second[1].close()


async def test_stop_closes_open_tcp_connections(make_config: Callable[..., Config]) -> None:
    async with run_app(make_config()) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.dns_port)
        await tcp_exchange(reader, writer, wire(ZONE, "SOA"))
        port = app.dns_port
    assert await closed_by_server(reader)
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# ---- the cache and the metrics -------------------------------------------------------------
async def test_metrics_count_queries_hits_misses_truncation(
    app: App, big: tuple[str, list[str]]
) -> None:
    fqdn = big[0]
    labels = {"transport": "udp", "qtype": "A", "rcode": "NOERROR"}
    queries0 = sample(app.metrics, "sd_dns_queries_total", **labels)
    hits0, misses0 = (
        sample(app.metrics, "sd_dns_cache_hits_total"),
        sample(app.metrics, "sd_dns_cache_misses_total"),
    )
    trunc0 = sample(app.metrics, "sd_dns_truncated_total")
    for _ in range(3):
        await ask(app.dns_port, fqdn)
    assert sample(app.metrics, "sd_dns_queries_total", **labels) == queries0 + 3
    assert sample(app.metrics, "sd_dns_cache_misses_total") == misses0 + 1
    assert sample(app.metrics, "sd_dns_cache_hits_total") == hits0 + 2
    assert sample(app.metrics, "sd_dns_truncated_total") == trunc0 + 3
    nx = {"transport": "tcp", "qtype": "AAAA", "rcode": "NXDOMAIN"}
    before = sample(app.metrics, "sd_dns_queries_total", **nx)
    await ask(app.dns_port, f"nothing.{ZONE}", "AAAA", tcp=True)
    assert sample(app.metrics, "sd_dns_queries_total", **nx) == before + 1
    odd = {"transport": "udp", "qtype": "other", "rcode": "NXDOMAIN"}
    before = sample(app.metrics, "sd_dns_queries_total", **odd)
    await ask(app.dns_port, f"nothing.{ZONE}", "TYPE4321")
    assert sample(app.metrics, "sd_dns_queries_total", **odd) == before + 1  # no label per odd type
    dropped = sample(app.metrics, "sd_dns_dropped_total")
    async with udp_client(app.dns_port) as exchange:
        await exchange(b"\x00" * 5, timeout=0.2)
    assert sample(app.metrics, "sd_dns_dropped_total") == dropped + 1
    # the HTTP scrape shows them too (a scrape flushes the DNS server's counts first)
    async with aiohttp.ClientSession() as http:
        text = await (await http.get(f"http://127.0.0.1:{app.http_port}/metrics")).text()
    assert 'sd_dns_queries_total{qtype="A",rcode="NOERROR",transport="udp"}' in text


async def test_cache_is_bounded_and_negative_answers_cannot_fill_it(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    async with run_app(make_config(dns_cache_size=40)) as app:
        assert app.dns is not None
        await make_service(app, unique_name, ["10.29.0.1"])
        fqdn = f"{unique_name}.{ZONE}."
        await ask(app.dns_port, fqdn)
        for i in range(200):
            r = await ask(app.dns_port, f"random-{i}.{ZONE}")
            assert r.rcode() == dns.rcode.NXDOMAIN
        assert app.dns.cache_size() <= 40
        hits = sample(app.metrics, "sd_dns_cache_hits_total")
        await ask(app.dns_port, fqdn)  # still cached: the flood went to the negative part
        assert sample(app.metrics, "sd_dns_cache_hits_total") == hits + 1


async def test_benchmark_mode_misses_every_query(app: App, unique_name: str) -> None:
    await make_service(app, unique_name, ["10.30.0.1"])
    assert app.dns is not None
    app.dns.invalidate_every_query = True
    try:
        misses = sample(app.metrics, "sd_dns_cache_misses_total")
        for _ in range(5):
            r = await ask(app.dns_port, f"{unique_name}.{ZONE}")
            assert [rr.to_text() for rr in r.answer[0]] == ["10.30.0.1"]
        assert sample(app.metrics, "sd_dns_cache_misses_total") == misses + 5
    finally:
        app.dns.invalidate_every_query = False


# ---- binding ----------------------------------------------------------------------------------
def reads(app: App) -> Catalog:
    """The catalog's reads of an App not started (no store or leases yet), as DNS reads them."""
    return Catalog(app.config, None, app.registry, None, app.metrics)


async def test_port_zero_binds_udp_and_tcp_on_one_port(make_config: Callable[..., Config]) -> None:
    app = App(make_config())
    server = DnsServer(app.config, reads(app), app.metrics)
    await server.start()
    try:
        assert server.port > 0
        probe_tcp = socket.socket()
        with pytest.raises(OSError):
            probe_tcp.bind(("127.0.0.1", server.port))
        probe_tcp.close()
        probe_udp = socket.socket(type=socket.SOCK_DGRAM)
        with pytest.raises(OSError):
            probe_udp.bind(("127.0.0.1", server.port))
        probe_udp.close()
    finally:
        await server.stop()


async def test_fixed_port_taken_fails_loudly(make_config: Callable[..., Config]) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        app = App(make_config(dns_port=holder.getsockname()[1]))
        server = DnsServer(app.config, reads(app), app.metrics)
        with pytest.raises(OSError):
            await server.start()
        await server.stop()
    finally:
        holder.close()
