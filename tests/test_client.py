"""The Python client library against real daemons (subprocesses on a database of this module):
every method, typed results and errors, equal answers from the sync and the async client,
failover across replicas and stale answers when none is reachable, leases and watches.

The replica tests that break the database are in test_client_replicas.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Daemon, eventually
from replicas import closed_address, http_json, replica, stopped
from service_discovery_client import (
    Address,
    AsyncClient,
    Client,
    Conflict,
    InvalidInput,
    LimitExceeded,
    NamedPort,
    NotFound,
    Renewal,
    Service,
    ServiceDiscoveryError,
    Unauthorized,
    Unavailable,
)
from service_discovery_client.models import srv_order

TOKEN = "client-test-token"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client_database(new_database: Callable[..., Any]) -> Iterator[str]:
    with new_database("sd_client") as url:
        yield url


@pytest.fixture(scope="module")
def daemon(client_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One replica for the module, writes protected by a token."""
    log = tmp_path_factory.mktemp("client") / "daemon.log"
    with replica(client_database, log, SD_API_TOKENS=TOKEN) as d:
        yield d


@pytest.fixture
def sd(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.base, token=TOKEN, timeout=5) as client:
        yield client


@pytest.fixture
def name() -> str:
    return f"cl-{uuid.uuid4().hex[:10]}"


