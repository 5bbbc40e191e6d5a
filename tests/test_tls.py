"""TLS on HTTP and gRPC with a throwaway CA (tests/tlsca.py) and real clients: aiohttp, grpc
secure channels, curl --cacert; a rotation during traffic; mTLS refusing a client without a
certificate."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from helpers import eventually
from tlsca import CA, Issued, serial_of, write_pair

from service_discovery.app import App, run_app
from service_discovery.config import Config, ConfigError
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc

GRPC_OPTIONS = (("grpc.ssl_target_name_override", "localhost"),)


@pytest.fixture
def ca() -> CA:
    return CA()


@pytest.fixture
def server_files(ca: CA, tmp_path: Path) -> tuple[str, str]:
    return write_pair(tmp_path / "server", ca.issue("sd-server"))


@pytest.fixture
async def tls_app(
    make_config: Callable[..., Config], server_files: tuple[str, str]
) -> AsyncIterator[App]:
    cert, key = server_files
    config = make_config(tls_cert_file=cert, tls_key_file=key, tls_reload_seconds=0.1)
    async with run_app(config) as app:
        yield app


def grpc_credentials(ca: CA, client: Issued | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.pem)
    return grpc.ssl_channel_credentials(ca.pem, client.key_pem, client.cert_pem)


def served_serial(port: int, context: ssl.SSLContext, alpn: str) -> int:
    """The serial of the certificate a new handshake on `port` gets (blocking: run in a thread)."""
    context.set_alpn_protocols([alpn])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return serial_of(der)


def test_tls_settings_are_checked_together() -> None:
    with pytest.raises(ConfigError, match="TLS_CERT_FILE and TLS_KEY_FILE"):
        Config.from_env({"TLS_CERT_FILE": "/x.crt"})
    with pytest.raises(ConfigError, match="TLS_CLIENT_CA_FILE needs"):
        Config.from_env({"TLS_CLIENT_CA_FILE": "/ca.crt"})
    with pytest.raises(ConfigError, match="TLS_CLIENT_CERT_AUTH needs"):
        Config.from_env(
            {"TLS_CERT_FILE": "/c", "TLS_KEY_FILE": "/k", "TLS_CLIENT_CERT_AUTH": "read"}
        )


async def test_http_and_grpc_serve_tls(tls_app: App, ca: CA, unique_name: str) -> None:
    # 1. aiohttp with a context that trusts the CA: a write and a read over HTTPS.
    base = f"https://127.0.0.1:{tls_app.http_port}"
    connector = aiohttp.TCPConnector(ssl=ca.client_context())
    async with aiohttp.ClientSession(base, connector=connector) as http:
        async with http.put("/service", json={"name": unique_name, "ports": {"http": 80}}) as r:
            assert r.status in (200, 201), await r.text()
        async with http.get(f"/service/{unique_name}") as r:
            assert r.status == 200
    # 2. curl --cacert, as an operator would check it.
    done = await asyncio.to_thread(
        subprocess.run,
        ["curl", "-sS", "--cacert", "/dev/stdin", f"{base}/healthz"],
        input=ca.pem,
        capture_output=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    # 3. plain HTTP on the TLS port is refused; a client that does not trust the CA too.
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(f"http://127.0.0.1:{tls_app.http_port}/healthz") as r:
                await r.read()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with plain.get(f"{base}/healthz") as r:
                await r.read()
    # 4. a gRPC secure channel.
    target = f"127.0.0.1:{tls_app.grpc_port}"
    async with grpc.aio.secure_channel(target, grpc_credentials(ca), GRPC_OPTIONS) as channel:
        reply = await pb_grpc.DiscoveryServiceStub(channel).GetService(
            pb.GetServiceRequest(service_name=unique_name), timeout=5
        )
        assert reply.service.name == unique_name


async def test_rotation_keeps_connections_and_serves_the_new_certificate(
    tls_app: App, ca: CA, tmp_path: Path
) -> None:
    """1. open an HTTPS keep-alive connection and a gRPC channel, with traffic on both;
    2. cert-manager rotates tls.crt and tls.key in place;
    3. the old connections keep working (and keep the old certificate), with no failed request;
    4. new handshakes on both ports get the new certificate's serial."""
    old_serial = await asyncio.to_thread(
        served_serial, tls_app.http_port, ca.client_context(), "http/1.1"
    )
    base = f"https://127.0.0.1:{tls_app.http_port}"
    connector = aiohttp.TCPConnector(ssl=ca.client_context(), limit=1)
    connections = 0  # new TCP+TLS connections the HTTP client made: one, kept alive

    async def counted(*_: object) -> None:
        nonlocal connections
        connections += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(counted)
    target = f"127.0.0.1:{tls_app.grpc_port}"
    failures: list[BaseException] = []
    requests = 0
    async with (
        aiohttp.ClientSession(base, connector=connector, trace_configs=[trace]) as http,
        grpc.aio.secure_channel(target, grpc_credentials(ca), GRPC_OPTIONS) as channel,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        stop = asyncio.Event()

        async def traffic() -> None:
            nonlocal requests
            while not stop.is_set():
                try:
                    async with http.get("/services") as r:
                        assert r.status == 200
                        await r.read()
                    await stub.ListServices(pb.ListServicesRequest(), timeout=5)
                    requests += 1
                except Exception as exc:
                    failures.append(exc)
                await asyncio.sleep(0.01)

        task = asyncio.create_task(traffic())
        await asyncio.sleep(0.3)
        new = ca.issue("sd-server-rotated")
        write_pair(tmp_path / "server", new)
        tls = tls_app.parts.tls
        assert tls is not None
        await eventually(lambda: tls.reloads >= 1, what="the certificate reload")
        await asyncio.sleep(0.3)
        stop.set()
        await task
    assert not failures, failures[:3]
    assert requests > 5
    assert connections == 1, "the HTTPS keep-alive connection was dropped"
    assert old_serial != new.serial
    for port, alpn in ((tls_app.http_port, "http/1.1"), (tls_app.grpc_port, "h2")):
        serial = await asyncio.to_thread(served_serial, port, ca.client_context(), alpn)
        assert serial == new.serial, f"port {port} still serves the old certificate"
    # a new gRPC channel works with the new certificate
    async with grpc.aio.secure_channel(target, grpc_credentials(ca), GRPC_OPTIONS) as channel:
        await pb_grpc.DiscoveryServiceStub(channel).ListServices(
            pb.ListServicesRequest(), timeout=5
        )


async def test_a_half_rotated_pair_is_not_loaded(tls_app: App, ca: CA, tmp_path: Path) -> None:
    tls = tls_app.parts.tls
    assert tls is not None
    new = ca.issue("sd-server-rotated")
    (tmp_path / "server" / "tls.crt").write_bytes(new.cert_pem)  # the key is still the old one
    assert not tls.reload()
    serial = await asyncio.to_thread(
        served_serial, tls_app.http_port, ca.client_context(), "http/1.1"
    )
    assert serial != new.serial
    (tmp_path / "server" / "tls.key").write_bytes(new.key_pem)
    await eventually(lambda: tls.reloads >= 1, what="the reload of the whole pair")


@pytest.fixture
async def mtls_app(
    make_config: Callable[..., Config], server_files: tuple[str, str], ca: CA, tmp_path: Path
) -> AsyncIterator[App]:
    cert, key = server_files
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    config = make_config(
        tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=str(tmp_path / "ca.crt")
    )
    async with run_app(config) as app:
        yield app


async def test_mtls_refuses_a_client_without_a_certificate(
    mtls_app: App, ca: CA, tmp_path: Path
) -> None:
    base = f"https://127.0.0.1:{mtls_app.http_port}"
    client = ca.issue("sidecar", client=True)
    # 1. no client certificate: the handshake (or the first read) fails, over HTTP and gRPC
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca.client_context())) as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"{base}/healthz") as r:
                await r.read()
    target = f"127.0.0.1:{mtls_app.grpc_port}"
    async with grpc.aio.secure_channel(target, grpc_credentials(ca), GRPC_OPTIONS) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.DiscoveryServiceStub(channel).ListServices(
                pb.ListServicesRequest(), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # 2. a certificate from another CA is refused too
    stranger = CA("another-ca").issue("intruder", client=True)
    context = ca.client_context(stranger, tmp_path)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"{base}/healthz") as r:
                await r.read()
    # 3. the CA's client certificate is accepted, by aiohttp, grpc and curl
    context = ca.client_context(client, tmp_path)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s:
        async with s.get(f"{base}/healthz") as r:
            assert r.status == 200
    creds = grpc_credentials(ca, client)
    async with grpc.aio.secure_channel(target, creds, GRPC_OPTIONS) as channel:
        await pb_grpc.DiscoveryServiceStub(channel).ListServices(
            pb.ListServicesRequest(), timeout=5
        )
    cert, key = write_pair(tmp_path / "curl", client)
    (tmp_path / "curl" / "ca.crt").write_bytes(ca.pem)
    args: list[Any] = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"]
    args += ["--cacert", str(tmp_path / "curl" / "ca.crt"), f"{base}/healthz"]
    without = await asyncio.to_thread(subprocess.run, args, capture_output=True, timeout=10)
    assert without.returncode != 0
    with_cert = await asyncio.to_thread(
        subprocess.run, [*args, "--cert", cert, "--key", key], capture_output=True, timeout=10
    )
    assert with_cert.stdout == b"200", with_cert.stderr


