"""Limits, each with a clear error: endpoints per service, tags per endpoint, attributes per
service, named ports per service, services, lengths of names and values, body size, and open
watches per client address. HTTP
answers 422 `limit_exceeded` (400 for a malformed name, 413 for a body, 429 for watches), and
gRPC applies the same rules with the same messages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

import aiohttp
import grpc
import pytest
from helpers import eventually, put, sample

from service_discovery import openapi
from service_discovery.app import App, run_app
from service_discovery.config import Config
from service_discovery.errors import LimitExceeded
from service_discovery.model import Limits, ServiceSpec
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc

LIMITS = {
    "max_endpoints_per_service": 3,
    "max_tags_per_endpoint": 2,
    "max_attributes": 2,
    "max_value_length": 8,
    "http_max_body_bytes": 1024,
    "max_watches_per_client": 3,
    "max_named_ports": 2,
}


@pytest.fixture
async def limited(make_config: Callable[..., Config]) -> AsyncIterator[App]:
    async with run_app(make_config(**LIMITS)) as app:
        yield app


@pytest.fixture
async def http(limited: App) -> AsyncIterator[aiohttp.ClientSession]:
    base = f"http://127.0.0.1:{limited.http_port}"
    async with aiohttp.ClientSession(base_url=base) as session:
        yield session


async def refused(resp: aiohttp.ClientResponse, status: int, code: str, *words: str) -> str:
    """Assert the error and that its message names the rule; returns the message."""
    body = await resp.json()
    answer = (resp.status, body)
    assert (resp.status, body.get("error")) == (status, code), answer
    for word in words:
        assert word in body["message"], (word, body["message"])
    return body["message"]


async def test_endpoints_per_service(http: aiohttp.ClientSession, unique_name: str) -> None:
    """The 4th endpoint is refused, naming the limit; re-registering one of the 3 is fine; after
    a deregistration there is room again."""
    await put(http, "/service", {"name": unique_name})
    for i in range(1, 4):
        ip = {"ip": f"10.9.0.{i}"}
        assert (await put(http, f"/service/{unique_name}/register", ip)).status == 200
    answer = await put(http, f"/service/{unique_name}/register", {"ip": "10.9.0.4"})
    await refused(answer, 422, "limit_exceeded", "3 endpoints", "limit")
    again = {"ip": "10.9.0.1", "tags": ["x"]}
    assert (await put(http, f"/service/{unique_name}/register", again)).status == 200
    async with http.delete(f"/service/{unique_name}/endpoints/10.9.0.2") as resp:
        assert resp.status == 204
    assert (await put(http, f"/service/{unique_name}/register", {"ip": "10.9.0.4"})).status == 200
    async with http.get(f"/service/{unique_name}/endpoints") as resp:
        assert len(await resp.json()) == 3


async def test_tags_attributes_and_lengths(http: aiohttp.ClientSession, unique_name: str) -> None:
    path = f"/service/{unique_name}/register"
    three = {"a": "1", "b": "2", "c": "3"}
    await refused(
        await put(http, "/service", {"name": unique_name, "attributes": three}),
        422, "limit_exceeded", "at most 2 attributes",
    )  # fmt: skip
    await refused(
        await put(http, "/service", {"name": unique_name, "attributes": {"a": "123456789"}}),
        422, "limit_exceeded", "longer than 8",
    )  # fmt: skip
    await refused(
        await put(http, "/service", {"name": unique_name, "attributes": {"123456789": "a"}}),
        422, "limit_exceeded", "attribute name", "longer than 8",
    )  # fmt: skip
    await refused(
        await put(http, "/service", {"name": "n" * 64}), 400, "invalid_input", "DNS label"
    )
    ok = {"name": unique_name, "attributes": {"a": "12345678", "b": ""}}
    assert (await put(http, "/service", ok)).status == 201

    await refused(
        await put(http, path, {"ip": "10.9.1.1", "tags": ["a", "b", "c"]}),
        422, "limit_exceeded", "at most 2 tags",
    )  # fmt: skip
    await refused(
        await put(http, path, {"ip": "10.9.1.1", "tags": ["123456789"]}),
        422, "limit_exceeded", "tag", "longer than 8",
    )  # fmt: skip
    # duplicates count once
    assert (await put(http, path, {"ip": "10.9.1.1", "tags": ["a", "a", "b"]})).status == 200
    long_port = {"a-very-long-port": {"port": 80}}
    await refused(
        await put(http, f"/service/{unique_name}/ports", long_port), 400, "invalid_input", "1-15"
    )
    async with http.get(f"/service/{unique_name}") as resp:
        svc = await resp.json()
    assert svc["attributes"] == {"a": "12345678", "b": ""} and svc["named_ports"] == {}


async def test_body_size(http: aiohttp.ClientSession, unique_name: str) -> None:
    big = {"name": unique_name, "attributes": {"a": "x" * 2000}}
    await refused(await put(http, "/service", big), 413, "too_large")


async def test_open_watches_per_client_address(
    limited: App, http: aiohttp.ClientSession, unique_name: str
) -> None:
    """Three blocking reads from one address are held; the fourth is 429 at once (plain reads
    still work); once the three return there is room again."""
    await put(http, "/service", {"name": unique_name})
    async with http.get(f"/service/{unique_name}") as resp:
        index = int(resp.headers["X-Index"])
    path = f"/service/{unique_name}?index={index}&wait=10s"

    async def watch() -> int:
        async with http.get(path) as resp:
            return resp.status

    held = [asyncio.create_task(watch()) for _ in range(3)]
    await eventually(lambda: sample(limited.metrics, "sd_http_blocking_queries") >= 3)
    async with http.get(path) as resp:
        await refused(resp, 429, "too_many_requests", "3 open watches")
    async with http.get(f"/service/{unique_name}") as resp:
        assert resp.status == 200
    await put(http, f"/service/{unique_name}/register", {"ip": "10.9.2.1"})
    assert await asyncio.wait_for(asyncio.gather(*held), 2) == [200, 200, 200]
    async with http.get(f"{path.split('?')[0]}?index={index + 1000}&wait=50ms") as resp:
        assert resp.status == 200


async def test_grpc_applies_the_same_limits(limited: App, unique_name: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.grpc_port}") as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        await stub.CreateService(pb.CreateServiceRequest(service=pb.Service(name=unique_name)))
        request = pb.RegisterEndpointRequest(
            service_name=unique_name, endpoint=pb.Endpoint(ip="10.9.3.1", tags=["a", "b", "c"])
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterEndpoint(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "at most 2 tags" in (err.value.details() or "")
        four = [pb.Endpoint(ip=f"10.9.5.{i}") for i in range(4)]
        bulk = pb.RegisterEndpointsRequest(service_name=unique_name, endpoints=four)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterEndpoints(bulk, timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "at most 3 endpoints" in (err.value.details() or "")


async def test_watches_count_once_per_address_across_front_ends(
    limited: App, http: aiohttp.ClientSession, unique_name: str
) -> None:
    """The watch limit is per client address, whatever the client speaks: 1. two gRPC Watch
    streams and one HTTP blocking read from one address fill the 3 slots; 2. a further
    blocking read is 429 and a further Watch RESOURCE_EXHAUSTED; 3. once the blocking read
    returns, a Watch fits again."""
    await put(http, "/service", {"name": unique_name})
    async with http.get(f"/service/{unique_name}") as resp:
        index = int(resp.headers["X-Index"])
    path = f"/service/{unique_name}?index={index}&wait=10s"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.grpc_port}") as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        streams = [stub.Watch(pb.WatchRequest(service_name=unique_name)) for _ in range(2)]
        for stream in streams:
            assert (await asyncio.wait_for(stream.read(), 5)).kind == pb.SNAPSHOT

        async def watch() -> int:
            async with http.get(path) as resp:
                return resp.status

        held = asyncio.create_task(watch())
        await eventually(lambda: sample(limited.metrics, "sd_http_blocking_queries") >= 1)
        async with http.get(path) as resp:
            await refused(resp, 429, "too_many_requests", "3 open watches")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(stub.Watch(pb.WatchRequest()).read(), 5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        await put(http, f"/service/{unique_name}/register", {"ip": "10.9.4.1"})
        assert await asyncio.wait_for(held, 2) == 200
        third = stub.Watch(pb.WatchRequest())
        assert (await asyncio.wait_for(third.read(), 5)).kind == pb.SNAPSHOT
        for call in (*streams, third):
            call.cancel()


async def test_bulk_registration_within_the_endpoint_limit(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    """A list longer than the limit is refused before the database; a list that would take the
    service over the limit is refused whole; with replace only the list counts; a body over
    HTTP_MAX_BODY_BYTES is 413."""
    path = f"/service/{unique_name}/endpoints"
    assert (await put(http, "/service", {"name": unique_name})).status == 201
    four = [{"ip": f"10.9.1.{i}"} for i in range(4)]
    await refused(await put(http, path, four), 422, "limit_exceeded", "at most 3 endpoints")
    assert (await put(http, path, four[:2])).status == 200
    over = [{"ip": "10.9.2.1"}, {"ip": "10.9.2.2"}]
    await refused(await put(http, path, over), 422, "limit_exceeded", "4 endpoints", "limit of 3")
    async with http.get(path) as resp:
        assert sorted(e["ip"] for e in await resp.json()) == ["10.9.1.0", "10.9.1.1"]
    three = {"endpoints": [{"ip": f"10.9.3.{i}"} for i in range(3)], "replace": True}
    assert (await put(http, path, three)).status == 200
    async with http.get(path) as resp:
        assert len(await resp.json()) == 3
    big = [{"ip": "10.9.4.1", "tags": ["x" * 8]}] * 40
    await refused(await put(http, path, big), 413, "too_large")


async def test_named_ports_per_service(http: aiohttp.ClientSession, unique_name: str) -> None:
    """Three ports at creation are refused; two are fine; a third added later is refused and
    leaves the two; changing one of the two is fine (the total counts, not the request)."""
    port = {"protocol": "tcp", "port": 80}
    three = {"a": port, "b": port, "c": port}
    await refused(
        await put(http, "/service", {"name": unique_name, "named_ports": three}),
        422, "limit_exceeded", "at most 2 named ports",
    )  # fmt: skip
    two = {"name": unique_name, "named_ports": {"a": port, "b": port}}
    assert (await put(http, "/service", two)).status == 201
    await refused(
        await put(http, f"/service/{unique_name}/ports", {"c": port}),
        422, "limit_exceeded", "at most 2 named ports", "not 3",
    )  # fmt: skip
    resp = await put(http, f"/service/{unique_name}/ports", {"b": {"port": 8080}})
    ports = await resp.json()
    assert resp.status == 200 and sorted(ports) == ["a", "b"] and ports["b"]["port"] == 8080


async def test_services_in_the_registry(
    new_database: Callable[..., contextlib.AbstractContextManager[str]],
    make_config: Callable[..., Config],
    unique_name: str,
) -> None:
    """On an empty database with room for 3 services: 1. six creations at once through two
    replicas, of which exactly 3 succeed (the count is taken under a lock), the others refused
    naming the limit; 2. after a deletion there is room for one more."""
    with new_database("sd_limits") as url:
        config = make_config(database_url=url, max_services=3)
        async with run_app(config) as one, run_app(config) as two:
            results = await asyncio.gather(
                *(
                    (one, two)[i % 2].catalog.create_service(ServiceSpec(f"{unique_name}-{i}"))
                    for i in range(6)
                ),
                return_exceptions=True,
            )
            created = [r for r in results if not isinstance(r, BaseException)]
            errors = [r for r in results if isinstance(r, BaseException)]
            assert len(created) == 3, results
            assert all(isinstance(e, LimitExceeded) for e in errors), errors
            assert "already has 3 services (the limit is 3)" in str(errors[0])
            await one.catalog.delete_service(created[0].name)
            await two.catalog.create_service(ServiceSpec(f"{unique_name}-again"))
            with pytest.raises(LimitExceeded):
                await one.catalog.create_service(ServiceSpec(f"{unique_name}-more"))


def test_the_model_and_openapi_state_the_settings_limits() -> None:
    """The model's default limits are the settings' defaults, and the OpenAPI document states
    the limits of the server it describes."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for f in dataclasses.fields(Limits):
        assert f.default == defaults[f.name], f.name
    limits = Limits.from_config(Config(**LIMITS))
    schemas = openapi.spec(limits)["components"]["schemas"]
    assert schemas["NamedPorts"]["maxProperties"] == LIMITS["max_named_ports"]
