"""The daemon's zone behind a real recursive resolver: Unbound with a `stub-zone` pointing at it,
as the cluster DNS forwards sd.internal (k8s/coredns/sd-internal.server). Answers come through
unchanged, TTLs never exceed the daemon's, and negative answers are cached for the SOA minimum
the daemon sets (DNS_NEGATIVE_TTL), not longer."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from helpers import Daemon, eventually, free_port, put

ZONE = "sd.internal"
TTL, NEGATIVE_TTL = 4, 2
UNBOUND = shutil.which("unbound") or shutil.which("unbound", path="/usr/sbin")

pytestmark = pytest.mark.skipif(
    UNBOUND is None, reason="unbound is not installed (scripts/system-deps.sh installs it)"
)


@pytest.fixture
def daemon(database_url: str, tmp_path: Path) -> Iterator[Daemon]:
    env = {"DATABASE_URL": database_url, "DNS_DOMAIN": ZONE, "DNS_TTL": str(TTL),
           "DNS_NEGATIVE_TTL": str(NEGATIVE_TTL)}  # fmt: skip
    with Daemon(tmp_path / "daemon.log", env=env) as d:
        yield d


@pytest.fixture
def unbound(daemon: Daemon, tmp_path: Path) -> Iterator[int]:
    """Unbound on a loopback port of its own, resolving ZONE through the daemon; its port."""
    port = free_port()
    conf = tmp_path / "unbound.conf"
    conf.write_text(
        f"""server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{tmp_path}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  # no DNSSEC: the zone is unsigned and private (Kubernetes' CoreDNS does not validate either)
  module-config: "iterator"
  # never keep an answer longer than its TTL says, never serve it expired
  serve-expired: no
  prefetch: no
stub-zone:
  name: "{ZONE}."
  stub-addr: 127.0.0.1@{daemon.dns_port}
"""
    )
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0 or shutil.which("unbound-checkconf") is None, check.stderr
    log = tmp_path / "unbound.log"
    with open(log, "ab") as out:
        assert UNBOUND is not None
        proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                q = dns.message.make_query(f"{ZONE}.", "SOA")
                dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5)
                break
            except dns.exception.Timeout:
                assert time.monotonic() < deadline, log.read_text()
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def ask(port: int, name: str, rdtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=3)


async def test_answers_ttls_and_negative_caching_through_unbound(
    daemon: Daemon, unbound: int
) -> None:
    """1. a service with an endpoint and a port: A and SRV through Unbound equal the daemon's,
    with TTLs at most DNS_TTL; 2. a name that does not exist: NXDOMAIN with the daemon's SOA,
    cached for at most its minimum (DNS_NEGATIVE_TTL); 3. the name registered meanwhile resolves
    once that negative entry has expired, within NEGATIVE_TTL + slack; 4. dig through Unbound
    (where dig is installed) prints the address."""
    name = f"web-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession(daemon.base) as http:
        assert (await put(http, "/service", {"name": name})).status in (200, 201)
        assert (await put(http, f"/service/{name}/register", {"ip": "10.0.0.7"})).status == 200
        ports = {"http": {"protocol": "tcp", "port": 8000}}
        assert (await put(http, f"/service/{name}/ports", ports)).status == 200

        # Step 1
        for qname, rdtype in ((f"{name}.{ZONE}.", "A"), (f"_http._tcp.{name}.{ZONE}.", "SRV")):
            direct = await ask(daemon.dns_port, qname, rdtype)

            want = {r.to_text() for rr in direct.answer for r in rr}

            async def same(qname: str = qname, rdtype: str = rdtype, want: set[str] = want) -> bool:
                via = await ask(unbound, qname, rdtype)
                return {r.to_text() for rr in via.answer for r in rr} == want

            await eventually(same, 10, f"{qname} {rdtype} through Unbound")
            via = await ask(unbound, qname, rdtype)
            assert via.rcode() == dns.rcode.NOERROR and via.answer
            assert all(0 < rr.ttl <= TTL for rr in via.answer), via.to_text()

        # Step 2
        other = f"late-{uuid.uuid4().hex[:8]}"
        negative = await ask(unbound, f"{other}.{ZONE}.", "A")
        asked = time.monotonic()
        assert negative.rcode() == dns.rcode.NXDOMAIN, negative.to_text()
        [soa] = [rr for rr in negative.authority if rr.rdtype == dns.rdatatype.SOA]
        assert soa[0].minimum == NEGATIVE_TTL and soa.ttl <= NEGATIVE_TTL, negative.to_text()

        # Step 3: registered now; Unbound may answer from its negative cache until it expires
        assert (await put(http, "/service", {"name": other})).status in (200, 201)
        assert (await put(http, f"/service/{other}/register", {"ip": "10.0.0.8"})).status == 200

        async def resolves() -> bool:
            r = await ask(unbound, f"{other}.{ZONE}.", "A")
            return r.rcode() == dns.rcode.NOERROR and bool(r.answer)

        await eventually(resolves, NEGATIVE_TTL + 10, "the new name through Unbound", 0.1)
        took = time.monotonic() - asked
        print(f"\nunbound: negative answer replaced {took:.2f}s after it was cached")
        assert took < NEGATIVE_TTL + 5  # the negative entry lived no longer than the SOA said

    # Step 4
    dig = shutil.which("dig")
    if dig:
        out = await asyncio.to_thread(
            subprocess.run,
            [dig, "+short", "-p", str(unbound), "@127.0.0.1", f"{name}.{ZONE}", "A"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert out.stdout.split() == ["10.0.0.7"], out.stdout + out.stderr
