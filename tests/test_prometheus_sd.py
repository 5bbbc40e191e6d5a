"""Prometheus discovers the registry: the http_sd answer as a table, then the real Prometheus
binary (Debian's) scraping what it discovers through `http_sd_configs`.

Debian's Prometheus is built without Consul SD, so `consul_sd_configs` is proven by
tests/test_consul_sd_replay.py instead. Loopback only; Prometheus is stopped by its PID.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import eventually, free_port
from realclients import prometheus

from service_discovery.app import App
from service_discovery.model import Endpoint, NamedPort, Service
from service_discovery.prometheus_sd import target_groups


def _svc(name: str, ports: dict[str, int], endpoints: list[tuple[str, tuple[str, ...]]],
         attributes: dict[str, str] | None = None) -> Service:  # fmt: skip
    return Service(
        id="x",
        name=name,
        attributes=attributes or {},
        named_ports={n: NamedPort(n, "tcp", p) for n, p in ports.items()},
        endpoints=tuple(Endpoint(ip, tags) for ip, tags in endpoints),
        version=1,
    )


def test_target_groups_table() -> None:
    """One group per service, named port and tag set; attributes become sanitized labels."""
    services = [
        _svc("web", {"http": 80, "metrics": 9100},
             [("10.0.0.1", ("b", "a")), ("10.0.0.2", ("a", "b")), ("::1", ())],
             {"team.name": "blue"}),
        _svc("idle", {"http": 80}, []),
        _svc("noports", {}, [("10.0.0.3", ())]),
    ]  # fmt: skip
    groups = target_groups(services)
    got = [(g["targets"], g["labels"]["__meta_sd_port_name"], g["labels"]["__meta_sd_tags"])
           for g in groups]  # fmt: skip
    assert got == [
        (["10.0.0.1:80", "10.0.0.2:80"], "http", ",a,b,"),
        (["[::1]:80"], "http", ""),
        (["10.0.0.1:9100", "10.0.0.2:9100"], "metrics", ",a,b,"),
        (["[::1]:9100"], "metrics", ""),
    ]
    assert groups[0]["labels"] == {
        "__meta_sd_service": "web",
        "__meta_sd_attribute_team_name": "blue",
        "__meta_sd_port_name": "http",
        "__meta_sd_port_protocol": "tcp",
        "__meta_sd_tags": ",a,b,",
    }
    only = target_groups(services, ports=frozenset({"metrics"}), tags=frozenset({"a"}))
    assert [g["targets"] for g in only] == [["10.0.0.1:9100", "10.0.0.2:9100"]]
    assert target_groups(services, names=frozenset({"nope"})) == []


README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_http_sd_config(http_port: int) -> str:
    """The README's http_sd scrape config, pointed at the app and made to refresh every second
    (the only edits)."""
    section = README.split("## Use it from Consul clients and Prometheus", 1)[1]
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "http_sd" in b)
    for old, new in (
        ("sd.example:3000", f"127.0.0.1:{http_port}"),
        ("refresh_interval: 30s", "refresh_interval: 1s"),
        ("scrape_interval: 15s", "scrape_interval: 1s\n  scrape_timeout: 1s"),
    ):
        assert old in block, old
        block = block.replace(old, new)
    return block  # fmt: skip


@pytest.fixture
def prometheus_process(tmp_path: Path, app: App) -> Iterator[tuple[str, Path]]:
    """(base URL, log) of Prometheus discovering targets from the app with the README's
    http_sd config."""
    binary = prometheus()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(readme_http_sd_config(app.http_port))
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _targets(base: str, service: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(f"{base}/api/v1/targets?state=active") as resp:
                if resp.status != 200:
                    return []
                body = await resp.json()
        except aiohttp.ClientError:
            return []  # not listening yet
    return [
        t
        for t in body["data"]["activeTargets"]
        if t["discoveredLabels"].get("__meta_sd_service") == service
    ]


@pytest.mark.asyncio
async def test_prometheus_discovers_scrapes_and_drops(
    app: App, http: aiohttp.ClientSession, prometheus_process: tuple[str, Path], unique_name: str
) -> None:
    """1. register the daemon's own /metrics as a service; Prometheus discovers it through
    http_sd and reports it up; 2. a second endpoint appears; 3. deregistered, it goes."""
    base, log = prometheus_process
    body = {"name": unique_name, "attributes": {"team": "sd"},
            "named_ports": {"metrics": {"port": app.http_port}}}  # fmt: skip
    assert (await http.put("/service", data=json.dumps(body))).status == 201
    resp = await http.put(f"/service/{unique_name}/register", data='{"ip": "127.0.0.1"}')
    assert resp.status == 200

    async def up() -> list[dict[str, Any]]:
        found = await _targets(base, unique_name)
        return [t for t in found if t["health"] == "up"]

    try:
        took = await eventually(up, 60, "discovered and scraped (up)", interval=0.25)
    except AssertionError:
        raise AssertionError(log.read_text()[-3000:]) from None
    print(f"discovered and scraped (up): {took:.1f}s")
    [target] = await up()
    assert target["scrapeUrl"] == f"http://127.0.0.1:{app.http_port}/metrics"
    labels = target["discoveredLabels"]
    assert labels["__meta_sd_port_name"] == "metrics"
    assert labels["__meta_sd_attribute_team"] == "sd"
    assert target["labels"]["service"] == unique_name  # the README's relabeling

    resp = await http.put(
        f"/service/{unique_name}/register", data='{"ip": "127.0.0.2", "tags": ["b"]}'
    )
    assert resp.status == 200

    async def two() -> bool:
        return len(await _targets(base, unique_name)) == 2

    took = await eventually(two, 60, "second endpoint discovered", interval=0.25)
    print(f"second endpoint discovered: {took:.1f}s")
    assert (await http.delete(f"/service/{unique_name}/endpoints/127.0.0.2")).status == 204

    async def one() -> bool:
        found = await _targets(base, unique_name)
        return [t["discoveredLabels"]["__address__"] for t in found] == [
            f"127.0.0.1:{app.http_port}"
        ]

    took = await eventually(one, 60, "deregistered endpoint dropped", interval=0.25)
    print(f"deregistered endpoint dropped: {took:.1f}s")
