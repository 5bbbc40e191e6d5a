"""The Consul-compatible API under /v1/ through a real server, against the run's PostgreSQL:
the mapping, blocking queries, writes, tokens and the answers for what is not implemented."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import put

from service_discovery.app import App, run_app
from service_discovery.config import Config

pytestmark = pytest.mark.asyncio
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


async def _ok(resp: aiohttp.ClientResponse) -> Any:
    assert resp.status == 200, await resp.text()
    return await resp.json(content_type=None)


async def _error(resp: aiohttp.ClientResponse, status: int, *words: str) -> str:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error", "message"}
    for word in words:
        assert word in body["message"], body["message"]
    return str(body["message"])


def _registration(name: str, ip: str, **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Address": ip, **extra}


async def test_register_read_back_deregister(http: aiohttp.ClientSession, unique_name: str) -> None:
    """1. register an instance with ID, port, tags, meta and a TTL check; 2. read it through the
    catalog, health and agent routes and the native API; 3. pass its check; 4. deregister."""
    body = _registration(
        unique_name,
        "10.20.0.1",
        ID="web-1",
        Port=8080,
        Tags=["primary", "v1"],
        Meta={"version": "4.0"},
        Check={"TTL": "30s", "DeregisterCriticalServiceAfter": "90m"},
    )
    body["ID"] = f"{unique_name}-one"
    assert (await put(http, "/v1/agent/service/register", body)).status == 200

    native = await _ok(await http.get(f"/service/{unique_name}"))
    assert native["attributes"] == {"version": "4.0"}
    assert native["named_ports"]["default"]["port"] == 8080
    [endpoint] = native["endpoints"]
    assert endpoint["ip"] == "10.20.0.1" and endpoint["tags"] == ["primary", "v1"]
    assert endpoint["ttl_seconds"] == 30
    assert endpoint["instance_id"] == f"{unique_name}-one"

    resp = await http.get(f"/v1/catalog/service/{unique_name}")
    [entry] = await _ok(resp)
    assert int(resp.headers["X-Consul-Index"]) == native["index"]
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert resp.headers["X-Consul-LastContact"] == "0"
    assert entry["ServiceID"] == f"{unique_name}-one"
    assert entry["ServiceName"] == unique_name
    assert entry["ServiceAddress"] == entry["Address"] == entry["Node"] == "10.20.0.1"
    assert entry["ServicePort"] == 8080
    assert entry["ServiceTags"] == ["primary", "v1"]
    assert entry["ServiceMeta"] == {"version": "4.0", "sd-port-default": "8080"}
    assert entry["ServiceTaggedAddresses"] == {"default": {"Address": "10.20.0.1", "Port": 8080}}
    assert entry["Datacenter"] == "dc1"

    [health] = await _ok(await http.get(f"/v1/health/service/{unique_name}?passing=1"))
    assert health["Service"]["ID"] == f"{unique_name}-one"
    assert health["Service"]["Port"] == 8080
    assert health["Node"]["Node"] == "10.20.0.1"
    [check] = health["Checks"]
    assert check["CheckID"] == f"service:{unique_name}-one"
    assert check["Status"] == "passing" and check["Type"] == "ttl"

    services = await _ok(await http.get("/v1/catalog/services"))
    assert services[unique_name] == ["primary", "v1"]
    agent = await _ok(await http.get("/v1/agent/services"))
    assert agent[f"{unique_name}-one"]["Service"] == unique_name
    one = await _ok(await http.get(f"/v1/agent/service/{unique_name}-one"))
    assert one["Address"] == "10.20.0.1"
    checks = await _ok(await http.get("/v1/agent/checks"))
    assert f"service:{unique_name}-one" in checks

    before = native["endpoints"][0]["expires_at"]
    await asyncio.sleep(0.05)
    resp = await put(http, f"/v1/agent/check/pass/service:{unique_name}-one?note=fine")
    assert resp.status == 200, await resp.text()
    after = (await _ok(await http.get(f"/service/{unique_name}")))["endpoints"][0]["expires_at"]
    assert after > before
    resp = await put(
        http, f"/v1/agent/check/update/service:{unique_name}-one", {"Status": "passing"}
    )
    assert resp.status == 200, await resp.text()

    resp = await put(http, f"/v1/agent/service/deregister/{unique_name}-one")
    assert resp.status == 200
    assert (await _ok(await http.get(f"/service/{unique_name}")))["endpoints"] == []
    assert await _ok(await http.get(f"/v1/health/service/{unique_name}")) == []
    assert unique_name not in await _ok(await http.get("/v1/catalog/services"))
    # deregistering again changes nothing, as in Consul
    assert (await put(http, f"/v1/agent/service/deregister/{unique_name}-one")).status == 200


async def test_native_endpoints_have_derived_ids(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    """An endpoint registered natively is an instance too: ID `<service>-<address>`, and the
    first port by name when the service has no `default` port (or the one ?port= names)."""
    await put(http, "/service", {"name": unique_name, "named_ports": {
        "metrics": {"port": 9100}, "http": {"port": 8000}}})  # fmt: skip
    await put(http, f"/service/{unique_name}/register", {"ip": "10.20.1.1", "ttl_seconds": 60})
    [entry] = await _ok(await http.get(f"/v1/catalog/service/{unique_name}"))
    assert entry["ServiceID"] == f"{unique_name}-10.20.1.1"
    assert entry["ServicePort"] == 8000  # "http" < "metrics"
    assert entry["ServiceMeta"] == {"sd-port-http": "8000", "sd-port-metrics": "9100"}
    [entry] = await _ok(await http.get(f"/v1/catalog/service/{unique_name}?port=metrics"))
    assert entry["ServicePort"] == 9100
    await _error(await http.get(f"/v1/catalog/service/{unique_name}?port=nope"), 404, "metrics")
    resp = await put(http, f"/v1/agent/check/pass/service:{unique_name}-10.20.1.1")
    assert resp.status == 200, await resp.text()
    resp = await put(http, f"/v1/agent/service/deregister/{unique_name}-10.20.1.1")
    assert resp.status == 200
    assert (await _ok(await http.get(f"/service/{unique_name}")))["endpoints"] == []


async def test_tag_filters_nodes_and_unknowns(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    for i, tags in enumerate((["a", "b"], ["a"], [])):
        body = _registration(unique_name, f"10.20.2.{i + 1}", ID=f"{unique_name}-{i}", Tags=tags)
        assert (await put(http, "/v1/agent/service/register", body)).status == 200
    both = await _ok(await http.get(f"/v1/health/service/{unique_name}?tag=a&tag=b"))
    assert [e["Service"]["ID"] for e in both] == [f"{unique_name}-0"]
    some = await _ok(await http.get(f"/v1/catalog/service/{unique_name}?tag=a"))
    assert sorted(e["ServiceID"] for e in some) == [f"{unique_name}-0", f"{unique_name}-1"]
    assert await _ok(await http.get(f"/v1/catalog/service/{unique_name}?node-meta=k:v")) == []

    nodes = await _ok(await http.get("/v1/catalog/nodes"))
    assert {"10.20.2.1", "10.20.2.2", "10.20.2.3"} <= {n["Node"] for n in nodes}
    node = await _ok(await http.get("/v1/catalog/node/10.20.2.1"))
    assert node["Node"]["Address"] == "10.20.2.1"
    assert node["Services"][f"{unique_name}-0"]["Tags"] == ["a", "b"]
    assert await _ok(await http.get("/v1/catalog/node/10.255.255.254")) is None
    assert await _ok(await http.get("/v1/catalog/service/no-such-service")) == []
    assert await _ok(await http.get("/v1/health/service/no-such-service")) == []
    await _error(await http.get("/v1/agent/service/nope"), 404, "unknown service ID")
    assert await _ok(await http.get("/v1/catalog/datacenters")) == ["dc1"]
    await _error(await http.get("/v1/catalog/services?dc=dc2"), 404, "dc1")
    await _error(await http.get("/v1/catalog/services?filter=x"), 400, "tag=")
    await _error(await http.get("/v1/catalog/services?ns=team"), 400, "Enterprise")
    assert await _ok(await http.get("/v1/catalog/services?dc=dc1&stale&ns=default")) is not None


async def test_agent_self_and_status(http: aiohttp.ClientSession, app: App) -> None:
    me = await _ok(await http.get("/v1/agent/self"))
    assert me["Config"]["Datacenter"] == "dc1"
    assert isinstance(me["Config"]["Version"], str) and me["Config"]["NodeName"]
    assert all(isinstance(v, dict) for v in me.values())  # the Go client reads a map of maps
    leader = await _ok(await http.get("/v1/status/leader"))
    assert leader == f"127.0.0.1:{app.http_port}"
    assert await _ok(await http.get("/v1/status/peers")) == [leader]


# (Name, body extras, status, words in the message): what a registration may not do.
REFUSED = [
    ({"Check": {"HTTP": "http://x/health", "Interval": "10s"}}, 400, ["HTTP", "TTL"]),
    ({"Check": {"Args": ["/bin/true"], "Interval": "10s"}}, 400, ["args", "TTL"]),
    ({"Checks": [{"TTL": "5s"}, {"TTL": "9s"}]}, 400, ["one TTL check"]),
    ({"Check": {"TTL": "10s", "Status": "critical"}}, 400, ["passing"]),
    ({"Check": {"TTL": "0s"}}, 400, ["1s"]),
    ({"Check": {"TTL": "ten"}}, 400, ["duration"]),
    ({"Kind": "connect-proxy"}, 400, ["Kind"]),
    ({"Connect": {"Native": True}}, 400, ["Connect"]),
    ({"Weights": {"Passing": 10, "Warning": 1}}, 400, ["named port"]),
    ({"Address": ""}, 400, ["Address is required"]),
    ({"Address": "web.example.com"}, 400, ["IPv4 or IPv6"]),
    ({"ID": "has/slash"}, 400, ["instance ID"]),
    ({"Port": 70000}, 400, ["65535"]),
    ({"Namespace": "team"}, 400, ["default"]),
]


@pytest.mark.parametrize(("extra", "status", "words"), REFUSED)
async def test_registration_refusals(
    http: aiohttp.ClientSession, unique_name: str, extra: dict[str, Any], status: int,
    words: list[str],
) -> None:  # fmt: skip
    body = {**_registration(unique_name, "10.20.3.1"), **extra}
    await _error(await put(http, "/v1/agent/service/register", body), status, *words)


async def test_registration_conflicts_and_moves(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    """1. a port other than the service's `default` is 409; 2. Meta that differs from the
    service's attributes is 409; 3. an ID registered again at another address moves there;
    4. a new ID at an address replaces the old one (a restarted process); 5. an ID held by
    another service moves too; 6. lowercase keys (python-consul2's) work."""
    reg = _registration(unique_name, "10.20.4.1", ID=f"{unique_name}-a", Port=8080,
                        Meta={"team": "x"})  # fmt: skip
    assert (await put(http, "/v1/agent/service/register", reg)).status == 200
    other_port = {**reg, "Port": 9090, "Address": "10.20.4.2"}
    await _error(await put(http, "/v1/agent/service/register", other_port), 409, "8080", "9090")
    other_meta = {**reg, "Meta": {"team": "y"}, "Address": "10.20.4.2"}
    await _error(await put(http, "/v1/agent/service/register", other_meta), 409, "Meta")

    moved = {**reg, "Address": "10.20.4.3"}
    assert (await put(http, "/v1/agent/service/register", moved)).status == 200
    ips = [e["ip"] for e in (await _ok(await http.get(f"/service/{unique_name}")))["endpoints"]]
    assert ips == ["10.20.4.3"]

    renamed = {**moved, "ID": f"{unique_name}-b"}
    assert (await put(http, "/v1/agent/service/register", renamed)).status == 200
    [entry] = await _ok(await http.get(f"/v1/catalog/service/{unique_name}"))
    assert entry["ServiceID"] == f"{unique_name}-b"
    await _error(await http.get(f"/v1/agent/service/{unique_name}-a"), 404)

    lower = {"name": unique_name + "-x", "id": f"{unique_name}-b", "address": "10.20.4.9",
             "check": {"ttl": "10s"}, "tags": ["lower"]}  # fmt: skip
    assert (await put(http, "/v1/agent/service/register", lower)).status == 200
    assert await _ok(await http.get(f"/v1/catalog/service/{unique_name}")) == []
    [entry] = await _ok(await http.get(f"/v1/catalog/service/{unique_name}-x"))
    assert entry["ServiceID"] == f"{unique_name}-b" and entry["ServiceTags"] == ["lower"]


async def test_checks_that_cannot_pass(http: aiohttp.ClientSession, unique_name: str) -> None:
    reg = _registration(unique_name, "10.20.5.1", ID=f"{unique_name}-nolease")
    assert (await put(http, "/v1/agent/service/register", reg)).status == 200
    await _error(
        await put(http, f"/v1/agent/check/pass/service:{unique_name}-nolease"), 404, "no TTL"
    )
    await _error(await put(http, "/v1/agent/check/pass/service:nobody"), 404, "register again")
    await _error(await put(http, "/v1/agent/check/pass/serfHealth"), 404)
    await _error(
        await put(http, f"/v1/agent/check/update/service:{unique_name}-nolease",
                   {"Status": "critical"}),
        400, "passing",
    )  # fmt: skip


async def test_unsupported_routes_say_what_is(http: aiohttp.ClientSession) -> None:
    for method, path, words in (
        ("GET", "/v1/kv/some/key", ["key/value", "GET /v1/catalog/services"]),
        ("PUT", "/v1/agent/check/fail/service:x", ["critical", "supported"]),
        ("GET", "/v1/acl/tokens", ["supported: GET /v1/catalog/services"]),
        ("GET", "/v1/health/state/any", ["/v1/health/service/"]),
    ):
        resp = await http.request(method, path)
        await _error(resp, 404, *words)
        assert resp.headers["X-Consul-KnownLeader"] == "true"
    resp = await http.delete("/v1/catalog/services")
    await _error(resp, 405)
    assert resp.headers["Allow"] == "GET"
    resp = await http.get("/v1/agent/service/register")  # a GET of a PUT route is an ID lookup
    await _error(resp, 404, "unknown service ID")
    resp = await http.post("/v1/agent/service/deregister/x")
    await _error(resp, 405)
    assert resp.headers["Allow"] == "PUT"


async def _index(http: aiohttp.ClientSession, path: str) -> int:
    resp = await http.get(path)
    assert resp.status == 200, await resp.text()
    return int(resp.headers["X-Consul-Index"])


async def test_blocking_queries(http: aiohttp.ClientSession, unique_name: str) -> None:
    """Consul's semantics: index 0 and an index that is not the current one answer at once; the
    current one waits for a change (then a higher index) or for `wait` (the same index)."""
    assert (await put(http, "/v1/agent/service/register",
                       _registration(unique_name, "10.20.6.1", ID="b1"))).status == 200  # fmt: skip
    path = f"/v1/health/service/{unique_name}"
    index = await _index(http, path)
    assert index >= 1
    for stale in (0, index - 1, index + 1000):
        started = time.monotonic()
        assert await _index(http, f"{path}?index={stale}&wait=30s") == index
        assert time.monotonic() - started < 10
    resp = await http.get(f"{path}?index={index}&wait=100ms")
    assert int(resp.headers["X-Consul-Index"]) == index  # timed out: the same index

    async def block() -> tuple[int, list[Any]]:
        resp = await http.get(f"{path}?index={index}&wait=60s")
        return int(resp.headers["X-Consul-Index"]), await resp.json()

    waiter = asyncio.create_task(block())
    await asyncio.sleep(0.2)
    assert not waiter.done()
    assert (await put(http, "/v1/agent/service/register",
                       _registration(unique_name, "10.20.6.2", ID="b2"))).status == 200  # fmt: skip
    new_index, entries = await asyncio.wait_for(waiter, 30)
    assert new_index > index and len(entries) == 2

    # A service that does not exist yet reports index 1 at least, and a wait on it ends when
    # it appears.
    missing = f"{path}-later"
    assert await _index(http, missing) >= 1
    waiter = asyncio.create_task(http.get(f"{missing}?index={await _index(http, missing)}"))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await put(
        http, "/v1/agent/service/register", _registration(unique_name + "-later", "10.20.6.3")
    )
    resp = await asyncio.wait_for(waiter, 30)
    # it wakes at the service's creation (no instance yet) or its registration
    assert int(resp.headers["X-Consul-Index"]) > 1
    assert len(await _ok(await http.get(missing))) == 1

    await _error(await http.get(f"{path}?index=x"), 400, "index")
    await _error(await http.get(f"{path}?index=1&wait=forever"), 400, "duration")


async def test_lapse_moves_the_index_through_the_reaper(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    """A lapsed lease leaves the answers at once (same index), and the reaper's deletion moves
    the index within about its interval (1 s): Prometheus' Consul SD, which drops answers whose
    index did not move, sees the instance go. Deadline generous; the time is printed."""
    reg = _registration(unique_name, "10.20.7.1", ID=f"{unique_name}-short", Check={"TTL": "1s"})
    keep = _registration(unique_name, "10.20.7.2", ID=f"{unique_name}-keep")
    for body in (reg, keep):
        assert (await put(http, "/v1/agent/service/register", body)).status == 200
    path = f"/v1/health/service/{unique_name}"
    index = await _index(http, path)
    started = time.monotonic()
    ids: list[str] = []
    while time.monotonic() - started < 30:
        resp = await http.get(f"{path}?index={index}&wait=20s")
        ids = [e["Service"]["ID"] for e in await resp.json()]
        if int(resp.headers["X-Consul-Index"]) > index:
            break
    moved = time.monotonic() - started
    print(f"lease of 1 s: index moved {moved:.2f} s after registration")
    assert ids == [f"{unique_name}-keep"]
    assert moved < 30
    await _error(await put(http, f"/v1/agent/check/pass/service:{unique_name}-short"), 404)


@pytest.fixture
async def protected(make_config: Callable[..., Config]) -> AsyncIterator[App]:
    async with run_app(make_config(api_tokens="s3cret", protect_reads=True)) as started:
        yield started


async def test_tokens_as_consul_clients_send_them(
    protected: App, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """1. writes need a token, given as Consul clients give it (X-Consul-Token, ?token=) or as
    a bearer token; 2. reads too under SD_PROTECT_READS, but not the liveness probe; 3. no
    token reaches a log line, whatever the answer."""
    caplog.set_level("DEBUG")
    body = json.dumps(_registration(unique_name, "10.20.8.1"))
    base = f"http://127.0.0.1:{protected.http_port}"
    async with aiohttp.ClientSession(base_url=base) as http:
        resp = await http.put("/v1/agent/service/register", data=body)
        await _error(resp, 401, "token")
        assert resp.headers["X-Consul-Default-ACL-Policy"] == "deny"
        await _error(await http.put("/v1/agent/service/register", data=body,
                                    headers={"X-Consul-Token": "wrong"}), 401)  # fmt: skip
        for kwargs in (
            {"headers": {"X-Consul-Token": "s3cret"}},
            {"headers": {"Authorization": "Bearer s3cret"}},
            {"params": {"token": "s3cret"}},
        ):
            resp = await http.put("/v1/agent/service/register", data=body, **kwargs)
            assert resp.status == 200, await resp.text()
        await _error(await http.get("/v1/catalog/services"), 401)
        assert (await http.get("/v1/catalog/services?token=s3cret")).status == 200
        assert (await http.get("/v1/status/leader")).status == 200  # liveness probe stays open
        # ?token= is for /v1/ only: the native API keeps to Authorization
        await _error(await http.get("/services?token=s3cret"), 401)
        await _error(await http.get("/v1/kv/x?token=s3cret"), 404)
        await _error(await http.get("/v1/catalog/services?token=s3cret&index=x"), 400)
    assert "s3cret" not in caplog.text


async def test_readme_curl_lines(app: App, unique_name: str) -> None:
    """The README's curl lines (Consul's documentation examples, the address changed to ours)
    all succeed against the daemon, in order, with only the port and the service's name
    changed for this run."""
    if shutil.which("curl") is None:
        pytest.fail("curl is required (make test installs it)")
    section = README.split("### curl, as in Consul's documentation", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    lines = [ln for ln in block.group(1).splitlines() if ln.startswith("curl")]
    assert len(lines) >= 6
    for line in lines:
        line = line.replace("127.0.0.1:3000", f"127.0.0.1:{app.http_port}")
        line = re.sub(r"\bredis\b", unique_name, line)
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(line), "-s", "-w", "\n%{http_code}", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        body, _, code = out.decode().rpartition("\n")
        assert code == "200", (line, code, body)
        if "/v1/health/service/" in line:
            [entry] = json.loads(body)
            assert entry["Service"]["ID"] == "redis1" and entry["Service"]["Port"] == 8000
            assert entry["Checks"][0]["Status"] == "passing"


async def test_consul_docs_register_sample(http: aiohttp.ClientSession, unique_name: str) -> None:
    """The registration payload of Consul's documentation, verbatim but for the name: it asks
    for a script check, which this daemon does not run, so it is refused saying what is
    supported instead of being registered as passing."""
    payload = {
        "ID": "redis1", "Name": unique_name, "Tags": ["primary", "v1"], "Address": "127.0.0.1",
        "Port": 8000, "Meta": {"redis_version": "4.0"}, "EnableTagOverride": False,
        "Check": {"DeregisterCriticalServiceAfter": "90m",
                  "Args": ["/usr/local/bin/check_redis.py"], "Interval": "10s", "Timeout": "5s"},
        "Weights": {"Passing": 10, "Warning": 1},
    }  # fmt: skip
    resp = await put(http, "/v1/agent/service/register?replace-existing-checks=true", payload)
    await _error(resp, 400, "args", "TTL")
    assert await _ok(await http.get(f"/v1/catalog/service/{unique_name}")) == []


async def test_check_ids_of_ids_with_colons(http: aiohttp.ClientSession, unique_name: str) -> None:
    """An ID may end in `:<digits>` (registrator's host:container:port): its check ID is still
    `service:<ID>`, and `service:<ID>:1` (Consul's numbering in a Checks list) works too."""
    instance = f"{unique_name}:10.20.9.1:8080"
    body = _registration(unique_name, "10.20.9.1", ID=instance, Checks=[{"TTL": "30s"}])
    assert (await put(http, "/v1/agent/service/register", body)).status == 200
    for check_id in (f"service:{instance}", f"service:{instance}:1"):
        resp = await put(http, f"/v1/agent/check/pass/{check_id}")
        assert resp.status == 200, (check_id, await resp.text())
    [check] = await _ok(await http.get(f"/v1/health/checks/{unique_name}"))
    assert check["CheckID"] == f"service:{instance}"
