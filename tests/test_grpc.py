"""The gRPC API through real channels on ephemeral ports, backed by the run's PostgreSQL: every
RPC and error code, the design's clients, health, reflection, Watch, auth, and the SIGTERM drain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import Daemon, eventually, sample, with_budgets

from service_discovery.app import App, run_app
from service_discovery.config import Config

# every error kind, by name: test_registry_errors_map_in_one_table spells out their codes (the
# same list as grpc_api.py's import, which `duplicates` reports as a pair; deliberate)
from service_discovery.errors import (
    STATUS,
    AlreadyExists,
    Conflict,
    Forbidden,
    InvalidInput,
    LimitExceeded,
    NotFound,
    NotReady,
    RegistryError,
    StoreUnavailable,
    TooManyRequests,
    Unauthenticated,
)
from service_discovery.grpc_calls import Call as _Call
from service_discovery.grpc_calls import CallStats as _CallStats
from service_discovery.grpc_calls import status_of
from service_discovery.metrics import Metrics
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc
from service_discovery.proto import generate

ROOT = Path(__file__).resolve().parent.parent
DESIGN_PROTO = ROOT / "tests" / "design" / "discovery.proto"
Code = grpc.StatusCode
TIMEOUT = 5.0


@pytest.fixture
async def stub(app: App) -> AsyncIterator[pb_grpc.DiscoveryServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        yield pb_grpc.DiscoveryServiceStub(channel)


async def code_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


async def create(stub: pb_grpc.DiscoveryServiceStub, name: str, **ports: int) -> pb.Service:
    named = {p: pb.NamedPort(protocol="tcp", port=n) for p, n in ports.items()}
    resp = await stub.CreateService(
        pb.CreateServiceRequest(service=pb.Service(name=name, named_ports=named)), timeout=TIMEOUT
    )
    return resp.service


def endpoint(ip: str, *tags: str, ttl: int = 0) -> pb.Endpoint:
    return pb.Endpoint(ip=ip, tags=tags, ttl_seconds=ttl)


# ---- generated code and wire compatibility ------------------------------------------------
def test_committed_modules_match_the_proto(tmp_path: Path) -> None:
    """Regenerate from protos/ and compare bytes: the committed modules are not stale."""
    out = generate.generate(tmp_path)
    for name in generate.GENERATED:
        fresh = (out / name).read_bytes()
        committed = (Path(generate.PACKAGE_DIR) / name).read_bytes()
        assert fresh == committed, (
            f"{name} differs from what grpcio-tools {version('grpcio-tools')} generates from "
            "protos/: run python -m service_discovery.proto.generate"
        )


def _descriptor_set(
    tmp_path: Path, include: str, proto: Path
) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    out = tmp_path / f"{proto.parent.name}.pb"
    assert protoc.main(["protoc", f"-I{include}", f"--descriptor_set_out={out}", str(proto)]) == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


def _messages(messages: Any, prefix: str = ".sd") -> dict[str, descriptor_pb2.DescriptorProto]:
    out = {}
    for m in messages:
        out[f"{prefix}.{m.name}"] = m
        out.update(_messages(m.nested_type, f"{prefix}.{m.name}"))
    return out


def test_proto_keeps_every_design_field_and_rpc(tmp_path: Path) -> None:
    """Every message, field (name, number, type, label) and RPC of the design is unchanged."""
    design = _descriptor_set(tmp_path, str(DESIGN_PROTO.parent), DESIGN_PROTO)
    ours = _descriptor_set(tmp_path, str(ROOT / "protos"), ROOT / "protos" / "discovery.proto")
    assert ours.package == design.package == "sd"
    ours_msgs = _messages(ours.message_type)
    for name, msg in _messages(design.message_type).items():
        assert name in ours_msgs, f"message {name} is missing"
        fields = {f.number: f for f in ours_msgs[name].field}
        for f in msg.field:
            got = fields.get(f.number)
            assert got is not None, f"{name}.{f.name} = {f.number} is missing"
            assert (got.name, got.type, got.label, got.type_name) == (
                f.name, f.type, f.label, f.type_name
            ), f"{name}.{f.name} = {f.number} changed"  # fmt: skip
    (design_svc,) = design.service
    ours_methods = {
        m.name: m for m in next(s for s in ours.service if s.name == design_svc.name).method
    }
    for m in design_svc.method:
        got = ours_methods[m.name]
        assert (got.input_type, got.output_type, got.server_streaming, got.client_streaming) == (
            m.input_type, m.output_type, m.server_streaming, m.client_streaming
        )  # fmt: skip


_DESIGN_CLIENT = """
import json, sys
import grpc
import discovery_pb2 as pb, discovery_pb2_grpc as pb_grpc

