"""The names of DNS completeness over real sockets, read with dig and dnspython: the SOA's
timers, TXT for a service's attributes, each endpoint's own name, and SRV records that target
each endpoint (DNS_SRV_TARGETS=endpoint) with their glue, truncated and retried over TCP as
larger answers must be."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.flags
import pytest
from helpers import put_ok
from test_dns import ZONE, ask, dig, ips, make_service, needs_dig, records

from service_discovery.app import run_app
from service_discovery.config import Config
from service_discovery.model import EndpointSpec, NamedPort, ServiceSpec

pytestmark = pytest.mark.asyncio


@needs_dig
async def test_soa_txt_and_endpoint_names_with_dig(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """1. a service with attributes and two endpoints, over HTTP; 2. dig SOA shows RFC 1912's
    timers; 3. dig TXT shows what GET /service shows of the attributes; 4. each endpoint's own
    name answers its address, and a tag spelled like an address is no DNS name; 5. the service
    deleted and created again with other attributes: the next TXT answer has them (the cached
    one was dropped); 6. without attributes, NODATA with the SOA."""
    async with run_app(make_config()) as app:
        port, fqdn = app.dns_port, f"{unique_name}.{ZONE}."
        attributes = {"attr-1": "value-1", "owner=team": "core `x`", "long": "y" * 300}
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
            await put_ok(http, "/service", {"name": unique_name, "attributes": attributes})
            for ip in ("10.31.0.1", "fd00:31::1"):
                # a tag shaped like an address is accepted (and shown), but not a DNS name
                tags = ["10-31-0-9", "blue"] if ip == "10.31.0.1" else []
                await put_ok(http, f"/service/{unique_name}/register", {"ip": ip, "tags": tags})
            async with http.get(f"/service/{unique_name}") as resp:
                body = await resp.json()
            shown = body["attributes"]
            assert ["10-31-0-9", "blue"] in [e["tags"] for e in body["endpoints"]]
            soa = (await dig(port, ZONE, "SOA", "+short")).split()
            assert soa[3:] == ["3600", "600", "1209600", "5"]  # refresh, retry, expire, minimum

            txt = await dig(port, fqdn, "TXT", "+noall", "+answer")
            assert txt.splitlines() == [
                f'{fqdn} 5 IN TXT "attr-1=value-1"',
                f'{fqdn} 5 IN TXT "long={"y" * 250}" "{"y" * 50}"',
                f'{fqdn} 5 IN TXT "owner`=team=core `x`"',
            ]
            # RFC 1464 read back (strings joined, the name's quoting undone) is the HTTP view
            r = await ask(port, fqdn, "TXT")
            read = dict(
                _rfc1464(b"".join(rr.strings).decode()) for rrset in r.answer for rr in rrset
            )
            assert read == shown == attributes

            a = await dig(port, f"10-31-0-1.{fqdn}", "A", "+noall", "+answer")
            assert a == f"10-31-0-1.{fqdn} 5 IN A 10.31.0.1"
            aaaa = await dig(port, f"fd00-31--1.{fqdn}", "AAAA", "+noall", "+answer")
            assert aaaa == f"fd00-31--1.{fqdn} 5 IN AAAA fd00:31::1"
            assert "status: NXDOMAIN" in await dig(port, f"10-31-0-2.{fqdn}", "A")
            # the address form wins: no endpoint 10.31.0.9, so NXDOMAIN despite the tag
            assert "status: NXDOMAIN" in await dig(port, f"10-31-0-9.{fqdn}", "A")
            assert await dig(port, f"blue.{fqdn}", "A", "+short") == "10.31.0.1"

            async with http.delete(f"/service/{unique_name}") as resp:
                assert resp.status == 204
            await put_ok(http, "/service", {"name": unique_name, "attributes": {"v": "2"}})
            assert await dig(port, fqdn, "TXT", "+short") == '"v=2"'
            async with http.delete(f"/service/{unique_name}") as resp:
                assert resp.status == 204
            await put_ok(http, "/service", {"name": unique_name})
            nodata = await dig(port, fqdn, "TXT")
            assert "status: NOERROR" in nodata and "ANSWER: 0, AUTHORITY: 1" in nodata


def _rfc1464(text: str) -> tuple[str, str]:
    """`name=value` split at the first `=` not quoted by a backquote, the quoting undone."""
    name, i = [], 0
    while text[i] != "=":
        if text[i] == "`":
            i += 1
        name.append(text[i])
        i += 1
    return "".join(name), text[i + 1 :]


@needs_dig
async def test_srv_targets_each_endpoint_with_glue(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """DNS_SRV_TARGETS=endpoint: 1. dig SRV gives one record per endpoint, each targeting the
    endpoint's own name, with its address as glue; 2. 16 endpoints: the SRV records (about 68
    bytes each: RFC 2782 forbids compressing their targets) fit 1,232 bytes, not with their
    glue, which is left out without TC (RFC 2181 9); without EDNS the answer does not fit 512
    bytes: TC and no records; over TCP all of it; 3. dig retries over TCP by itself; 4. a
    registration shows in the next answer (the cached one is dropped)."""
    async with run_app(make_config(dns_srv_targets="endpoint")) as app:
        port, fqdn = app.dns_port, f"{unique_name}.{ZONE}."
        http_port = {"http": NamedPort("http", "tcp", 8080, priority=1, weight=5)}
        await make_service(app, unique_name, ["10.32.0.1", "fd00:32::1"], ports=http_port)
        srv = await dig(port, f"_http._tcp.{fqdn}", "SRV", "+noall", "+answer", "+additional")
        assert sorted(srv.splitlines()) == sorted([
            f"_http._tcp.{fqdn} 5 IN SRV 1 5 8080 10-32-0-1.{fqdn}",
            f"_http._tcp.{fqdn} 5 IN SRV 1 5 8080 fd00-32--1.{fqdn}",
            f"10-32-0-1.{fqdn} 5 IN A 10.32.0.1",
            f"fd00-32--1.{fqdn} 5 IN AAAA fd00:32::1",
        ])  # fmt: skip

        big = f"{unique_name}-b"
        addresses = ips(16, "10.33")
        await make_service(app, big, addresses, ports=http_port)
        qname = f"_http._tcp.{big}.{ZONE}."
        r = await ask(port, qname, "SRV")
        assert not r.flags & dns.flags.TC and len(r.answer[0]) == 16 and r.additional == []
        assert len(r.to_wire()) <= 1232
        r = await ask(port, qname, "SRV", edns=None)
        assert r.flags & dns.flags.TC and r.answer == [] and len(r.to_wire()) <= 512
        r = await ask(port, qname, "SRV", tcp=True)
        assert not r.flags & dns.flags.TC
        targets = sorted(rr.target.to_text() for rr in r.answer[0])
        assert targets == sorted(f"{ip.replace('.', '-')}.{big}.{ZONE}." for ip in addresses)
        glue = sorted(f"{rrset.name} {rr}" for rrset in r.additional for rr in rrset)
        assert glue == sorted(f"{ip.replace('.', '-')}.{big}.{ZONE}. {ip}" for ip in addresses)
        out = await dig(port, "+noedns", qname, "SRV")
        assert "Truncated, retrying in TCP mode." in out and "ANSWER: 16," in out

        assert app.catalog is not None
        await app.catalog.register(unique_name, EndpointSpec("10.32.0.2"))
        r = await ask(port, f"_http._tcp.{fqdn}", "SRV")
        assert len(r.answer[0]) == 3 and f"10-32-0-2.{fqdn} 5 IN A 10.32.0.2" in records(
            r.additional
        )


async def test_srv_answer_larger_than_tcp_allows_keeps_what_fits(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """DNS_SRV_TARGETS=endpoint and 1,100 endpoints: the SRV answer (about 68 bytes a record)
    exceeds the 65,535 bytes a TCP message can hold. 1. over TCP, as many whole SRV records as
    fit, without glue, TC set; each targets one of the service's endpoint names, none twice;
    2. over UDP, TC and no records (the client retries over TCP)."""
    async with run_app(make_config(dns_srv_targets="endpoint")) as app:
        assert app.catalog is not None
        ports = {"http": NamedPort("http", "tcp", 8080)}
        await app.catalog.create_service(ServiceSpec(unique_name, named_ports=ports))
        addresses = [f"10.{34 + i // 250}.{i // 250}.{i % 250 + 1}" for i in range(1100)]
        await app.catalog.register_many(unique_name, tuple(EndpointSpec(ip) for ip in addresses))
        qname = f"_http._tcp.{unique_name}.{ZONE}."
        r = await ask(app.dns_port, qname, "SRV", tcp=True)
        assert r.flags & dns.flags.TC and r.additional == []
        targets = [rr.target.to_text() for rr in r.answer[0]]
        names = {f"{ip.replace('.', '-')}.{unique_name}.{ZONE}." for ip in addresses}
        assert 900 < len(targets) < 1100 and len(set(targets)) == len(targets)
        assert set(targets) <= names
        assert 65535 - 70 < len(r.to_wire()) <= 65535
        r = await ask(app.dns_port, qname, "SRV")
        assert r.flags & dns.flags.TC and r.answer == []


README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_digs() -> list[tuple[list[str], list[str]]]:
    """The README's dig block under its DNS table: each command's arguments and the output
    lines (`# ...`) it shows beneath."""
    section = README.split("\n## DNS\n", 1)[1].split("\n### ", 1)[0]
    [block] = re.findall(r"```sh\n(.*?)```", section, re.S)
    out: list[tuple[list[str], list[str]]] = []
    for line in block.splitlines():
        if line.startswith("dig "):
            out.append((shlex.split(line)[1:], []))
        else:
            out[-1][1].append(line.removeprefix("# "))
    return out


@pytest.fixture
def fresh_database(new_database: Callable[..., Any]) -> Iterator[str]:
    """A migrated database of its own: the README's names (`webapp`) are exact."""
    with new_database("sd_dns_names") as url:
        yield url