# ---- the distribution ----------------------------------------------------------------------------
def test_distribution_needs_no_daemon_dependency() -> None:
    """1. its pyproject declares no dependency (aiohttp is the `async` extra); 2. importing the
    package and using the sync client loads none of aiohttp, asyncpg, grpc, uvloop."""
    meta = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    assert meta["name"] == "service-discovery-client"
    assert meta["dependencies"] == []
    assert meta["optional-dependencies"] == {"async": ["aiohttp>=3.9"]}
    assert meta["scripts"] == {"sdctl": "service_discovery_client.cli:main"}
    code = (
        "import sys, service_discovery_client as s, service_discovery_client.cli\n"
        "s.Client('http://127.0.0.1:1')\n"
        "print(sorted(m for m in ('aiohttp', 'asyncpg', 'grpc', 'uvloop', 'service_discovery')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- every method --------------------------------------------------------------------------------
def test_services_ports_endpoints_round_trip(sd: Client, daemon: Daemon, name: str) -> None:
    """1. create with attributes and a port; 2. Conflict on a second create, exist_ok returns
    the existing one; 3. set_ports adds a port; 4. register two endpoints (tags, lease);
    5. service, services, endpoints, resolve, heartbeat agree with what the API returns;
    6. deregister, delete: NotFound afterwards."""
    created = sd.create_service(
        name, attributes={"team": "a"}, named_ports={"http": {"protocol": "tcp", "port": 8000}}
    )
    assert (created.name, created.attributes, created.endpoints) == (name, {"team": "a"}, ())
    assert created.named_ports == {"http": NamedPort("tcp", 8000, 1, 1)}
    assert created.index > 0 and created.id and not created.stale

    with pytest.raises(Conflict) as err:
        sd.create_service(name)
    assert (err.value.status, err.value.code) == (409, "already_exists")
    assert name in err.value.message and err.value.address == daemon.base
    assert sd.create_service(name, attributes={"ignored": "x"}, exist_ok=True) == created

    ports = sd.set_ports(name, {"grpc": NamedPort("tcp", 9000, priority=2, weight=5)})
    assert ports == {"http": NamedPort("tcp", 8000), "grpc": NamedPort("tcp", 9000, 2, 5)}

    plain = sd.register(name, "10.1.0.1", tags=["canary", "eu"])
    assert (plain.ip, plain.tags, plain.ttl_seconds, plain.expires_at) == (
        "10.1.0.1",
        ("canary", "eu"),
        None,
        None,
    )
    leased = sd.register(name, "10.1.0.2", ttl=300)
    assert leased.ttl_seconds == 300 and leased.expires_at is not None
    assert leased.expires_at > time.time() + 250

    svc = sd.service(name)
    status, api = http_json(f"{daemon.base}/service/{name}")
    assert status == 200 and svc.raw == api
    assert svc.index == api["index"] and svc.id == api["id"]
    assert sorted(e.ip for e in svc.endpoints) == ["10.1.0.1", "10.1.0.2"]
    listing = sd.services()
    status, api_listing = http_json(f"{daemon.base}/services")
    assert [s.raw for s in listing] == api_listing and not listing.stale
    assert listing.registry_index >= svc.index
    listed = {s.name: s for s in listing}
    assert listed[name].endpoints == () and listed[name].named_ports == svc.named_ports
    assert sorted(e.ip for e in sd.endpoints(name)) == ["10.1.0.1", "10.1.0.2"]
    assert sorted(sd.resolve(name, "grpc")) == [("10.1.0.1", 9000), ("10.1.0.2", 9000)]

    renewal = sd.heartbeat(name, "10.1.0.2")
    assert isinstance(renewal, Renewal) and renewal.expires_at >= leased.expires_at
    with pytest.raises(Conflict):  # no lease to renew
        sd.heartbeat(name, "10.1.0.1")

    sd.deregister(name, "10.1.0.1")
    assert [e.ip for e in sd.endpoints(name)] == ["10.1.0.2"]
    with pytest.raises(NotFound):
        sd.deregister(name, "10.1.0.1")
    with pytest.raises(NotFound):
        sd.heartbeat(name, "10.1.0.1")
    sd.delete_service(name)
    with pytest.raises(NotFound) as nf:
        sd.service(name)
    assert (nf.value.status, nf.value.code) == (404, "not_found")
    with pytest.raises(NotFound):
        sd.delete_service(name)


def test_resolve_srv_order_and_missing_port(sd: Client, name: str) -> None:
    """resolve gives (ip, port) pairs of the live endpoints; IPv6 as the API spells it; a port
    the service does not have is NotFound; a service without endpoints resolves to []."""
    sd.create_service(name, named_ports={"dns": {"protocol": "udp", "port": 53}})
    assert sd.resolve(name, "dns") == []
    for ip in ("10.2.0.1", "10.2.0.2", "2001:db8::7"):
        sd.register(name, ip)
    got = sd.resolve(name, "dns")
    assert sorted(got) == [("10.2.0.1", 53), ("10.2.0.2", 53), ("2001:db8::7", 53)]
    assert all(isinstance(a, Address) for a in got) and not got.stale
    with pytest.raises(NotFound) as err:
        sd.resolve(name, "http")
    assert "no port named 'http'" in err.value.message


SRV_TABLE = [
    # (priority, weight, ip) ... -> the order of priorities; within a priority the weights decide
    ([(2, 1, "b"), (1, 1, "a"), (3, 1, "c")], ["a", "b", "c"]),
    ([(1, 0, "zero"), (1, 10, "ten")], ["ten", "zero"]),
    ([(5, 0, "x")], ["x"]),
    ([], []),
]


@pytest.mark.parametrize(("targets", "expected"), SRV_TABLE)
def test_srv_order_table(targets: list[tuple[int, int, str]], expected: list[str]) -> None:
    triples = [(p, w, Address(ip, 80)) for p, w, ip in targets]
    assert [a.ip for a in srv_order(triples, random.Random(1))] == expected


def test_srv_order_follows_weights() -> None:
    """Within one priority the first pick follows the weights (RFC 2782): 3:1 over 4,000
    draws lands near 3,000 (a binomial's 6 sigma is about 165)."""
    rng = random.Random(7)
    triples = [(1, 3, Address("heavy", 1)), (1, 1, Address("light", 1))]
    heavy = sum(srv_order(triples, rng)[0].ip == "heavy" for _ in range(4000))
    assert 2835 < heavy < 3165


# ---- errors --------------------------------------------------------------------------------------
def test_errors_are_typed_with_the_daemons_code_and_message(
    sd: Client, daemon: Daemon, name: str
) -> None:
    """400 -> InvalidInput, 401 -> Unauthorized, 404 -> NotFound, 409 -> Conflict,
    422 -> LimitExceeded, refused -> Unavailable; each carries code, message, status."""
    cases: list[tuple[Callable[[], object], type[ServiceDiscoveryError], int | None, str]] = [
        (lambda: sd.create_service("Not_A_Label!"), InvalidInput, 400, "invalid_input"),
        (lambda: sd.register(name, "not-an-ip"), InvalidInput, 400, "invalid_input"),
        (
            lambda: Client(daemon.base, token="wrong").create_service(name),
            Unauthorized,
            401,
            "unauthenticated",
        ),
        (lambda: Client(daemon.base).delete_service(name), Unauthorized, 401, "unauthenticated"),
        (lambda: sd.service(f"{name}-none"), NotFound, 404, "not_found"),
        (lambda: sd.create_service(name), Conflict, 409, "already_exists"),
        (
            lambda: sd.register(name, "10.3.0.1", tags=[f"t{i}" for i in range(40)]),
            LimitExceeded,
            422,
            "limit_exceeded",
        ),
        (
            lambda: Client(closed_address(), retries=1).services(),
            Unavailable,
            None,
            "unreachable",
        ),
    ]
    sd.create_service(name)
    for call, cls, status, code in cases:
        with pytest.raises(cls) as err:
            call()
        assert type(err.value) is cls
        assert (err.value.status, err.value.code) == (status, code), err.value
        assert err.value.message and str(err.value).startswith(f"{code}: ")
    # the refused one names what was tried
    with pytest.raises(Unavailable) as down:
        Client([closed_address(), closed_address()], retries=0).service(name)
    assert down.value.message.count("connection refused") == 2


def test_env_defaults_addr_and_token(
    daemon: Daemon, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SD_ADDR (a comma-separated list) and SD_TOKEN are the defaults; the repr hides the
    token."""
    monkeypatch.setenv("SD_ADDR", f"{closed_address()},127.0.0.1:{daemon.http_port}")
    monkeypatch.setenv("SD_TOKEN", TOKEN)
    client = Client()
    assert client.create_service(name).name == name
    assert TOKEN not in repr(client) and "***" in repr(client)


def test_every_call_has_a_timeout(name: str) -> None:
    """A replica that accepts and never answers: the call gives up after the timeout, per
    attempt, and says so."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        addr = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(Unavailable) as err:
            Client(addr, timeout=0.3, retries=1).services()
    assert "no answer within 0.3 s" in err.value.message


# ---- sync and async agree ------------------------------------------------------------------------
async def test_async_and_sync_clients_give_equal_results(daemon: Daemon, name: str) -> None:
    """The same calls through both clients: equal typed results (and JSON), equal errors."""
    sync = Client(daemon.base, token=TOKEN)
    ports = {"http": {"protocol": "tcp", "port": 8080}}
    async with AsyncClient(daemon.base, token=TOKEN) as asd:
        a_created = await asd.create_service(name, {"k": "v"}, ports)
        assert sync.create_service(name, exist_ok=True) == a_created
        a_ep = await asd.register(name, "10.4.0.1", tags=["x"])
        assert await asyncio.to_thread(sync.register, name, "10.4.0.1", ["x"]) == a_ep
        await asd.register(name, "10.4.0.2")

        def same(sync_call: Callable[[], Any], async_result: Any) -> None:
            assert sync_call() == async_result

        same(lambda: sync.service(name), await asd.service(name))
        assert sync.service(name).raw == (await asd.service(name)).raw
        same(lambda: [s for s in sync.services() if s.name == name],
             [s for s in await asd.services() if s.name == name])  # fmt: skip
        same(lambda: sync.endpoints(name), await asd.endpoints(name))
        same(lambda: sorted(sync.resolve(name, "http")), sorted(await asd.resolve(name, "http")))
        same(lambda: sync.set_ports(name, ports), await asd.set_ports(name, ports))

        errors = []
        for label, sync_call, async_call in [
            ("missing", lambda: sync.service(f"{name}-x"), asd.service(f"{name}-x")),
            ("conflict", lambda: sync.create_service(name), asd.create_service(name)),
            ("invalid", lambda: sync.register(name, "x"), asd.register(name, "x")),
        ]:
            with pytest.raises(ServiceDiscoveryError) as s_err:
                sync_call()
            with pytest.raises(ServiceDiscoveryError) as a_err:
                await async_call
            pair = [
                (type(e.value), e.value.code, e.value.message, e.value.status)
                for e in (s_err, a_err)
            ]
            errors.append((label, pair[0] == pair[1]))
        assert all(ok for _, ok in errors), errors

        await asd.deregister(name, "10.4.0.2")
        assert [e.ip for e in sync.endpoints(name)] == ["10.4.0.1"]
        with pytest.raises(NotFound):
            await asd.heartbeat(name, "10.4.0.2")
        await asd.delete_service(name)
        with pytest.raises(NotFound):
            sync.service(name)


# ---- replicas: failover and stale answers --------------------------------------------------------
def test_two_replicas_failover_then_stale_then_fresh(
    client_database: str, tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """1. two replicas; a client given both; 2. the first stops: reads and writes go on through
    the second; 3. both stop: reads of what was read before are served stale (resolve too),
    writes and never-read services are Unavailable; 4. a replica is back: fresh answers."""
    caplog.set_level(logging.INFO, logger="service_discovery_client")
    first = replica(client_database, tmp_path / "a.log", SD_API_TOKENS=TOKEN)
    second = replica(client_database, tmp_path / "b.log", SD_API_TOKENS=TOKEN)
    try:
        first.start()
        second.start()
        first.wait_ready_sync()
        second.wait_ready_sync()
        sd = Client([first.base, second.base], token=TOKEN, timeout=2)
        sd.create_service(name, named_ports={"http": {"protocol": "tcp", "port": 80}})
        sd.register(name, "10.5.0.1")
        before = sd.service(name)

        assert stopped(first) == 0
        sd.register(name, "10.5.0.2")  # a write, through the second
        assert sorted(e.ip for e in sd.service(name).endpoints) == ["10.5.0.1", "10.5.0.2"]
        assert sorted(sd.resolve(name, "http")) == [("10.5.0.1", 80), ("10.5.0.2", 80)]
        assert any(s.name == name for s in sd.services())

        assert stopped(second) == 0
        stale = sd.service(name)
        assert stale.stale and sorted(e.ip for e in stale.endpoints) == ["10.5.0.1", "10.5.0.2"]
        resolved = sd.resolve(name, "http")
        assert resolved.stale and sorted(resolved) == [("10.5.0.1", 80), ("10.5.0.2", 80)]
        listing = sd.services()
        assert listing.stale and all(s.stale for s in listing) and listing.registry_index > 0
        assert "serving the last good answer (stale)" in caplog.text
        with pytest.raises(Unavailable):
            sd.register(name, "10.5.0.3")
        with pytest.raises(Unavailable):
            sd.service(f"{name}-never-read")
        with pytest.raises(Unavailable):
            sd.endpoints(name)  # not a cached read

        first.start()
        first.wait_ready_sync()
        fresh = sd.service(name)
        assert not fresh.stale and fresh.index > before.index
        assert "a replica answers again" in caplog.text
    finally:
        first.stop()
        second.stop()


# ---- leases --------------------------------------------------------------------------------------
def test_lease_renews_reregisters_and_deregisters(
    sd: Client, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """1. `with sd.lease(ttl=3)`: registered with the ttl and held; 2. renewed (expires_at
    moves); 3. removed behind its back: the next renewal gets 404, it registers again and logs
    it; 4. on exit, deregistered."""
    caplog.set_level(logging.INFO, logger="service_discovery_client")
    sd.create_service(name)
    with sd.lease(name, "10.6.0.1", ttl=3, tags=["leased"]) as lease:
        assert lease.held
        first = sd.service(name).endpoints[0]
        assert (first.ip, first.tags, first.ttl_seconds) == ("10.6.0.1", ("leased",), 3)
        wait_for(lambda: lease.state.renewals >= 1, 10, "a renewal")
        assert lease.expires_at is not None and lease.expires_at > (first.expires_at or 0)

        sd.deregister(name, "10.6.0.1")
        wait_for(lambda: lease.state.registrations >= 2, 10, "registered again")
        assert lease.held
        assert [e.ip for e in sd.endpoints(name)] == ["10.6.0.1"]
        assert "is gone" in caplog.text and "registering again" in caplog.text
        assert "registered 10.6.0.1 in " in caplog.text
    assert not lease.held
    assert sd.endpoints(name) == []


def test_lease_refused_at_start_raises(sd: Client, name: str) -> None:
    """A lease the daemon refuses (no such service, no token) raises on entry; nothing runs."""
    with pytest.raises(NotFound), sd.lease(f"{name}-missing", "10.6.1.1", ttl=5):
        pass  # pragma: no cover
    with pytest.raises(Unauthorized), Client(sd._base.targets[0].url).lease(name, "10.6.1.1"):
        pass  # pragma: no cover
    with pytest.raises(ValueError):
        sd.lease(name, "10.6.1.1", ttl=0)


def test_lease_through_an_unreachable_registry(
    client_database: str, tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """1. a lease on the only replica; 2. the replica stops: renewals fail, logged; `held`
    turns false once a ttl has passed without one; 3. the replica is back: the lease is held
    again without anyone re-entering it."""
    caplog.set_level(logging.WARNING, logger="service_discovery_client")
    only = replica(client_database, tmp_path / "r.log", SD_API_TOKENS=TOKEN)
    try:
        only.start()
        only.wait_ready_sync()
        sd = Client(only.base, token=TOKEN, timeout=1)
        sd.create_service(name)
        with sd.lease(name, "10.6.2.1", ttl=2) as lease:
            assert lease.held
            assert stopped(only) == 0
            wait_for(lambda: not lease.held, 10, "the lease no longer held")
            assert "renewing the lease of 10.6.2.1" in caplog.text
            only.start()
            only.wait_ready_sync()
            wait_for(lambda: lease.held, 10, "held again")
            assert [e.ip for e in sd.endpoints(name)] == ["10.6.2.1"]
        assert sd.endpoints(name) == []
    finally:
        only.stop()


async def test_async_lease(daemon: Daemon, name: str, caplog: pytest.LogCaptureFixture) -> None:
    """`async with sd.lease(...)`: held, renewed, registered again after a removal, deregistered
    on exit."""
    caplog.set_level(logging.INFO, logger="service_discovery_client")
    async with AsyncClient(daemon.base, token=TOKEN) as sd:
        await sd.create_service(name)
        async with sd.lease(name, "10.6.3.1", ttl=3) as lease:
            assert lease.held
            await eventually(lambda: lease.state.renewals >= 1, 10, "a renewal")
            await sd.deregister(name, "10.6.3.1")
            await eventually(lambda: lease.state.registrations >= 2, 10, "registered again")
            assert [e.ip for e in await sd.endpoints(name)] == ["10.6.3.1"]
            assert "registering again" in caplog.text
        assert not lease.held
        assert await sd.endpoints(name) == []


# ---- watches -------------------------------------------------------------------------------------
def _stages(name: str) -> list[tuple[str, Callable[[Service | None], bool]]]:
    """The states a watch of `name` must report, in order, while the test creates it,
    registers a 1 s lease, lets it lapse, and deletes it."""
    return [
        ("absent", lambda s: s is None),
        ("created", lambda s: s is not None and s.endpoints == ()),
        ("registered", lambda s: s is not None and [e.ip for e in s.endpoints] == ["10.7.0.1"]),
        ("lapsed", lambda s: s is not None and s.endpoints == ()),
        ("deleted", lambda s: s is None),
    ]


def test_watch_sees_create_register_lapse_delete(sd: Client, name: str) -> None:
    """1. watch a service that does not exist yet; 2. create it; 3. register an endpoint with a
    1 s lease that nobody renews; 4. it lapses; 5. delete the service. Each state is yielded,
    in order; each action is taken only once the previous state was seen."""
    actions: list[Callable[[], object]] = [
        lambda: sd.create_service(name),
        lambda: sd.register(name, "10.7.0.1", ttl=1),
        lambda: None,  # the lapse comes by itself
        lambda: sd.delete_service(name),
    ]
    seen = run_stages(sd.watch(name, wait=5), _stages(name), actions)
    assert seen == ["absent", "created", "registered", "lapsed", "deleted"]


async def test_async_watch_sees_the_same(daemon: Daemon, name: str) -> None:
    async with AsyncClient(daemon.base, token=TOKEN) as sd:
        actions = [
            lambda: sd.create_service(name),
            lambda: sd.register(name, "10.7.0.1", ttl=1),
            None,
            lambda: sd.delete_service(name),
        ]
        stages = _stages(name)
        seen: list[str] = []
        watcher = sd.watch(name, wait=5)
        async with asyncio.timeout(60):
            async for svc in watcher:
                if stages and stages[0][1](svc):
                    seen.append(stages.pop(0)[0])
                    action = actions.pop(0) if actions else None
                    if action is not None:
                        await action()
                if not stages:
                    break
        await watcher.aclose()
    assert seen == ["absent", "created", "registered", "lapsed", "deleted"]


def test_watch_of_the_listing(sd: Client, name: str) -> None:
    """watch() without a name yields the list of services on every change."""
    actions: list[Callable[[], object]] = [
        lambda: sd.create_service(name),
        lambda: sd.delete_service(name),
    ]
    stages: list[tuple[str, Callable[[Any], bool]]] = [
        ("before", lambda ss: name not in {s.name for s in ss}),
        ("created", lambda ss: name in {s.name for s in ss}),
        ("deleted", lambda ss: name not in {s.name for s in ss}),
    ]
    assert run_stages(sd.watch(wait=5), stages, actions) == ["before", "created", "deleted"]


def test_watch_rides_out_a_replica_restart(client_database: str, tmp_path: Path, name: str) -> None:
    """A watch whose only replica restarts keeps going, and reports a change made meanwhile."""
    only = replica(client_database, tmp_path / "w.log", SD_API_TOKENS=TOKEN)
    try:
        only.start()
        only.wait_ready_sync()
        sd = Client(only.base, token=TOKEN, timeout=2)
        sd.create_service(name)
        watcher = sd.watch(name, wait=2)
        assert next(watcher) is not None
        assert stopped(only) == 0
        only.start()
        only.wait_ready_sync()
        sd.register(name, "10.7.1.1")
        deadline = time.monotonic() + 30
        for svc in watcher:  # ends at the registration (one yield), bounded by the deadline
            assert time.monotonic() < deadline
            if svc is not None and svc.endpoints:
                break
        watcher.close()
    finally:
        only.stop()


# ---- the client's README -------------------------------------------------------------------------
def test_readme_examples_run(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Python blocks of clients/python/README.md, in order, in one namespace, against the
    daemon (SD_ADDR, SD_TOKEN); the watch block ends when the service it watches is deleted,
    which a timer does once it has started."""
    readme = (ROOT / "clients/python/README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 6
    monkeypatch.setenv("SD_ADDR", daemon.base)
    monkeypatch.setenv("SD_TOKEN", TOKEN)
    namespace: dict[str, Any] = {}
    for block in blocks:
        timer = None
        if "sd.watch(" in block and "async" not in block:
            timer = threading.Timer(
                1.0, Client(daemon.base, token=TOKEN).delete_service, ["webapp"]
            )
            timer.start()
        try:
            exec(compile(block, "README.md", "exec"), namespace)
        finally:
            if timer is not None:
                timer.join()
    out = capsys.readouterr().out
    assert "already_exists 409 service 'webapp' already exists" in out
    assert "webapp is gone" in out and "True ['10.0.1.1']" in out
    assert http_json(f"{daemon.base}/service/webapp")[0] == 404


# ---- helpers -------------------------------------------------------------------------------------
def run_stages(
    watcher: Iterator[Any],
    stages: list[tuple[str, Callable[[Any], bool]]],
    actions: list[Callable[[], object]],
    timeout: float = 60,
) -> list[str]:
    """Consume a watch: when the answer matches the next expected stage, record it and take the
    next action. Answers in between (an index moved without a visible change) are skipped."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    result: list[list[str]] = []

    def consume() -> None:
        for value in watcher:
            if stages and stages[0][1](value):
                seen.append(stages.pop(0)[0])
                if actions:
                    actions.pop(0)()
            if not stages or time.monotonic() > deadline:
                break
        result.append(seen)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(timeout)
    assert result, f"the watch stalled after {seen}"
    return seen


def wait_for(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)