port, name = sys.argv[1], sys.argv[2]
stub = pb_grpc.DiscoveryServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
out = {}
stub.CreateService(pb.CreateServiceRequest(service=pb.Service(
    name=name, attributes={"team": "core"},
    named_ports={"http": pb.NamedPort(name="http", protocol="tcp", port=8080)})))
try:
    stub.CreateService(pb.CreateServiceRequest(service=pb.Service(name=name)))
except grpc.RpcError as exc:
    out["duplicate"] = exc.code().name
stub.RegisterEndpoint(pb.RegisterEndpointRequest(
    service_name=name, endpoint=pb.Endpoint(service_name=name, ip="10.1.2.3", tags=["a", "b"])))
stub.AddNamedPorts(pb.AddNamedPortsRequest(
    service_name=name, named_ports={"grpc": pb.NamedPort(protocol="tcp", port=9090)}))
svc = stub.GetService(pb.GetServiceRequest(service_name=name)).service
out["service"] = {"name": svc.name, "attributes": dict(svc.attributes),
                  "ports": {k: [p.name, p.protocol, p.port] for k, p in svc.named_ports.items()}}
out["listed"] = name in [s.name for s in stub.ListServices(pb.ListServicesRequest()).services]
eps = stub.LookupEndpoints(pb.LookupEndpointsRequest(service_name=name)).endpoints
out["endpoints"] = [[e.service_name, e.ip, list(e.tags)] for e in eps]
try:
    stub.GetService(pb.GetServiceRequest(service_name=name + "-missing"))
except grpc.RpcError as exc:
    out["missing"] = exc.code().name
