"""Write protection: with SD_API_TOKENS (or SD_API_TOKENS_FILE) set, every HTTP write needs
`Authorization: Bearer <token>`; reads too under SD_PROTECT_READS; probes and /metrics stay
open; tokens never reach logs or metrics; a token setting that yields no token refuses to start.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from service_discovery.app import App, run_app
from service_discovery.auth import Auth
from service_discovery.config import Config, ConfigError
from service_discovery.errors import Unauthenticated

TOKENS = "first-token-7Qx,second-token-9Zk"
GOOD = ("Bearer first-token-7Qx", "bearer second-token-9Zk", "BEARER   first-token-7Qx  ")
BAD = (
    None,
    "",
    "Bearer",
    "Bearer ",
    "first-token-7Qx",  # no scheme
    "Basic Zmlyc3QtdG9rZW4tN1F4",
    "Bearer first-token-7Q",  # a prefix
    "Bearer first-token-7Qxx",  # longer
    "Bearer wrong-token-WRONG",
)


def _headers(authorization: str | None) -> dict[str, str]:
    return {} if authorization is None else {"Authorization": authorization}


async def _call(
    http: aiohttp.ClientSession, method: str, path: str, body: object, auth: str | None
) -> tuple[int, dict | None, aiohttp.ClientResponse]:
    data = None if body is None else json.dumps(body)
    async with http.request(method, path, data=data, headers=_headers(auth)) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None, resp


def _writes(name: str) -> list[tuple[str, str, object, int]]:
    """Every write route, in an order in which each succeeds: (method, path, body, status)."""
    return [
        ("PUT", "/service", {"name": name}, 201),
        ("PUT", f"/service/{name}/ports", {"http": {"port": 80}}, 200),
        ("PUT", f"/service/{name}/port", {"grpc": {"port": 81}}, 200),
        ("PUT", f"/service/{name}/endpoints", [{"ip": "10.8.0.3"}], 200),
        ("PUT", f"/service/{name}/register", {"ip": "10.8.0.1", "ttl_seconds": 30}, 200),
        ("PUT", f"/service/{name}/endpoints/10.8.0.1/heartbeat", None, 200),
        ("DELETE", f"/service/{name}/endpoints/10.8.0.1", None, 204),
        ("DELETE", f"/service/{name}", None, 204),
    ]


def _consul_writes(name: str) -> list[tuple[tuple[str, str], str, str, object, int]]:
    """The /v1/ write routes, in an order in which each succeeds: ((route method, route),
    method, path, body, status); the catch-all answers 404 to an authorized write."""
    instance = f"{name}-c"
    return [
        (("PUT", "/v1/agent/service/register"), "PUT", "/v1/agent/service/register",
         {"Name": name, "ID": instance, "Address": "10.8.0.2", "Check": {"TTL": "30s"}}, 200),
        (("PUT", "/v1/agent/check/pass/{check_id}"), "PUT",
         f"/v1/agent/check/pass/service:{instance}", None, 200),
        (("PUT", "/v1/agent/check/update/{check_id}"), "PUT",
         f"/v1/agent/check/update/service:{instance}", {"Status": "passing"}, 200),
        (("PUT", "/v1/agent/service/deregister/{service_id}"), "PUT",
         f"/v1/agent/service/deregister/{instance}", None, 200),
        (("*", "/v1/{tail}"), "PUT", "/v1/kv/some-key", "value", 404),
    ]  # fmt: skip


def _write_routes(app: App) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.http.app.router.routes()
        if route.method not in ("GET", "HEAD") and route.resource is not None
    }


async def test_every_write_route_needs_a_valid_token(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """1. the table covers every write route the server has; 2. for each, a missing, malformed
    or wrong token is 401 (with WWW-Authenticate) and changes nothing; 3. a valid token, in any
    scheme case, is accepted; 4. reads stay open."""
    async with run_app(make_config(api_tokens=TOKENS)) as app:
        writes = _writes(unique_name)
        canonical = {
            (m, p.replace(unique_name, "{name}").replace("10.8.0.1", "{ip}"))
            for m, p, _, _ in writes
        }
        consul = _consul_writes(unique_name)
        canonical |= {route for route, *_ in consul}
        assert canonical == _write_routes(app)
        writes += [(m, p, b, ok) for _, m, p, b, ok in consul]
        base = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            for n, (method, path, body, ok) in enumerate(writes):
                before = await _call(http, "GET", f"/service/{unique_name}", None, None)
                for auth in BAD:
                    status, error, resp = await _call(http, method, path, body, auth)
                    assert status == 401, (method, path, auth)
                    assert error is not None and error["error"] == "unauthenticated"
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                after = await _call(http, "GET", f"/service/{unique_name}", None, None)
                assert (before[0], before[1]) == (after[0], after[1]), (method, path)
                status, answer, _ = await _call(http, method, path, body, GOOD[n % len(GOOD)])
                assert status == ok, (method, path, answer)
            assert (await _call(http, "GET", "/services", None, None))[0] == 200


async def test_protected_reads(make_config: Callable[..., Config], unique_name: str) -> None:
    """With SD_PROTECT_READS every read needs a token too; probes, metrics and the API
    description stay open (kubelets and Prometheus carry no token)."""
    config = make_config(api_tokens=TOKENS, protect_reads=True)
    async with run_app(config) as app:
        base = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            await _call(http, "PUT", "/service", {"name": unique_name}, GOOD[0])
            reads = ["/services", f"/service/{unique_name}", f"/service/{unique_name}/endpoints"]
            for path in reads:
                for auth in BAD:
                    assert (await _call(http, "GET", path, None, auth))[0] == 401, (path, auth)
                assert (await _call(http, "GET", path, None, GOOD[1]))[0] == 200, path
            for path in ("/healthz", "/ready", "/metrics", "/openapi.json"):
                async with http.get(path) as resp:
                    assert resp.status == 200, path


async def test_tokens_from_a_file(
    make_config: Callable[..., Config], tmp_path: Path, unique_name: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("\n  file-token-one  \n\nfile-token-two\n")
    async with run_app(make_config(api_tokens_file=str(tokens))) as app:
        base = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            body = {"name": unique_name}
            assert (await _call(http, "PUT", "/service", body, None))[0] == 401
            assert (await _call(http, "PUT", "/service", body, "Bearer file-token-two"))[0] == 201
            path = f"/service/{unique_name}"
            assert (await _call(http, "DELETE", path, None, "Bearer file-token-one"))[0] == 204


@pytest.mark.parametrize(
    "overrides",
    [
        {"api_tokens": " , ,"},
        {"api_tokens_file": "EMPTY"},
        {"api_tokens_file": "MISSING"},
        {"protect_reads": True},
    ],
)
async def test_a_token_setting_without_tokens_refuses_to_start(
    make_config: Callable[..., Config], tmp_path: Path, overrides: dict
) -> None:
    """Fail closed: writes must not be left open because the token list came out empty."""
    (tmp_path / "EMPTY").write_text("\n  \n")
    if "api_tokens_file" in overrides:
        overrides = {"api_tokens_file": str(tmp_path / overrides["api_tokens_file"])}
    with pytest.raises(ConfigError) as err:
        async with run_app(make_config(**overrides)):
            pass
    assert "SD_" in str(err.value)


async def test_tokens_never_reach_logs_or_metrics(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture, unique_name: str
) -> None:
    """Failed and successful requests with every kind of bad token, everything logged at DEBUG:
    no token (configured or presented) appears in a log record or in /metrics."""
    caplog.set_level(logging.DEBUG)
    config = make_config(api_tokens=TOKENS, protect_reads=True, logger_level="debug")
    async with run_app(config) as app:
        base = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            for auth in BAD:
                await _call(http, "PUT", "/service", {"name": unique_name}, auth)
                await _call(http, "GET", "/services", None, auth)
            await _call(http, "PUT", "/service", {"name": unique_name}, GOOD[0])
            async with http.get("/metrics") as resp:
                metrics = await resp.text()
    assert 'status="401"' in metrics  # the failures were counted, without their tokens
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records) + repr(config)
    for secret in ("first-token-7Qx", "second-token-9Zk", "wrong-token-WRONG", "Zmlyc3Q"):
        assert secret not in logged, secret
        assert secret not in metrics, secret


def test_tokens_in_urls_and_headers_are_redacted_in_every_log_line(
    database_url: str, tmp_path: Path
) -> None:
    """The daemon as a process, logging at DEBUG: its own lines and aiohttp's (which quote a
    malformed request line or header back, with a traceback).
    1. requests carry tokens in the query string (?token=, a Consul habit) and in an
    Authorization header: well-formed ones, a request line with a bad character, a header with
    one; 2. after SIGTERM, the log quotes those requests (token=***) but holds no token."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": database_url, "HTTP_PORT": str(port), "DNS_PORT": "0",
           "GRPC_PORT": "0", "LOGGER_LEVEL": "debug", "SHUTDOWN_DRAIN_SECONDS": "0",
           "SD_API_TOKENS": "first-token-7Qx"}  # fmt: skip
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service_discovery", "serve"], env=env, stdout=out, stderr=out
        )
    secrets = ("s3cret-query", "s3cret-path", "s3cret-header", "first-token-7Qx")
    requests = [
        b"GET /services?token=s3cret-query HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /services?token=s3cret-path\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-header\x01\r\n\r\n",
        b"PUT /service?token=first-token-7Qx HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer first-token-7Qx\r\nContent-Length: 2\r\n\r\n{}",
    ]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        for raw in requests:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(raw)
                assert conn.recv(100).startswith(b"HTTP/1."), raw
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "token=***" in text and "Bearer ***" in text, text[-3000:]
    assert not [s for s in secrets if s in text], text[-3000:]


