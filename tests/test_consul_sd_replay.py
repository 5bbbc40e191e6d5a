"""Prometheus' `consul_sd_configs`, replayed: the request sequence of Prometheus'
discovery/consul/consul.go (read in its source; Debian's binary is built without Consul SD),
made by the Consul Go client it uses, against the running daemon.

What that code does, and this test repeats request for request:

1. `GET /v1/agent/self` (Agent().Self()) and reads `Config.Datacenter` (a map of maps).
2. `GET /v1/catalog/services?stale=&wait=120000ms`, then with `&index=<X-Consul-Index>`: a
   blocking watch (Catalog().Services with AllowStale, WaitTime 2 min, WaitIndex); an answer
   whose X-Consul-Index equals the last one is dropped ("the watch timed out with no update").
3. For every service: `GET /v1/health/service/<name>?stale=&wait=120000ms[&index=N]`
   (Health().ServiceMultipleTags, passingOnly false), the same index rule; each answer becomes
   one target group: `__address__` = Service.Address (else Node.Address) : Service.Port, and
   labels from Node.Node, Node.Address, Service.ID, Service.Tags (",a,b,"),
   Checks' aggregated status, Node.Meta, Service.Meta and Node.TaggedAddresses.
4. A service gone from the catalog answer gets an empty group (its targets are dropped).
5. The token travels as `X-Consul-Token` on every request.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from service_discovery.app import App, run_app
from service_discovery.config import Config

pytestmark = pytest.mark.asyncio
TOKEN = "prometheus-token"
WAIT = "120000ms"  # durToMsec(watchTimeout)


def aggregated_status(checks: list[dict[str, Any]]) -> str:
    """HealthChecks.AggregatedStatus (maintenance > critical > warning > passing)."""
    seen = {c["Status"] for c in checks}
    for status in ("critical", "warning"):
        if status in seen:
            return status
    if seen - {"passing", "critical", "warning"}:
        return ""
    return "passing"


def target(entry: dict[str, Any], service: str, datacenter: str) -> dict[str, str]:
    """One target's labels, built as consulService.watch builds them."""
    node, svc = entry["Node"], entry["Service"]
    host = svc["Address"] or node["Address"]
    host = f"[{host}]" if ":" in host else host
    labels = {
        "__address__": f"{host}:{svc['Port']}",
        "__meta_consul_address": node["Address"],
        "__meta_consul_node": node["Node"],
        "__meta_consul_tags": "," + ",".join(svc["Tags"]) + ",",
        "__meta_consul_service_address": svc["Address"],
        "__meta_consul_service_port": str(svc["Port"]),
        "__meta_consul_service_id": svc["ID"],
        "__meta_consul_health": aggregated_status(entry["Checks"]),
        "__meta_consul_service": service,
        "__meta_consul_dc": datacenter,
    }
    for k, v in node["Meta"].items():
        labels["__meta_consul_metadata_" + k] = v
    for k, v in svc["Meta"].items():
        labels["__meta_consul_service_metadata_" + k.replace("-", "_")] = v
    for k, v in node["TaggedAddresses"].items():
        labels["__meta_consul_tagged_address_" + k] = v
    return labels


def readme_consul_sd_config() -> dict[str, Any]:
    """The README's consul_sd scrape config (Debian's promtool cannot check it: no Consul SD)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Use it from Consul clients and Prometheus", 1)[1]
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "consul_sd" in b)
    [job] = yaml.safe_load(block)["scrape_configs"]
    return dict(job)


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str]:
    """Prometheus' `replace` relabeling (the README's rules use only that action)."""
    out = dict(labels)
    for rule in rules:
        assert rule.get("action", "replace") == "replace"
        value = rule.get("separator", ";").join(out.get(s, "") for s in rule["source_labels"])
        m = re.fullmatch(rule.get("regex", "(.*)"), value)
        if m is not None:
            # Go's $1 / ${1}, as Python's \g<1>
            template = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            out[rule["target_label"]] = m.expand(template)
    return out


class ConsulDiscovery:
    """Prometheus' Consul discovery loop, on aiohttp, publishing groups by service name."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.groups: dict[str, list[dict[str, str]]] = {}
        self.requests: list[str] = []
        self.changed = asyncio.Event()
        self._watches: dict[str, asyncio.Task[None]] = {}
        self.datacenter = ""

    async def _get(self, path: str, index: int) -> tuple[Any, int]:
        params = {"stale": "", "wait": WAIT}
        if index:
            params["index"] = str(index)
        async with self.http.get(path, params=params, headers={"X-Consul-Token": TOKEN}) as resp:
            assert resp.status == 200, await resp.text()
            self.requests.append(str(resp.url.relative()))
            int(resp.headers["X-Consul-LastContact"])  # parseQueryMeta reads both
            assert resp.headers["X-Consul-KnownLeader"] == "true"
            return await resp.json(), int(resp.headers["X-Consul-Index"])

    async def run(self) -> None:
        async with self.http.get("/v1/agent/self", headers={"X-Consul-Token": TOKEN}) as resp:
            assert resp.status == 200
            info = await resp.json()
        self.datacenter = info["Config"]["Datacenter"]
        last = 0
        try:
            while True:
                services, index = await self._get("/v1/catalog/services", last)
                if index == last:
                    continue
                last = index
                for name in services:
                    if name not in self._watches:
                        self._watches[name] = asyncio.create_task(self._watch(name))
                for name in list(self._watches):
                    if name not in services:
                        self._watches.pop(name).cancel()
                        self.groups[name] = []  # the clearing group
                        self.changed.set()
        finally:
            for task in self._watches.values():
                task.cancel()

    async def _watch(self, name: str) -> None:
        last = 0
        while True:
            entries, index = await self._get(f"/v1/health/service/{name}", last)
            if index == last:
                continue
            last = index
            self.groups[name] = [target(e, name, self.datacenter) for e in entries]
            self.changed.set()

    async def until(self, what: str, check: Callable[[], bool], deadline: float = 30.0) -> None:
        started = time.monotonic()
        while not check():
            remaining = deadline - (time.monotonic() - started)
            assert remaining > 0, f"{what}: not within {deadline:.0f}s; groups: {self.groups}"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass
        print(f"{what}: {time.monotonic() - started:.2f}s")