@needs_dig
async def test_readme_dig_lines(make_config: Callable[..., Config], fresh_database: str) -> None:
    """1. the quick start's webapp, a second endpoint fd00::1, DNS_SRV_TARGETS=endpoint; 2. each
    dig line of the README's DNS section prints what the README shows (the SOA serial aside,
    which counts the writes)."""
    digs = readme_digs()
    assert {args[3] for args, _ in digs} >= {"SOA", "TXT", "A", "AAAA", "SRV"}
    config = make_config(database_url=fresh_database, dns_srv_targets="endpoint")
    async with run_app(config) as app:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
            await put_ok(http, "/service", {"name": "webapp", "attributes": {"attr-1": "value-1"}})
            for ip in ("127.0.0.1", "fd00::1"):
                await put_ok(http, "/service/webapp/register", {"ip": ip, "tags": []})
            await put_ok(http, "/service/webapp/port", {"http": {"protocol": "tcp", "port": 8000}})
        for args, shown in digs:
            assert args[0].startswith("-p") and args[1] == "@127.0.0.1", args
            got = (await dig(app.dns_port, *args[2:])).splitlines()
            if args[2:4] == ["svc.cluster.local", "SOA"]:
                got = [" ".join([*f.split()[:2], "4", *f.split()[3:]]) for f in got]
            assert got == shown, args