@pytest.mark.parametrize("cert_auth", ["write", "read"])
async def test_a_client_certificate_stands_in_for_a_token(
    make_config: Callable[..., Config],
    server_files: tuple[str, str],
    ca: CA,
    tmp_path: Path,
    unique_name: str,
    cert_auth: str,
) -> None:
    """TLS_CLIENT_CERT_AUTH=write: a verified client certificate writes without a token;
    =read: it reads (SD_PROTECT_READS) but a write is 403 until a token is sent."""
    cert, key = server_files
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    config = make_config(
        tls_cert_file=cert,
        tls_key_file=key,
        tls_client_ca_file=str(tmp_path / "ca.crt"),
        tls_client_cert_auth=cert_auth,
        api_tokens="tok-for-writes",
        protect_reads=True,
    )
    client = ca.issue("sidecar", client=True)
    context = ca.client_context(client, tmp_path)
    body = {"name": unique_name}
    async with run_app(config) as app:
        base = f"https://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(ssl=context)) as s:
            async with s.get("/services") as r:
                assert r.status == 200
            async with s.put("/service", json=body) as r:
                assert r.status == (201 if cert_auth == "write" else 403), await r.text()
            auth = {"Authorization": "Bearer tok-for-writes"}
            ports = {"http": {"port": 80}}
            async with s.put(f"/service/{unique_name}/ports", json=ports, headers=auth) as r:
                # the token is still honoured beside the certificate (404: not created above)
                assert r.status == (200 if cert_auth == "write" else 404), await r.text()
        target = f"127.0.0.1:{app.grpc_port}"
        creds = grpc_credentials(ca, client)
        async with grpc.aio.secure_channel(target, creds, GRPC_OPTIONS) as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            await stub.ListServices(pb.ListServicesRequest(), timeout=5)
            request = pb.DeleteServiceRequest(service_name=unique_name)
            if cert_auth == "write":
                await stub.DeleteService(request, timeout=5)
            else:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.DeleteService(request, timeout=5)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
