"""Consul-style DNS names beside the native ones (SD_DNS_CONSUL_NAMES), as zone-file lines."""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp
import dns.asyncquery
import dns.message
import pytest
from test_resolver import HTTP, lines, service, view_of

from service_discovery.app import run_app
from service_discovery.config import Config
from service_discovery.dns.records import CLASS_IN, Question, split_name
from service_discovery.dns.resolver import resolve
from service_discovery.dns.zone import Zone
from service_discovery.model import NamedPort

TYPES = {"A": 1, "AAAA": 28, "SRV": 33, "TXT": 16}
ON = Config(bind_address="127.0.0.1", dns_consul_names=True)
METRICS = NamedPort("metrics", "tcp", 9100)
DEFAULT = NamedPort("default", "tcp", 8080)
REGISTRY = (
    service("web", ("10.0.0.1", ("canary",)), "10.0.0.2", "fd00::1", ports=(METRICS, DEFAULT)),
    service("api", "10.0.1.1", ports=(HTTP,), attributes={"version": "2"}),
    service("dns", "10.0.2.1", ports=(NamedPort("dns", "udp", 53),)),
    service("service", "10.0.3.1"),  # a service named like the label: still at its own name
)
Z = "svc.cluster.local."
NX = {"rcode": "NXDOMAIN", "answer": []}

CASES = [
    (f"web.service.{Z}", "A", {"answer": [f"web.service.{Z} 5 IN A 10.0.0.1",
                                          f"web.service.{Z} 5 IN A 10.0.0.2"]}),
    (f"web.service.{Z}", "AAAA", {"answer": [f"web.service.{Z} 5 IN AAAA fd00::1"]}),
    (f"canary.web.service.{Z}", "A", {"answer": [f"canary.web.service.{Z} 5 IN A 10.0.0.1"]}),
    (f"blue.web.service.{Z}", "A", NX),
    # an endpoint's own name and the service's attributes, as under the native names
    (f"10-0-0-2.web.service.{Z}", "A", {"answer": [f"10-0-0-2.web.service.{Z} 5 IN A 10.0.0.2"]}),
    (f"fd00--1.web.service.{Z}", "AAAA",
     {"answer": [f"fd00--1.web.service.{Z} 5 IN AAAA fd00::1"]}),
    (f"10-0-0-9.web.service.{Z}", "A", NX),
    (f"api.service.{Z}", "TXT", {"answer": [f'api.service.{Z} 5 IN TXT "version=2"']}),
    # the port named "default" (a Consul registration's Port), as ServicePort; else the first
    (f"_web._tcp.service.{Z}", "SRV", {
        "answer": [f"_web._tcp.service.{Z} 5 IN SRV 1 1 8080 web.service.{Z}"],
        "extra": [f"web.service.{Z} 5 IN A 10.0.0.1", f"web.service.{Z} 5 IN A 10.0.0.2",
                  f"web.service.{Z} 5 IN AAAA fd00::1"]}),
    (f"_api._tcp.service.{Z}", "SRV", {
        "answer": [f"_api._tcp.service.{Z} 5 IN SRV 1 1 8000 api.service.{Z}"],
        "extra": [f"api.service.{Z} 5 IN A 10.0.1.1"]}),
    (f"_api._tcp.service.{Z}", "A", {"rcode": "NOERROR", "answer": []}),
    (f"_dns._tcp.service.{Z}", "SRV", NX),  # its only port is UDP
    (f"nope.service.{Z}", "A", NX),
    (f"a.b.web.service.{Z}", "A", NX),
    (f"service.{Z}", "A", {"answer": [f"service.{Z} 5 IN A 10.0.3.1"]}),
    # the native names are unchanged
    (f"web.{Z}", "A", {"answer": [f"web.{Z} 5 IN A 10.0.0.1", f"web.{Z} 5 IN A 10.0.0.2"]}),
]  # fmt: skip


@pytest.mark.parametrize(("qname", "qtype", "want"), CASES, ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_consul_names(qname: str, qtype: str, want: dict[str, object]) -> None:
    view = view_of(REGISTRY, config=ON)
    got = lines(resolve(Question(split_name(qname), TYPES[qtype], CLASS_IN), view, Zone(ON)))
    assert got["rcode"] == want.get("rcode", "NOERROR")
    assert got["answer"] == want["answer"]
    if "extra" in want:
        assert got["extra"] == want["extra"]


def test_srv_targets_each_endpoint_under_consul_names_too() -> None:
    """DNS_SRV_TARGETS=endpoint: `_<svc>._tcp.service.<zone>` targets each instance's own name
    under `<svc>.service.<zone>`, with its address as glue."""
    config = Config(bind_address="127.0.0.1", dns_consul_names=True, dns_srv_targets="endpoint")
    view = view_of(REGISTRY, config=config)
    question = Question(split_name(f"_web._tcp.service.{Z}"), TYPES["SRV"], CLASS_IN)
    got = lines(resolve(question, view, Zone(config)))
    assert got["answer"] == [
        f"_web._tcp.service.{Z} 5 IN SRV 1 1 8080 {label}.web.service.{Z}"
        for label in ("10-0-0-1", "10-0-0-2", "fd00--1")
    ]
    assert got["extra"] == [f"10-0-0-1.web.service.{Z} 5 IN A 10.0.0.1",
                            f"10-0-0-2.web.service.{Z} 5 IN A 10.0.0.2",
                            f"fd00--1.web.service.{Z} 5 IN AAAA fd00::1"]  # fmt: skip


def test_off_by_default() -> None:
    config = Config(bind_address="127.0.0.1")
    view = view_of(REGISTRY, config=config)
    question = Question(split_name(f"web.service.{Z}"), TYPES["A"], CLASS_IN)
    assert lines(resolve(question, view, Zone(config)))["rcode"] == "NXDOMAIN"


@pytest.mark.asyncio
async def test_consul_names_over_the_wire(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """1. register through the Consul API; 2. dig-style UDP queries for the Consul names get
    the instance's address and its port."""
    config = make_config(dns_consul_names=True)
    async with run_app(config) as app:
        body = {"Name": unique_name, "ID": unique_name, "Address": "10.70.0.1", "Port": 8080}
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{app.http_port}/v1/agent/service/register"
            assert (await http.put(url, data=json.dumps(body))).status == 200
        zone = config.dns_domain
        srv = await dns.asyncquery.udp(
            dns.message.make_query(f"_{unique_name}._tcp.service.{zone}", "SRV"),
            "127.0.0.1", port=app.dns_port, timeout=5,
        )  # fmt: skip
        [rrset] = srv.answer
        assert [(r.port, r.target.to_text()) for r in rrset] == [
            (8080, f"{unique_name}.service.{zone}.")
        ]
        assert [r.to_text() for rr in srv.additional for r in rr] == ["10.70.0.1"]
