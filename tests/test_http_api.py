"""The HTTP API through a real server on an ephemeral port, backed by the run's PostgreSQL."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from helpers import eventually, put, sample

from service_discovery.app import App

pytestmark = pytest.mark.asyncio


async def _error(resp: aiohttp.ClientResponse, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["error"] == code
    assert body["message"]
    return body


async def test_design_transcript(http: aiohttp.ClientSession, unique_name: str) -> None:
    """1. create, 2. register, 3. add a port (both spellings), 4. read everything back."""
    resp = await put(http, "/service", {"name": unique_name, "attributes": {"attr-1": "value-1"}})
    assert resp.status == 201
    created = await resp.json()
    assert created["name"] == unique_name and len(created["id"]) == 36
    resp = await put(http, f"/service/{unique_name}/register", {"ip": "127.0.0.1", "tags": []})
    assert resp.status == 200
    resp = await put(
        http, f"/service/{unique_name}/port", {"http": {"protocol": "tcp", "port": 8000}}
    )
    assert resp.status == 200
    resp = await put(
        http, f"/service/{unique_name}/ports", {"grpc": {"protocol": "tcp", "port": 9000}}
    )
    assert resp.status == 200

    resp = await http.get(f"/service/{unique_name}")
    assert resp.status == 200
    svc = await resp.json()
    assert svc["attributes"] == {"attr-1": "value-1"}
    assert svc["named_ports"]["http"] == {
        "protocol": "tcp",
        "port": 8000,
        "priority": 1,
        "weight": 1,
    }
    assert svc["named_ports"]["grpc"]["port"] == 9000
    assert svc["endpoints"] == [{"service_name": unique_name, "ip": "127.0.0.1", "tags": []}]
    assert int(resp.headers["X-Index"]) == svc["index"]

    resp = await http.get(f"/service/{unique_name}/endpoints")
    assert await resp.json() == [{"service_name": unique_name, "ip": "127.0.0.1", "tags": []}]
    listing = {s["name"]: s for s in await (await http.get("/services")).json()}
    assert "endpoints" not in listing[unique_name]
    assert listing[unique_name]["endpoint_count"] == 1  # live endpoints: the dashboard's column


async def test_reregister_updates_tags_and_names_are_case_insensitive(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    await put(http, "/service", {"name": unique_name})
    await put(http, f"/service/{unique_name}/register", {"ip": "10.0.0.1", "tags": ["a"]})
    resp = await put(
        http, f"/service/{unique_name.upper()}/register", {"ip": "10.0.0.1", "tags": ["b"]}
    )
    assert resp.status == 200
    eps = await (await http.get(f"/service/{unique_name}/endpoints")).json()
    assert [e["tags"] for e in eps] == [["b"]]
    await _error(await put(http, "/service", {"name": unique_name.upper()}), 409, "already_exists")


async def test_ipv6_is_canonicalised(http: aiohttp.ClientSession, unique_name: str) -> None:
    await put(http, "/service", {"name": unique_name})
    resp = await put(http, f"/service/{unique_name}/register", {"ip": "2001:DB8:0:0::1"})
    assert (await resp.json())["ip"] == "2001:db8::1"
    resp = await http.delete(f"/service/{unique_name}/endpoints/2001:db8::1")
    assert resp.status == 204


async def test_deregister_and_delete(http: aiohttp.ClientSession, unique_name: str) -> None:
    await put(
        http,
        "/service",
        {"name": unique_name, "named_ports": {"dns": {"protocol": "udp", "port": 53}}},
    )
    await put(http, f"/service/{unique_name}/register", {"ip": "10.0.0.1"})
    await put(http, f"/service/{unique_name}/register", {"ip": "10.0.0.2"})
    assert (await http.delete(f"/service/{unique_name}/endpoints/10.0.0.1")).status == 204
    eps = await (await http.get(f"/service/{unique_name}/endpoints")).json()
    assert [e["ip"] for e in eps] == ["10.0.0.2"]
    await _error(await http.delete(f"/service/{unique_name}/endpoints/10.0.0.1"), 404, "not_found")
    await _error(
        await http.delete(f"/service/{unique_name}/endpoints/not-an-ip"), 400, "invalid_input"
    )
    assert (await http.delete(f"/service/{unique_name}")).status == 204
    await _error(await http.get(f"/service/{unique_name}"), 404, "not_found")
    await _error(await http.delete(f"/service/{unique_name}"), 404, "not_found")
    # the name is free again, and nothing of the old service comes back
    assert (await put(http, "/service", {"name": unique_name})).status == 201
    svc = await (await http.get(f"/service/{unique_name}")).json()
    assert svc["endpoints"] == [] and svc["named_ports"] == {}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_input"),
        (b"", 400, "invalid_input"),
        (b"[1, 2]", 400, "invalid_input"),
        ({"attributes": {}}, 400, "invalid_input"),
        ({"name": ""}, 400, "invalid_input"),
        ({"name": "-bad"}, 400, "invalid_input"),
        ({"name": "under_score"}, 400, "invalid_input"),
        ({"name": "a" * 64}, 400, "invalid_input"),
        ({"name": 42}, 400, "invalid_input"),
        ({"name": "ok", "attributes": {"k": 1}}, 400, "invalid_input"),
        ({"name": "ok", "attributes": ["k"]}, 400, "invalid_input"),
        (
            {"name": "ok", "named_ports": {"http": {"protocol": "icmp", "port": 80}}},
            400,
            "invalid_input",
        ),
        (
            {"name": "ok", "named_ports": {"http": {"protocol": "tcp", "port": 0}}},
            400,
            "invalid_input",
        ),
        (
            {"name": "ok", "named_ports": {"http": {"protocol": "tcp", "port": 65536}}},
            400,
            "invalid_input",
        ),
        (
            {"name": "ok", "named_ports": {"http": {"protocol": "tcp", "port": "80"}}},
            400,
            "invalid_input",
        ),
        (
            {"name": "ok", "named_ports": {"a-very-long-port-name": {"port": 80}}},
            400,
            "invalid_input",
        ),
        ({"name": "ok", "named_ports": {"a--b": {"port": 80}}}, 400, "invalid_input"),
        ({"name": "ok", "named_ports": {"123": {"port": 80}}}, 400, "invalid_input"),
        ({"name": "ok", "named_ports": {"a_b": {"port": 80}}}, 400, "invalid_input"),
    ],
)
async def test_create_validation(
    http: aiohttp.ClientSession, body: object, status: int, code: str
) -> None:
    await _error(await put(http, "/service", body), status, code)
    # and nothing was written
    names = [s["name"] for s in await (await http.get("/services")).json()]
    assert "ok" not in names


@pytest.mark.parametrize(
    "body",
    [{"ip": "256.0.0.1"}, {"ip": "example.com"}, {"ip": 12}, {},
     {"ip": "10.0.0.1", "tags": "x"}, {"ip": "10.0.0.1", "tags": [1]}, {"ip": "fe80::1%eth0"},
     {"ip": "10.0.0.1", "ttl_seconds": -1}],
)  # fmt: skip
async def test_register_validation(
    http: aiohttp.ClientSession, unique_name: str, body: object
) -> None:
    await put(http, "/service", {"name": unique_name})
    await _error(await put(http, f"/service/{unique_name}/register", body), 400, "invalid_input")
    assert await (await http.get(f"/service/{unique_name}/endpoints")).json() == []


async def test_lookalike_names_are_refused(http: aiohttp.ClientSession, unique_name: str) -> None:
    """Names that are not what they look like: a trailing newline passed a `$`-anchored match,
    and the Kelvin sign passed a check of the lowercased name ("\u212a".lower() == "k").
    1. a service `k...` exists; 2. each lookalike, as a service name (body or path), port name,
    tag or attribute name, is 400 invalid_input; 3. nothing was written and the real service
    is unchanged."""
    name = "k" + unique_name
    kelvin = "\u212a" + name[1:]
    assert kelvin.lower() == name
    assert (await put(http, "/service", {"name": name})).status == 201
    paths = {name + "\n": f"/service/{name}%0A", kelvin: f"/service/%E2%84%AA{name[1:]}"}
    for bad_name, path in paths.items():
        await _error(await put(http, "/service", {"name": bad_name}), 400, "invalid_input")
        for resp in (
            await http.get(path),
            await http.get(path + "/endpoints"),
            await put(http, path + "/register", {"ip": "10.0.0.1"}),
            await put(http, path + "/ports", {"http": {"port": 80}}),
            await http.delete(path),
        ):
            await _error(resp, 400, "invalid_input")
    for port in ("http\n", "\u212a8s", "kafka\u0131"):
        body = {port: {"port": 80}}
        await _error(await put(http, f"/service/{name}/ports", body), 400, "invalid_input")
    for tag in ("canary\n", "\u212aanary", "two words", "caf\u00e9"):
        body = {"ip": "10.0.0.1", "tags": [tag]}
        await _error(await put(http, f"/service/{name}/register", body), 400, "invalid_input")
    for key in ("team\n", "\u212aey", "a key"):
        body = {"name": name + "-x", "attributes": {key: "v"}}
        await _error(await put(http, "/service", body), 400, "invalid_input")
    names = [s["name"] for s in await (await http.get("/services")).json()]
    assert name in names and name + "-x" not in names
    svc = await (await http.get(f"/service/{name}")).json()
    assert svc["endpoints"] == [] and svc["named_ports"] == {}


async def test_unknown_service_writes_are_404(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    await _error(
        await put(http, f"/service/{unique_name}/register", {"ip": "10.0.0.1"}), 404, "not_found"
    )
    await _error(
        await put(http, f"/service/{unique_name}/ports", {"http": {"port": 1}}), 404, "not_found"
    )
    await _error(await http.get(f"/service/{unique_name}/endpoints"), 404, "not_found")


async def test_http_errors_are_json(http: aiohttp.ClientSession) -> None:
    await _error(await http.get("/no/such/route"), 404, "not_found")
    resp = await http.post("/services")
    await _error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]
    await _error(await put(http, "/service", b"x" * (1024 * 1024 + 1)), 413, "too_large")
    deep = b"[" * 100000 + b"]" * 100000
    await _error(await put(http, "/service", deep), 400, "invalid_input")


async def test_pretty_and_openapi(http: aiohttp.ClientSession) -> None:
    text = await (await http.get("/services?pretty=true")).text()
    assert text.startswith("[") and ("\n" in text or text == "[]")
    spec = await (await http.get("/openapi.json")).json()
    documented = set(spec["paths"])
    for route in ("/services", "/service", "/service/{name}", "/service/{name}/register",
                  "/service/{name}/endpoints", "/service/{name}/endpoints/{ip}",
                  "/service/{name}/endpoints/{ip}/heartbeat", "/service/{name}/ports",
                  "/service/{name}/dns",
                  "/healthz", "/ready", "/metrics"):  # fmt: skip
        assert route in documented


async def test_probes_and_metrics(http: aiohttp.ClientSession, unique_name: str) -> None:
    assert (await http.get("/healthz")).status == 200
    async with http.get("/ready") as resp:
        assert resp.status == 200
        state = await resp.json()
    assert state == {"ready": True, "draining": False, "database": "up", "copy": "live",
                     "stale_seconds": 0, "version": state["version"]}  # fmt: skip
    assert isinstance(state["version"], int)
    await put(http, "/service", {"name": unique_name})
    text = await (await http.get("/metrics")).text()
    assert 'sd_http_requests_total{method="PUT",route="/service",status="201"}' in text
    assert "sd_http_request_duration_seconds_bucket" in text
    assert "sd_registry_services " in text and "sd_registry_version " in text
    assert "sd_sync_listen_reconnects_total" in text


async def test_read_your_writes_under_concurrency(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    await put(http, "/service", {"name": unique_name})

    async def register_then_read(i: int) -> bool:
        ip = f"10.1.{i // 250}.{i % 250 + 1}"
        resp = await put(http, f"/service/{unique_name}/register", {"ip": ip})
        assert resp.status == 200
        eps = await (await http.get(f"/service/{unique_name}/endpoints")).json()
        return ip in {e["ip"] for e in eps}

    results = await asyncio.gather(*(register_then_read(i) for i in range(100)))
    assert all(results)


async def test_two_instances_converge(
    app: App, http: aiohttp.ClientSession, make_config, unique_name: str
) -> None:
    from service_discovery.app import run_app

    async with run_app(make_config()) as other:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{other.http_port}") as b:
            await put(http, "/service", {"name": unique_name})
            await put(http, f"/service/{unique_name}/register", {"ip": "10.9.9.9"})

            async def registered() -> list[str]:
                async with b.get(f"/service/{unique_name}/endpoints") as resp:
                    return [e["ip"] for e in await resp.json()] if resp.status == 200 else []

            await eventually(registered, what="the endpoint on the other instance")
            assert await registered() == ["10.9.9.9"]
            # and the other way round, deletions included
            assert (await b.delete(f"/service/{unique_name}")).status == 204

            async def deleted() -> bool:
                async with http.get(f"/service/{unique_name}") as resp:
                    return resp.status == 404

            await eventually(deleted, what="the deletion on the first instance")


# ---- bulk registration -------------------------------------------------------------------
async def test_bulk_registration_upserts_as_one_change(
    app: App, http: aiohttp.ClientSession, unique_name: str
) -> None:
    """1. three endpoints in one call (a bare array; one address twice, the last one wins):
    one write, one index move, each endpoint as stored; 2. again without replace: the given
    ones are updated, the others stay; 3. with replace: the list becomes the whole set and the
    answer names what was removed; 4. an empty list with replace removes every endpoint."""
    assert (await put(http, "/service", {"name": unique_name})).status == 201
    path = f"/service/{unique_name}/endpoints"
    writes_before = sample(app.metrics, "sd_write_batch_writes_sum")
    body = [
        {"ip": "10.8.0.1", "tags": ["old"]},
        {"ip": "10.8.0.2", "ttl_seconds": 30},
        {"ip": "10.8.0.1", "tags": ["a"]},
        {"ip": "::ffff:10.8.0.3"},
    ]
    resp = await put(http, path, body)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert sample(app.metrics, "sd_write_batch_writes_sum") == writes_before + 1
    assert answer["removed"] == [] and answer["service_name"] == unique_name
    assert int(resp.headers["X-Index"]) == answer["index"]
    stored = {e["ip"]: e for e in answer["endpoints"]}
    assert sorted(stored) == ["10.8.0.1", "10.8.0.2", "::ffff:10.8.0.3"]
    assert stored["10.8.0.1"]["tags"] == ["a"] and stored["10.8.0.2"]["ttl_seconds"] == 30
    assert stored["10.8.0.2"]["expires_at"] > 0
    async with http.get(f"/service/{unique_name}") as got:
        svc = await got.json()
        assert svc["index"] == answer["index"]
    assert sorted(e["ip"] for e in svc["endpoints"]) == sorted(stored)

    resp = await put(http, path, {"endpoints": [{"ip": "10.8.0.2", "tags": ["b"]}]})
    assert resp.status == 200
    assert (await resp.json())["index"] > answer["index"]
    async with http.get(path) as got:
        now = {e["ip"]: e["tags"] for e in await got.json()}
    assert now == {"10.8.0.1": ["a"], "10.8.0.2": ["b"], "::ffff:10.8.0.3": []}

    body2 = {"endpoints": [{"ip": "10.8.0.2"}, {"ip": "10.8.0.4"}], "replace": True}
    resp = await put(http, path, body2)
    replaced = await resp.json()
    assert sorted(replaced["removed"]) == ["10.8.0.1", "::ffff:10.8.0.3"]
    async with http.get(path) as got:
        assert sorted(e["ip"] for e in await got.json()) == ["10.8.0.2", "10.8.0.4"]

    resp = await put(http, path, {"endpoints": [], "replace": True})
    assert sorted((await resp.json())["removed"]) == ["10.8.0.2", "10.8.0.4"]
    async with http.get(path) as got:
        assert await got.json() == []


async def test_bulk_registration_refusals_register_nothing(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    """A missing service is 404, a malformed endpoint anywhere in the list or a malformed body
    is 400, and none of them registers anything."""
    path = f"/service/{unique_name}/endpoints"
    await _error(await put(http, path, [{"ip": "10.8.1.1"}]), 404, "not_found")
    assert (await put(http, "/service", {"name": unique_name})).status == 201
    bad = [{"ip": "10.8.1.1"}, {"ip": "10.8.1.999"}]
    await _error(await put(http, path, bad), 400, "invalid_input")
    await _error(await put(http, path, {"endpoints": [], "replace": "yes"}), 400, "invalid_input")
    await _error(await put(http, path, {"ip": "10.8.1.1"}), 400, "invalid_input")
    await _error(await put(http, path, "10.8.1.1"), 400, "invalid_input")
    async with http.get(path) as got:
        assert await got.json() == []