print(json.dumps(out))
"""


async def test_client_generated_from_the_design_proto_works(
    app: App, stub: pb_grpc.DiscoveryServiceStub, unique_name: str, tmp_path: Path
) -> None:
    """1. compile tests/design/discovery.proto at test time; 2. run a client built from it (in
    its own process: its `sd.*` types would clash with ours in one descriptor pool); 3. check
    what it saw, and what our own client sees of the same writes."""
    from grpc_tools import protoc

    args = ["protoc", f"-I{DESIGN_PROTO.parent}", f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}", str(DESIGN_PROTO)]  # fmt: skip
    assert protoc.main(args) == 0
    (tmp_path / "client.py").write_text(_DESIGN_CLIENT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(tmp_path / "client.py"), str(app.grpc_port), unique_name,
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    seen = json.loads(stdout)
    assert seen == {
        "duplicate": "ALREADY_EXISTS",
        "service": {
            "name": unique_name,
            "attributes": {"team": "core"},
            "ports": {"http": ["http", "tcp", 8080], "grpc": ["grpc", "tcp", 9090]},
        },
        "listed": True,
        "endpoints": [[unique_name, "10.1.2.3", ["a", "b"]]],
        "missing": "NOT_FOUND",
    }
    svc = (await stub.GetService(pb.GetServiceRequest(service_name=unique_name))).service
    # ports sent without the added priority/weight get the defaults, as over HTTP
    assert (svc.named_ports["grpc"].priority, svc.named_ports["grpc"].weight) == (1, 1)
    assert [e.ttl_seconds for e in svc.endpoints] == [0]


# ---- every RPC ------------------------------------------------------------------------------
async def test_every_rpc_round_trip(
    stub: pb_grpc.DiscoveryServiceStub, http: aiohttp.ClientSession, unique_name: str
) -> None:
    """1. create with attributes and weighted ports; 2. register (one leased); 3. read back by
    Get/List/Lookup and over HTTP; 4. add ports; 5. heartbeat; 6. deregister; 7. delete."""
    ports = {"http": pb.NamedPort(protocol="tcp", port=80, priority=10, weight=5)}
    req = pb.CreateServiceRequest(
        service=pb.Service(name=unique_name, attributes={"env": "test"}, named_ports=ports)
    )
    created = (await stub.CreateService(req)).service
    assert created.name == unique_name and len(created.id) == 36 and created.index > 0

    reg = await stub.RegisterEndpoint(
        pb.RegisterEndpointRequest(service_name=unique_name, endpoint=endpoint("10.0.0.1", "x"))
    )
    assert reg.endpoint.ip == "10.0.0.1" and reg.endpoint.expires_at == 0
    leased = await stub.RegisterEndpoint(
        pb.RegisterEndpointRequest(service_name=unique_name, endpoint=endpoint("::1", ttl=30))
    )
    assert leased.endpoint.ttl_seconds == 30
    assert time.time() + 25 < leased.endpoint.expires_at <= time.time() + 31
    assert leased.index > reg.index

    # reads: the named ports (which the design's GetService left out) and the endpoints
    svc = (await stub.GetService(pb.GetServiceRequest(service_name=unique_name.upper()))).service
    assert svc.name == unique_name and dict(svc.attributes) == {"env": "test"}
    port = svc.named_ports["http"]
    assert (port.name, port.protocol, port.port, port.priority, port.weight) == (
        "http",
        "tcp",
        80,
        10,
        5,
    )
    assert sorted(e.ip for e in svc.endpoints) == ["10.0.0.1", "::1"]
    assert svc.index == leased.index
    listed = await stub.ListServices(pb.ListServicesRequest())
    mine = [s for s in listed.services if s.name == unique_name]
    assert len(mine) == 1 and not mine[0].endpoints and listed.version >= svc.index
    eps = await stub.LookupEndpoints(pb.LookupEndpointsRequest(service_name=unique_name))
    assert {(e.service_name, e.ip, tuple(e.tags)) for e in eps.endpoints} == {
        (unique_name, "10.0.0.1", ("x",)), (unique_name, "::1", ()),
    }  # fmt: skip
    over_http = await (await http.get(f"/service/{unique_name}")).json()
    assert over_http["index"] == svc.index and len(over_http["endpoints"]) == 2

    added = await stub.AddNamedPorts(
        pb.AddNamedPortsRequest(
            service_name=unique_name, named_ports={"dns": pb.NamedPort(protocol="udp", port=53)}
        )
    )
    assert set(added.service.named_ports) == {"http", "dns"}
    # answers are kept per registry view: a change must show in the next read
    again = (await stub.GetService(pb.GetServiceRequest(service_name=unique_name))).service
    assert set(again.named_ports) == {"http", "dns"} and again.index == added.service.index

    beat = await stub.Heartbeat(pb.HeartbeatRequest(service_name=unique_name, ip="0::1"))
    assert beat.expires_at >= leased.endpoint.expires_at

    await stub.DeregisterEndpoint(pb.DeregisterEndpointRequest(service_name=unique_name, ip="::1"))
    eps = await stub.LookupEndpoints(pb.LookupEndpointsRequest(service_name=unique_name))
    assert [e.ip for e in eps.endpoints] == ["10.0.0.1"]

    await stub.DeleteService(pb.DeleteServiceRequest(service_name=unique_name))
    code, _ = await code_of(stub.GetService(pb.GetServiceRequest(service_name=unique_name)))
    assert code == Code.NOT_FOUND
    assert (await http.get(f"/service/{unique_name}")).status == 404


# ---- error codes ----------------------------------------------------------------------------
def _error_cases(name: str) -> list[tuple[str, Any, grpc.StatusCode, str]]:
    """(rpc, request, code, part of the message) for a service `name` that exists, with one
    endpoint 10.9.9.9 without a lease."""
    missing = name + "-missing"
    bad_arg, limit, not_found = Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.NOT_FOUND

    def new(**service: Any) -> pb.CreateServiceRequest:
        return pb.CreateServiceRequest(service=pb.Service(**{"name": missing, **service}))

    def port(**fields: Any) -> dict[str, pb.NamedPort]:
        return {"http": pb.NamedPort(**fields)}

    def reg(e: pb.Endpoint | None = None, svc: str = name) -> pb.RegisterEndpointRequest:
        return pb.RegisterEndpointRequest(service_name=svc, endpoint=e)

    def add(ports: dict[str, pb.NamedPort], svc: str = name) -> pb.AddNamedPortsRequest:
        return pb.AddNamedPortsRequest(service_name=svc, named_ports=ports)

    precondition = Code.FAILED_PRECONDITION
    return [
        ("GetService", pb.GetServiceRequest(service_name=missing), not_found, "not found"),
        ("GetService", pb.GetServiceRequest(), bad_arg, "non-empty"),
        ("GetService", pb.GetServiceRequest(service_name="bad_name"), bad_arg, "DNS label"),
        ("LookupEndpoints", pb.LookupEndpointsRequest(service_name=missing), not_found, "not"),
        ("CreateService", new(name=name), Code.ALREADY_EXISTS, name),
        ("CreateService", pb.CreateServiceRequest(), bad_arg, "service is required"),
        ("CreateService", new(name="-x"), bad_arg, "DNS label"),
        ("CreateService", new(attributes={f"k{i}": "v" for i in range(65)}), limit, "at most 64"),
        ("CreateService", new(attributes={"a": "v" * 1025}), limit, "longer than 1024"),
        ("CreateService", new(named_ports=port(protocol="tcp")), bad_arg, "port is required"),
        ("CreateService", new(named_ports=port(protocol="icmp", port=1)), bad_arg, "protocol"),
        ("CreateService", new(named_ports=port(port=70000)), bad_arg, "1 to 65535"),
        ("CreateService", new(named_ports=port(port=80, weight=-1)), bad_arg, "weight"),
        ("CreateService", new(named_ports=port(name="grpc", port=80)), bad_arg, "name field"),
        ("AddNamedPorts", add({}), bad_arg, "at least one"),
        ("AddNamedPorts", add(port(port=1), svc=missing), not_found, "not found"),
        ("AddNamedPorts", add({"-a-": pb.NamedPort(port=1)}), bad_arg, "port name"),
        ("RegisterEndpoint", reg(), bad_arg, "endpoint is required"),
        ("RegisterEndpoint", reg(pb.Endpoint()), bad_arg, "ip is required"),
        ("RegisterEndpoint", reg(endpoint("10.0.0.256")), bad_arg, "invalid ip"),
        ("RegisterEndpoint", reg(endpoint("10.0.0.1", ttl=-5)), bad_arg, "ttl_seconds"),
        ("RegisterEndpoint", reg(pb.Endpoint(service_name=missing, ip="10.0.0.1")), bad_arg,
         "does not match"),
        ("RegisterEndpoint", reg(endpoint("10.0.0.1", *(f"t{i}" for i in range(33)))), limit,
         "at most 32 tags"),
        ("RegisterEndpoint", reg(endpoint("10.0.0.1"), svc=missing), not_found, "not found"),
        ("DeregisterEndpoint", pb.DeregisterEndpointRequest(service_name=name, ip="10.0.0.2"),
         not_found, "not found"),
        ("DeregisterEndpoint", pb.DeregisterEndpointRequest(service_name=name, ip="nope"),
         bad_arg, "invalid ip"),
        ("Heartbeat", pb.HeartbeatRequest(service_name=name, ip="10.0.0.2"), not_found,
         "register it again"),
        ("Heartbeat", pb.HeartbeatRequest(service_name=missing, ip="10.0.0.2"), not_found, "not"),
        ("Heartbeat", pb.HeartbeatRequest(service_name=name, ip="10.9.9.9"), precondition,
         "no lease"),
        ("DeleteService", pb.DeleteServiceRequest(service_name=missing), not_found, "not found"),
        # lookalikes: a trailing newline, and the Kelvin sign ("\u212a".lower() == "k")
        ("CreateService", new(name="kafka\n"), bad_arg, "DNS label"),
        ("CreateService", new(name="\u212aafka"), bad_arg, "DNS label"),
        ("GetService", pb.GetServiceRequest(service_name=name + "\n"), bad_arg, "DNS label"),
        ("CreateService", new(named_ports={"\u212a8s": pb.NamedPort(port=1)}), bad_arg,
         "port name"),
        ("CreateService", new(attributes={"team\n": "core"}), bad_arg, "attribute name"),
        ("RegisterEndpoint", reg(endpoint("10.0.0.1", "\u212aanary")), bad_arg, "invalid tag"),
        ("RegisterEndpoint", reg(endpoint("10.0.0.1", "canary\n")), bad_arg, "invalid tag"),
    ]  # fmt: skip


async def test_every_error_code(stub: pb_grpc.DiscoveryServiceStub, unique_name: str) -> None:
    await create(stub, unique_name)
    await stub.RegisterEndpoint(
        pb.RegisterEndpointRequest(service_name=unique_name, endpoint=endpoint("10.9.9.9"))
    )
    failures = []
    for rpc, request, want, text in _error_cases(unique_name):
        code, details = await code_of(getattr(stub, rpc)(request, timeout=TIMEOUT))
        if code != want or text not in details or not details:
            failures.append(
                f"{rpc}({request!r}): {code.name} {details!r}, want {want.name} {text!r}"
            )
    assert not failures, "\n".join(failures)


def test_registry_errors_map_in_one_table() -> None:
    assert {cls: status_of(cls("m")) for cls in STATUS} == {
        InvalidInput: Code.INVALID_ARGUMENT,
        LimitExceeded: Code.FAILED_PRECONDITION,
        Conflict: Code.FAILED_PRECONDITION,
        NotFound: Code.NOT_FOUND,
        AlreadyExists: Code.ALREADY_EXISTS,
        TooManyRequests: Code.RESOURCE_EXHAUSTED,
        Unauthenticated: Code.UNAUTHENTICATED,
        Forbidden: Code.PERMISSION_DENIED,
        StoreUnavailable: Code.UNAVAILABLE,
        NotReady: Code.UNAVAILABLE,
    }
    assert status_of(RegistryError("base class")) == Code.INTERNAL


def test_unexpected_exception_is_internal_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    with (
        caplog.at_level(logging.ERROR, "service_discovery.grpc_calls"),
        _Call(_CallStats(metrics), "M") as call,
    ):
        _ = {}["missing key"]  # a bug in a handler
    assert call.code == Code.INTERNAL and "server log" in call.message
    assert "Traceback" in caplog.text and "KeyError" in caplog.text
    assert sample(metrics, "sd_internal_errors_total", frontend="grpc") == 1
    assert sample(metrics, "sd_grpc_calls_total", method="M", code="INTERNAL") == 1


async def test_unavailable_and_not_serving_before_the_registry_loads(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """1. start an app whose database is unreachable; 2. health says NOT_SERVING; 3. reads and
    Watch are UNAVAILABLE (not empty answers), writes are UNAVAILABLE; 4. stop it."""
    app = App(make_config(database_url="postgresql://postgres@127.0.0.1:1/none"))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "sd.DiscoveryService"):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = pb_grpc.DiscoveryServiceStub(channel)
            for call in (
                stub.GetService(pb.GetServiceRequest(service_name=unique_name)),
                stub.ListServices(pb.ListServicesRequest()),
                stub.CreateService(pb.CreateServiceRequest(service=pb.Service(name=unique_name))),
                _first(stub.Watch(pb.WatchRequest())),
            ):
                code, details = await code_of(call)
                assert code == Code.UNAVAILABLE and details, details
    finally:
        await app.stop()


async def _first(call: Any) -> Any:
    return await call.read()


# ---- auth -----------------------------------------------------------------------------------
def _writes(name: str) -> dict[str, Any]:
    return {
        "CreateService": pb.CreateServiceRequest(service=pb.Service(name=name)),
        "AddNamedPorts": pb.AddNamedPortsRequest(
            service_name=name, named_ports={"http": pb.NamedPort(port=80)}
        ),
        "RegisterEndpoint": pb.RegisterEndpointRequest(
            service_name=name, endpoint=endpoint("10.0.0.1", ttl=60)
        ),
        "Heartbeat": pb.HeartbeatRequest(service_name=name, ip="10.0.0.1"),
        "DeregisterEndpoint": pb.DeregisterEndpointRequest(service_name=name, ip="10.0.0.1"),
        "DeleteService": pb.DeleteServiceRequest(service_name=name),
    }


@pytest.mark.parametrize("protect_reads", [False, True])
async def test_auth_on_every_write_rpc(
    make_config: Callable[..., Config], unique_name: str, protect_reads: bool
) -> None:
    """Each write RPC, in an order where each succeeds: no token and a wrong token are
    UNAUTHENTICATED, the right one passes. Reads need a token only with SD_PROTECT_READS."""
    config = make_config(api_tokens="secret,other", protect_reads=protect_reads)
    async with run_app(config) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            bad = (None, (("authorization", "Bearer wrong"),), (("authorization", "secret"),))
            for rpc, request in _writes(unique_name).items():
                for metadata in bad:
                    code, _ = await code_of(getattr(stub, rpc)(request, metadata=metadata))
                    assert code == Code.UNAUTHENTICATED, (rpc, metadata)
                good = (("authorization", "Bearer secret"),)
                code, details = await code_of(getattr(stub, rpc)(request, metadata=good))
                assert code == Code.OK, (rpc, details)

            read = stub.ListServices(pb.ListServicesRequest())
            watch = _first(stub.Watch(pb.WatchRequest()))
            want = Code.UNAUTHENTICATED if protect_reads else Code.OK
            assert (await code_of(read))[0] == want
            assert (await code_of(watch))[0] == want
            good = (("authorization", "bearer other"),)
            assert (await code_of(stub.ListServices(pb.ListServicesRequest(), metadata=good)))[
                0
            ] == Code.OK


async def test_grpc_port_in_use_fails_start(app: App, make_config: Callable[..., Config]) -> None:
    """A GRPC_PORT held by another daemon is an OSError at start (the CLI's exit 1): grpcio's
    default SO_REUSEPORT would otherwise let two processes share it silently."""
    second = App(make_config(grpc_port=app.grpc_port))
    try:
        with pytest.raises(OSError, match="gRPC cannot listen"):
            await second.start()
    finally:
        await second.stop()


# ---- health and reflection ------------------------------------------------------------------
async def test_health_follows_ready_and_drain(make_config: Callable[..., Config]) -> None:
    """1. a ready app is SERVING for "" and sd.DiscoveryService; 2. draining turns both
    NOT_SERVING at once; 3. an unknown service is NOT_FOUND."""
    app = App(make_config(shutdown_drain_seconds=0.5))
    await app.start()
    try:
        await app.wait_ready(30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def statuses() -> list[int]:
                return [
                    (await health.Check(health_pb2.HealthCheckRequest(service=name))).status
                    for name in ("", "sd.DiscoveryService")
                ]

            async def serving() -> bool:
                return await statuses() == [health_pb2.HealthCheckResponse.SERVING] * 2

            await eventually(serving, 5, "SERVING")
            drain = asyncio.create_task(app.drain())
            await asyncio.sleep(0.1)
            assert await statuses() == [health_pb2.HealthCheckResponse.NOT_SERVING] * 2
            code, _ = await code_of(health.Check(health_pb2.HealthCheckRequest(service="nope")))
            assert code == Code.NOT_FOUND
            await drain
    finally:
        await app.stop()


async def test_reflection_lists_and_describes_the_service(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="sd.DiscoveryService"),
        ]
        answers = [a async for a in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"sd.DiscoveryService", "grpc.health.v1.Health"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in answers[1].file_descriptor_response.file_descriptor_proto
    ]
    (service,) = [s for f in files for s in f.service if s.name == "DiscoveryService"]
    assert {"GetService", "RegisterEndpoint", "Heartbeat", "Watch"} <= {
        m.name for m in service.method
    }


# ---- Watch ----------------------------------------------------------------------------------
async def read(call: Any) -> pb.WatchResponse:
    msg = await asyncio.wait_for(call.read(), TIMEOUT)
    assert msg is not grpc.aio.EOF
    return msg


async def test_watch_sees_changes_made_over_http(
    app: App, stub: pb_grpc.DiscoveryServiceStub, http: aiohttp.ClientSession, unique_name: str
) -> None:
    """1. watch one service and all services; 2. both get a SNAPSHOT; 3. an endpoint registered
    over HTTP arrives as UPDATED with the new version; 4. a delete over HTTP arrives as DELETED."""
    await create(stub, unique_name)
    one = stub.Watch(pb.WatchRequest(service_name=unique_name.upper(), version=0))
    every = stub.Watch(pb.WatchRequest())
    first = await read(one)
    assert first.kind == pb.SNAPSHOT and [s.name for s in first.services] == [unique_name]
    snap = await read(every)
    assert snap.kind == pb.SNAPSHOT and unique_name in [s.name for s in snap.services]
    assert sample(app.metrics, "sd_grpc_watch_streams") == 2

    resp = await http.put(
        f"/service/{unique_name}/register", json={"ip": "10.2.0.1", "tags": ["t"]}
    )
    assert resp.status == 200
    for call in (one, every):
        msg = await read(call)
        assert msg.kind == pb.UPDATED and msg.service_name == unique_name
        assert msg.version > first.version and msg.version == app.registry.version
        assert [(e.ip, list(e.tags)) for e in msg.services[0].endpoints] == [("10.2.0.1", ["t"])]

    assert (await http.delete(f"/service/{unique_name}")).status == 204
    for call in (one, every):
        msg = await read(call)
        assert (msg.kind, msg.service_name, len(msg.services)) == (pb.DELETED, unique_name, 0)
    one.cancel()
    every.cancel()
    await eventually(
        lambda: sample(app.metrics, "sd_grpc_watch_streams") == 0,
        5,
        "cancelled watches released",
    )


async def test_watch_of_a_service_not_created_yet(
    stub: pb_grpc.DiscoveryServiceStub, unique_name: str
) -> None:
    call = stub.Watch(pb.WatchRequest(service_name=unique_name))
    assert (await read(call)).services == []
    await create(stub, unique_name, http=80)
    msg = await read(call)
    assert msg.kind == pb.UPDATED and msg.services[0].named_ports["http"].port == 80
    call.cancel()
    code, _ = await code_of(_first(stub.Watch(pb.WatchRequest(service_name="Not_A_Name"))))
    assert code == Code.INVALID_ARGUMENT


async def test_watch_reports_a_lease_expiry(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """1. register an endpoint with a 1 s lease; 2. watch; 3. without heartbeats the stream
    reports EXPIRED with the endpoint gone; 4. Heartbeat then says NOT_FOUND (register again)."""
    # the mass-expiry guard is set out of reach and the reaper slowed, so the in-memory expiry
    # (not a database delete) is what the stream reports
    config = make_config(lease_mass_expiry_min=1_000_000, lease_reap_interval_seconds=3600)
    async with (
        run_app(config) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch,
    ):
        stub = pb_grpc.DiscoveryServiceStub(ch)
        await create(stub, unique_name)
        for ip, ttl in (("10.3.0.1", 1), ("10.3.0.2", 0)):
            await stub.RegisterEndpoint(
                pb.RegisterEndpointRequest(service_name=unique_name, endpoint=endpoint(ip, ttl=ttl))
            )
        call = stub.Watch(pb.WatchRequest(service_name=unique_name))
        snap = await read(call)
        assert sorted(e.ip for e in snap.services[0].endpoints) == ["10.3.0.1", "10.3.0.2"]
        got = await stub.GetService(pb.GetServiceRequest(service_name=unique_name))
        assert len(got.service.endpoints) == 2  # an answer is now kept for this view
        msg = await read(call)
        assert (msg.kind, msg.service_name) == (pb.EXPIRED, unique_name)
        assert [e.ip for e in msg.services[0].endpoints] == ["10.3.0.2"]
        got = await stub.GetService(pb.GetServiceRequest(service_name=unique_name))
        assert [e.ip for e in got.service.endpoints] == ["10.3.0.2"]
        code, _ = await code_of(
            stub.Heartbeat(pb.HeartbeatRequest(service_name=unique_name, ip="10.3.0.1"))
        )
        assert code == Code.NOT_FOUND
        call.cancel()


async def test_watch_reports_a_reload_after_the_listen_connection_drops(
    app: App, stub: pb_grpc.DiscoveryServiceStub, database_url: str, unique_name: str
) -> None:
    """1. watch one service and all services; 2. kill the replica's LISTEN connection in
    PostgreSQL; 3. after reconnecting, the replica reloads everything and both streams get
    RELOADED with the full state in their scope."""
    await create(stub, unique_name, http=80)
    one = stub.Watch(pb.WatchRequest(service_name=unique_name))
    every = stub.Watch(pb.WatchRequest())
    await read(one)
    await read(every)
    assert app.sync is not None and app.sync.listen_pid() is not None
    killed = await asyncpg_fetchval(
        database_url, f"SELECT pg_terminate_backend({app.sync.listen_pid()})"
    )
    assert killed
    msg = await asyncio.wait_for(read(one), 15)
    assert msg.kind == pb.RELOADED and [s.name for s in msg.services] == [unique_name]
    msg = await asyncio.wait_for(read(every), 15)
    assert msg.kind == pb.RELOADED and unique_name in {s.name for s in msg.services}
    one.cancel()
    every.cancel()


async def test_watch_limit_per_client_address(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    async with run_app(make_config(max_watches_per_client=2)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            calls = [stub.Watch(pb.WatchRequest()) for _ in range(2)]
            for call in calls:
                await read(call)
            code, details = await code_of(_first(stub.Watch(pb.WatchRequest())))
            assert code == Code.RESOURCE_EXHAUSTED and "at most 2" in details
            calls[0].cancel()

            async def admitted() -> bool:
                code, _ = await code_of(_first(stub.Watch(pb.WatchRequest())))
                return code == Code.OK

            # the slot frees once the server has seen the cancellation
            await eventually(admitted, 5, "a watch admitted again")
            count = sample(
                app.metrics, "sd_grpc_calls_total", method="Watch", code="RESOURCE_EXHAUSTED"
            )
            assert count >= 1


async def test_watch_coalesces_when_the_client_falls_behind(
    app: App, stub: pb_grpc.DiscoveryServiceStub, unique_name: str
) -> None:
    """1. watch a service; 2. 1000 changes land in the registry copy in one go (no await, so the
    stream cannot keep up); 3. the stream sends one RELOADED with the latest state instead of
    1000 messages, and keeps working."""
    svc = app.registry.get((await create(stub, unique_name)).name)
    assert svc is not None
    call = stub.Watch(pb.WatchRequest(service_name=unique_name))
    await read(call)
    for i in range(1, 1001):
        app.registry.apply(
            app.registry.version, svc.key, dataclasses.replace(svc, version=svc.version + i)
        )
    msg = await read(call)
    assert msg.kind == pb.RELOADED and msg.services[0].index == svc.version + 1000
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(call.read()), 0.3)
    call.cancel()


# ---- shutdown -------------------------------------------------------------------------------
@with_budgets
def test_sigterm_ends_watch_streams_cleanly(
    database_url: str, tmp_path: Path, budgets: bool
) -> None:
    """1. run the daemon; 2. open a Watch and read its snapshot; 3. SIGTERM: health turns
    NOT_SERVING during the drain while the stream stays open; 4. the stream ends with
    UNAVAILABLE "server draining", not before the drain (budget: within drain + timeout);
    5. the process exits 0 without a traceback."""
    env = {"DATABASE_URL": database_url, "SHUTDOWN_DRAIN_SECONDS": "1",
           "SHUTDOWN_TIMEOUT_SECONDS": "3"}  # fmt: skip
    with (
        Daemon(tmp_path / "daemon.log", env) as daemon,
        grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel,
    ):
        assert daemon.proc is not None
        health = health_pb2_grpc.HealthStub(channel)

        def status_after(previous: int) -> int:
            """The health status once it is no longer `previous` (10 s at most: a guard)."""
            deadline = time.monotonic() + 10
            while (now := health.Check(health_pb2.HealthCheckRequest(), timeout=1).status) == (
                previous
            ) and time.monotonic() < deadline:
                time.sleep(0.02)
            return now

        # /ready is 200: health follows within a turn of the loop
        assert status_after(health_pb2.HealthCheckResponse.NOT_SERVING) == (
            health_pb2.HealthCheckResponse.SERVING
        )
        stream = pb_grpc.DiscoveryServiceStub(channel).Watch(pb.WatchRequest(), timeout=30)
        assert next(stream).kind == pb.SNAPSHOT

        daemon.kill(signal.SIGTERM)
        t0 = time.monotonic()
        # polled until the signal is handled; the drain lasts 1 s
        status = status_after(health_pb2.HealthCheckResponse.SERVING)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
        assert (ended.value.code(), ended.value.details()) == (Code.UNAVAILABLE, "server draining")
        assert 0.9 <= time.monotonic() - t0
        assert not budgets or time.monotonic() - t0 < 1 + 3
        assert daemon.proc.wait(timeout=10) == 0
        out = daemon.log.read_text()
        assert "Traceback" not in out and "stopped" in out


async def test_stop_lets_in_flight_calls_finish(
    make_config: Callable[..., Config], database_url: str, unique_name: str
) -> None:
    """1. hold the service's row lock in PostgreSQL, so five writes wait inside their handlers
    (a batch waits for the lock inside PostgreSQL, the writes not in it queue behind it);
    2. stop the app: it waits for them (within the grace) instead of cutting them off;
    3. release the lock: every write completes OK, then stop returns."""
    app = App(make_config(shutdown_timeout_seconds=5, db_timeout_seconds=10))
    await app.start()
    await app.wait_ready(30)
    blocker = await asyncpg.connect(database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            await create(stub, unique_name)
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute(
                "SELECT 1 FROM services WHERE lower(name) = lower($1) FOR UPDATE", unique_name
            )
            calls = [
                stub.RegisterEndpoint(reg_request(unique_name, f"10.4.0.{i}")) for i in range(5)
            ]
            results = asyncio.gather(*(code_of(c) for c in calls))

            async def all_waiting() -> bool:
                # counted from another connection: pg_stat_activity is frozen in a transaction;
                # one batch waits for the lock, the other writes queue behind it
                waiting = app.metrics.collector_registry.get_sample_value("sd_write_waiting")
                return await asyncpg_fetchval(database_url, _WAITING_ON_LOCKS) >= 1 and (
                    waiting == 5
                )

            await eventually(all_waiting, 5, "the writes reached the database")
            stop = asyncio.create_task(app.stop())
            await asyncio.sleep(0.3)
            assert not stop.done()
            await lock.commit()
            codes = [code for code, _ in await results]
            await stop
    finally:
        await blocker.close()
        if not app.draining:
            await app.stop()
    assert codes == [Code.OK] * 5
    assert len(app.registry.get(unique_name).endpoints) == 5  # type: ignore[union-attr]


_WAITING_ON_LOCKS = """SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'"""


async def asyncpg_fetchval(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def reg_request(name: str, ip: str) -> pb.RegisterEndpointRequest:
    return pb.RegisterEndpointRequest(service_name=name, endpoint=endpoint(ip))


async def test_register_endpoints_in_bulk(
    stub: pb_grpc.DiscoveryServiceStub, unique_name: str
) -> None:
    """RegisterEndpoints: upsert as one change with the endpoints as stored; with replace the
    list becomes the whole set and the answer names what went; a mismatched service_name is
    INVALID_ARGUMENT and a missing service NOT_FOUND, registering nothing."""
    await create(stub, unique_name)
    first = await stub.RegisterEndpoints(
        pb.RegisterEndpointsRequest(
            service_name=unique_name,
            endpoints=[endpoint("10.6.0.1", "a"), endpoint("10.6.0.2", ttl=60)],
        ),
        timeout=TIMEOUT,
    )
    assert [(e.ip, list(e.tags)) for e in first.endpoints] == [
        ("10.6.0.1", ["a"]),
        ("10.6.0.2", []),
    ]
    assert first.endpoints[1].expires_at > 0 and list(first.removed) == []
    looked = await stub.LookupEndpoints(
        pb.LookupEndpointsRequest(service_name=unique_name), timeout=TIMEOUT
    )
    assert looked.index == first.index and len(looked.endpoints) == 2

    second = await stub.RegisterEndpoints(
        pb.RegisterEndpointsRequest(
            service_name=unique_name, endpoints=[endpoint("10.6.0.3")], replace=True
        ),
        timeout=TIMEOUT,
    )
    assert sorted(second.removed) == ["10.6.0.1", "10.6.0.2"] and second.index > first.index
    looked = await stub.LookupEndpoints(
        pb.LookupEndpointsRequest(service_name=unique_name), timeout=TIMEOUT
    )
    assert [e.ip for e in looked.endpoints] == ["10.6.0.3"]

    wrong = pb.Endpoint(service_name="other", ip="10.6.0.4")
    code, _ = await code_of(
        stub.RegisterEndpoints(
            pb.RegisterEndpointsRequest(service_name=unique_name, endpoints=[wrong]),
            timeout=TIMEOUT,
        )
    )
    assert code == Code.INVALID_ARGUMENT
    code, _ = await code_of(
        stub.RegisterEndpoints(
            pb.RegisterEndpointsRequest(
                service_name=f"{unique_name}-none", endpoints=[endpoint("10.6.0.5")]
            ),
            timeout=TIMEOUT,
        )
    )
    assert code == Code.NOT_FOUND