@pytest.fixture
async def protected(make_config: Callable[..., Config]) -> AsyncIterator[App]:
    async with run_app(make_config(api_tokens=TOKEN, protect_reads=True)) as started:
        yield started


async def test_prometheus_consul_sd_sequence(protected: App, unique_name: str) -> None:
    """1. two instances of a service become two targets with Prometheus' labels; 2. a third
    registration arrives through the blocking health watch; 3. a new service through the
    catalog watch; 4. a lapsed TTL lease leaves with a moved index (the reaper); 5. a service
    whose instances are all deregistered gets its clearing group."""
    base = f"http://127.0.0.1:{protected.http_port}"
    headers = {"X-Consul-Token": TOKEN}
    web, db = unique_name, unique_name + "-db"
    async with aiohttp.ClientSession(base_url=base, headers=headers) as http:

        async def register(body: dict[str, Any]) -> None:
            resp = await http.put("/v1/agent/service/register", data=json.dumps(body))
            assert resp.status == 200, await resp.text()

        for i in (1, 2):
            body = {"Name": web, "ID": f"{web}-{i}", "Address": f"10.30.0.{i}", "Port": 8080,
                    "Tags": ["http", "v1"], "Meta": {"team": "blue"}}  # fmt: skip
            await register(body)
        sd = ConsulDiscovery(http)
        runner = asyncio.create_task(sd.run())
        try:
            await sd.until("two targets", lambda: len(sd.groups.get(web, [])) == 2)
            first = sorted(sd.groups[web], key=lambda t: t["__address__"])[0]
            assert first == {
                "__address__": "10.30.0.1:8080",
                "__meta_consul_address": "10.30.0.1",
                "__meta_consul_node": "10.30.0.1",
                "__meta_consul_tags": ",http,v1,",
                "__meta_consul_service_address": "10.30.0.1",
                "__meta_consul_service_port": "8080",
                "__meta_consul_service_id": f"{web}-1",
                "__meta_consul_health": "passing",
                "__meta_consul_service": web,
                "__meta_consul_dc": "dc1",
                "__meta_consul_service_metadata_team": "blue",
                "__meta_consul_service_metadata_sd_port_default": "8080",
                "__meta_consul_tagged_address_lan": "10.30.0.1",
                "__meta_consul_tagged_address_wan": "10.30.0.1",
            }

            await register({"Name": web, "ID": f"{web}-3", "Address": "10.30.0.3", "Port": 8080,
                            "Meta": {"team": "blue"}, "Check": {"TTL": "1s"}})  # fmt: skip
            await sd.until("third target", lambda: len(sd.groups[web]) == 3)
            await register({"Name": db, "ID": f"{db}-1", "Address": "10.30.1.1", "Port": 5432})
            await sd.until("new service", lambda: len(sd.groups.get(db, [])) == 1)
            await sd.until(
                "lapsed lease dropped",
                lambda: (
                    {t["__meta_consul_service_id"] for t in sd.groups[web]}
                    == {f"{web}-1", f"{web}-2"}
                ),
            )
            resp = await http.put(f"/v1/agent/service/deregister/{db}-1")
            assert resp.status == 200
            await sd.until("service gone", lambda: sd.groups.get(db) == [])

            # The README's consul_sd relabeling, applied to what this discovery found: the
            # service label, and the "metrics" port instead of ServicePort once it exists.
            job = readme_consul_sd_config()
            assert job["consul_sd_configs"][0]["server"] == "sd.example:3000"
            ports = json.dumps({"metrics": {"port": 9100}})
            bearer = {"Authorization": f"Bearer {TOKEN}"}  # the native API's way
            resp = await http.put(f"/service/{web}/ports", data=ports, headers=bearer)
            assert resp.status == 200, await resp.text()
            meta = "__meta_consul_service_metadata_sd_port_metrics"
            await sd.until("metrics port seen", lambda: all(meta in t for t in sd.groups[web]))
            relabeled = [relabel(t, job["relabel_configs"]) for t in sd.groups[web]]
            assert sorted(t["__address__"] for t in relabeled) == [
                "10.30.0.1:9100",
                "10.30.0.2:9100",
            ]
            assert {t["service"] for t in relabeled} == {web}
        finally:
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner
    blocking = [r for r in sd.requests if "index=" in r]
    assert blocking and all("stale=" in r and "wait=120000ms" in r for r in sd.requests)
    print(f"{len(sd.requests)} requests, {len(blocking)} of them blocking")
