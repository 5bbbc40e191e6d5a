"""Scoped tokens (SD_API_TOKENS_FILE lines `TOKEN [SCOPE]`) on every front-end: a token limited
to some services writes to them and to nothing else; a read-only token writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from test_auth import _call, _consul_writes, _writes

from service_discovery.app import App, run_app
from service_discovery.auth import READ, WRITE, Auth, Grant, parse_scope
from service_discovery.config import Config, ConfigError
from service_discovery.errors import Forbidden
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc

ADMIN, READER, SIDECAR = "Bearer admin-tok-1", "Bearer reader-tok-2", "Bearer sidecar-tok-3"


@pytest.mark.parametrize(
    ("scope", "grant"),
    [
        ("", WRITE),
        ("write", WRITE),
        ("read-write", WRITE),
        ("read", READ),
        ("READ-ONLY", READ),
        ("write:webapp", Grant(True, ("webapp",))),
        ("write:webapp,payments-*", Grant(True, ("webapp", "payments-*"))),
    ],
)
def test_scope_syntax(scope: str, grant: Grant) -> None:
    assert parse_scope(scope) == grant


@pytest.mark.parametrize("scope", ["admin", "write:", "write:a b", "write:a,,b", "read:x"])
def test_unknown_scopes_are_refused(scope: str) -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        parse_scope(scope)


def test_patterns() -> None:
    grant = parse_scope("write:webapp,payments-*")
    grant.permit("webapp")
    grant.permit("payments-eu")
    for other in ("webapp2", "payments", "billing"):
        with pytest.raises(Forbidden, match=f"may not write to service '{other}'"):
            grant.permit(other)
    with pytest.raises(Forbidden, match="read-only"):
        READ.permit("webapp")


def test_a_bad_scope_stops_start_up_without_echoing_the_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("secret-tok-9 admin\n")
    with pytest.raises(ConfigError) as error:
        Auth.from_config(Config(api_tokens_file=str(path)))
    assert "secret-tok-9" not in str(error.value)
    assert "unknown scope 'admin'" in str(error.value)


@pytest.fixture
async def scoped(
    make_config: Callable[..., Config], tmp_path: Path, unique_name: str
) -> AsyncIterator[App]:
    path = tmp_path / "tokens"
    path.write_text(
        "# the deploy's tokens\n\nadmin-tok-1\nreader-tok-2   read\n"
        f"sidecar-tok-3 write:{unique_name},{unique_name}-*\n"
    )
    async with run_app(make_config(api_tokens_file=str(path))) as app:
        yield app


async def test_http_scopes(scoped: App, unique_name: str) -> None:
    """1. the sidecar's token does every native and /v1/ write to its own services; 2. to
    another service each is 403 and changes nothing; 3. the read-only token writes nothing; 4.
    reads stay open and the catch-all refuses a limited token."""
    other = f"x{unique_name}"
    async with aiohttp.ClientSession(f"http://127.0.0.1:{scoped.http_port}") as http:
        for method, path, body, ok in _writes(other)[:1]:  # the other service exists
            assert (await _call(http, method, path, body, ADMIN))[0] == ok
        for method, path, body, _ok in _writes(other)[1:]:
            for token in (SIDECAR, READER):
                status, error, _ = await _call(http, method, path, body, token)
                assert status == 403, (method, path, token)
                assert error is not None and error["error"] == "forbidden"
                expected = "read-only" if token == READER else f"service '{other}'"
                assert expected in error["message"]
        status, error, _ = await _call(http, "PUT", "/service", {"name": "billing"}, SIDECAR)
        assert (status, error and error["message"]) == (
            403,
            f"this credential may not write to service 'billing' (it is limited to "
            f"{unique_name}, {unique_name}-*)",
        )
        for name in (unique_name, f"{unique_name}-canary"):
            for method, path, body, ok in _writes(name):
                status, answer, _ = await _call(http, method, path, body, SIDECAR)
                assert status == ok, (method, path, answer)
        # the Consul-compatible routes: the other service's instance first, then the sidecar's
        for _, method, path, body, ok in _consul_writes(other)[:1]:
            assert (await _call(http, method, path, body, ADMIN))[0] == ok
        for _, method, path, body, _ok in _consul_writes(other):
            for token in (SIDECAR, READER):
                status, error, _ = await _call(http, method, path, body, token)
                assert status == 403, (method, path, token, error)
        for _, method, path, body, ok in _consul_writes(unique_name)[:-1]:
            status, answer, _ = await _call(http, method, path, body, SIDECAR)
            assert status == ok, (method, path, answer)
        # an instance ID of the other service cannot be moved into the sidecar's
        body = {"Name": unique_name, "ID": f"{other}-c", "Address": "10.8.0.9"}
        status, error, _ = await _call(http, "PUT", "/v1/agent/service/register", body, SIDECAR)
        assert status == 403, error
        status, _, _ = await _call(http, "GET", "/services", None, READER)
        assert status == 200


async def test_grpc_scopes(scoped: App, unique_name: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{scoped.grpc_port}") as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)

        def md(token: str) -> tuple[tuple[str, str]]:
            return (("authorization", token),)

        await stub.CreateService(
            pb.CreateServiceRequest(service=pb.Service(name=unique_name)), metadata=md(SIDECAR)
        )
        await stub.RegisterEndpoint(
            pb.RegisterEndpointRequest(
                service_name=unique_name, endpoint=pb.Endpoint(ip="10.9.0.1", ttl_seconds=30)
            ),
            metadata=md(SIDECAR),
        )
        await stub.Heartbeat(
            pb.HeartbeatRequest(service_name=unique_name, ip="10.9.0.1"), metadata=md(SIDECAR)
        )
        calls = [
            (stub.CreateService, pb.CreateServiceRequest(service=pb.Service(name="billing"))),
            (stub.Heartbeat, pb.HeartbeatRequest(service_name="billing", ip="10.9.0.1")),
            (stub.DeleteService, pb.DeleteServiceRequest(service_name="billing")),
        ]
        for rpc, request in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rpc(request, metadata=md(SIDECAR))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may not write to service 'billing'" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.DeleteService(
                pb.DeleteServiceRequest(service_name=unique_name), metadata=md(READER)
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "read-only" in (refused.value.details() or "")
        reply = await stub.GetService(
            pb.GetServiceRequest(service_name=unique_name), metadata=md(READER)
        )
        assert reply.service.name == unique_name
        await stub.DeleteService(
            pb.DeleteServiceRequest(service_name=unique_name), metadata=md(SIDECAR)
        )