# ---- safe defaults -----------------------------------------------------------------------------
def listening(port: int) -> set[str]:
    """The addresses this host has a TCP socket listening on `port` at (from /proc/net)."""
    found = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                local, _, state = line.split()[1:4]
                address, _, hexport = local.partition(":")
                if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                    # each 32-bit word of the address is in host (little-endian) order
                    raw = b"".join(
                        bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
                    )
                    ip = ipaddress.ip_address(raw[:size])
                    found.add(str(getattr(ip, "ipv4_mapped", None) or ip))  # gRPC: v4 in v6
    return found


async def test_default_bind_is_loopback_and_open_writes_elsewhere_warn(
    database_url: str, make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    """1. with nothing but the database and free ports in its environment, every listener (HTTP,
    DNS over TCP, gRPC) is on 127.0.0.1 only, and nothing is logged about open writes;
    2. bound to every interface without tokens, a WARNING at start says writes are open;
    3. with tokens there, or without tokens on loopback, no such warning."""
    caplog.set_level(logging.INFO, "service_discovery")
    env = {"DATABASE_URL": database_url, "HTTP_PORT": "0", "DNS_PORT": "0", "GRPC_PORT": "0"}
    async with run_app(Config.from_env(env)) as app:
        for port in (app.http_port, app.dns_port, app.grpc_port):
            assert listening(port) == {"127.0.0.1"}, port
    assert "unauthenticated" not in caplog.text

    def warned() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno == logging.WARNING and "unauth" in r.message]

    caplog.clear()
    async with run_app(make_config(bind_address="0.0.0.0")) as app:
        assert listening(app.http_port) == {"0.0.0.0"}
    [record] = warned()
    assert "0.0.0.0" in record.message and "SD_API_TOKENS" in record.message
    caplog.clear()
    async with run_app(make_config(bind_address="0.0.0.0", api_tokens=TOKENS)):
        pass
    assert not warned()


# ---- the check itself (pure) -------------------------------------------------------------------
def test_auth_rules() -> None:
    auth = Auth(frozenset({"a", "bb"}), protect_reads=False)
    auth.check(None, write=False)  # reads open
    auth.check("Bearer a", write=True)
    auth.check("bearer  bb ", write=True)
    for bad in (None, "Bearer", "Bearer b", "Bearer bbb", "Token a", "a"):
        with pytest.raises(Unauthenticated):
            auth.check(bad, write=True)
    strict = Auth(frozenset({"a"}), protect_reads=True)
    with pytest.raises(Unauthenticated):
        strict.check(None, write=False)
    open_ = Auth(frozenset(), protect_reads=True)  # no tokens: nothing to check against
    assert not open_.enabled and not open_.protect_reads
    open_.check(None, write=True)
