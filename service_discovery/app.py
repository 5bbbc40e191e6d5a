"""The lifecycle, in one place: start, ready, drain, stop.

Start: database (embedded or given; migrations: database.py), listeners, registry load; the
write pool opens in the background, retried until it does. Ready means "the copy is loaded with
LISTEN established, and we are not draining". Shutdown order is fixed: /ready and gRPC health
turn unready, wait the drain period, then, all within SHUTDOWN_TIMEOUT_SECONDS: stop listeners,
finish in-flight work, stop background work, close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from service_discovery import database, ui
from service_discovery.auth import Auth, warn_if_exposed
from service_discovery.catalog import Catalog
from service_discovery.commit import GroupCommit
from service_discovery.config import Config
from service_discovery.consul_api import ConsulApi, ConsulSettings
from service_discovery.dns import DnsServer
from service_discovery.grpc_api import GrpcServer, GrpcSettings
from service_discovery.http_api import HttpServer, HttpSettings
from service_discovery.leases import Leases
from service_discovery.metrics import Metrics
from service_discovery.model import Limits
from service_discovery.readiness import Readiness
from service_discovery.registry import Registry
from service_discovery.store import Store
from service_discovery.sync import Sync
from service_discovery.tls import Certificates, TlsSettings
from service_discovery.watch import AnswerCache, WatchLimiter

log = logging.getLogger(__name__)

_CLOSE_RESERVE_SECONDS = 1.0  # of the shutdown deadline, kept for cancelling and closing


class FrontEnd(Protocol):
    """What App asks of a listener (HTTP, DNS, gRPC): start, stop (idempotent, and harmless
    when `start` never ran or failed), and the port it bound (0 before `start`)."""

    @property
    def port(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Parts:
    """Everything that runs once the database is known, built together by `App.start` before
    anything starts (constructors do no I/O), so no part is ever there without the others."""

    store: Store
    leases: Leases
    commit: GroupCommit
    catalog: Catalog
    sync: Sync
    answers: AnswerCache
    http: HttpServer
    consul: ConsulApi  # served by `http` under /v1/
    dns: DnsServer
    grpc: GrpcServer
    tls: Certificates | None  # reloads the certificate files while serving

    @property
    def front_ends(self) -> tuple[FrontEnd, ...]:
        """The listeners in the order they start (they stop all at once)."""
        return (self.http, self.dns, self.grpc)


def in_flight_seconds(config: Config) -> float:
    """How long in-flight requests and calls get at stop: SHUTDOWN_TIMEOUT_SECONDS less what
    cancelling what is left and closing the database keep (a tenth, 1 s at most)."""
    timeout = config.shutdown_timeout_seconds
    return timeout - min(_CLOSE_RESERVE_SECONDS, timeout / 10)


class App:
    def __init__(self, config: Config, *, migrate_first: bool = False) -> None:
        self.config = config
        self.metrics = Metrics()
        self.registry = Registry(config)
        self.draining = False
        self.database_url = config.database_url or ""
        self._migrate_first = migrate_first
        self._database: database.Database | None = None  # set by `start`
        self._parts: Parts | None = None  # set by `start`
        self._pool_task: asyncio.Task[None] | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self.metrics.bind_registry(
            self.registry.service_count,
            self.registry.endpoint_count,
            lambda: self.registry.version,
        )
        self.registry.on_guard = lambda on: self.metrics.lease_self_preservation.set(int(on))
        self.metrics.lease_guarded_services.set_function(self.registry.guarded_services)

    # ---- state ---------------------------------------------------------------------------
    @property
    def parts(self) -> Parts:
        """The running parts; RuntimeError before `start` has built them."""
        if self._parts is None:
            raise RuntimeError("the app is not started")
        return self._parts

    # The parts by name, for tests and embedding.
    @property
    def store(self) -> Store:
        return self.parts.store

    @property
    def leases(self) -> Leases:
        return self.parts.leases

    @property
    def commit(self) -> GroupCommit:
        return self.parts.commit

    @property
    def catalog(self) -> Catalog:
        return self.parts.catalog

    @property
    def sync(self) -> Sync:
        return self.parts.sync

    @property
    def http(self) -> HttpServer:
        return self.parts.http

    @property
    def dns(self) -> DnsServer:
        return self.parts.dns

    @property
    def grpc(self) -> GrpcServer:
        return self.parts.grpc

    def is_ready(self) -> bool:
        parts = self._parts
        return not self.draining and parts is not None and parts.sync.synced.is_set()

    def readiness(self) -> Readiness:
        """What /ready reports: whether to route to us, and how current our copy is."""
        sync = self._parts.sync if self._parts is not None else None
        up = sync is not None and sync.connected
        pool = self._pool_task  # done without an error: the write pool is open
        pool_open = (
            pool is not None and pool.done() and not pool.cancelled() and not pool.exception()
        )
        return Readiness(
            ready=self.is_ready(),
            draining=self.draining,
            database_up=up and pool_open,
            copy_live=up and self.registry.loaded,
            stale_seconds=sync.stale_seconds() if sync is not None else 0.0,
            version=self.registry.version,
        )

    @property
    def http_port(self) -> int:
        return self._parts.http.port if self._parts is not None else 0

    @property
    def dns_port(self) -> int:
        return self._parts.dns.port if self._parts is not None else 0

    @property
    def grpc_port(self) -> int:
        return self._parts.grpc.port if self._parts is not None else 0

    # ---- start ---------------------------------------------------------------------------
    def _build(self) -> Parts:
        config, registry, metrics = self.config, self.registry, self.metrics
        store = Store(config, self.database_url)
        leases = Leases(config, store, registry, metrics)
        commit = GroupCommit(config, store, registry, metrics)
        catalog = Catalog(Limits.from_config(config), commit, registry, leases, metrics)
        auth = Auth.from_config(config)
        warn_if_exposed(auth, config.bind_address)
        # one watch limit per client address and one answer cache, whatever the front-end
        watches = WatchLimiter(config.max_watches_per_client, config.max_watches)
        answers = AnswerCache(catalog)
        tls_settings = TlsSettings.from_config(config)
        tls = Certificates(tls_settings) if tls_settings is not None else None
        sync = Sync(config, self.database_url, registry, metrics)
        metrics.sync_stale.set_function(sync.stale_seconds)
        in_flight = in_flight_seconds(config)
        http_settings = HttpSettings.from_config(config, in_flight)
        grpc_settings = GrpcSettings.from_config(config, in_flight)
        if tls is not None:
            http_settings = replace(http_settings, ssl_context=tls.ssl_context)
            grpc_settings = replace(grpc_settings, credentials=tls.grpc_credentials())
        http = HttpServer(http_settings, catalog, metrics, auth, self.readiness, watches, answers)
        consul = ConsulApi(ConsulSettings.from_config(config), catalog, metrics, auth.enabled,
                           watches, answers)  # fmt: skip
        consul.attach(http.app)
        dns = DnsServer(config, catalog, metrics)
        # The dashboard and the DNS records it shows, served by the HTTP listener: what DNS
        # answers comes from the DNS server itself.
        ui.add_routes(http.app, config, catalog, answers, dns.describe, lambda: dns.port)
        return Parts(
            store=store,
            leases=leases,
            commit=commit,
            catalog=catalog,
            sync=sync,
            answers=answers,
            http=http,
            consul=consul,
            dns=dns,
            grpc=GrpcServer(grpc_settings, catalog, auth, metrics, self.is_ready, watches, answers),
            tls=tls,
        )

    async def start(self) -> None:
        db = await database.prepare(self.config, migrate_first=self._migrate_first)
        self._database, self.database_url = db, db.url
        self._parts = parts = self._build()
        # Listeners come up first: probes and SERVFAIL/503 answers before the registry loads.
        for server in parts.front_ends:
            await server.start()
        self.metrics.before_render.append(parts.dns.flush_metrics)
        if parts.tls is not None:
            parts.tls.start()
        log.info(
            "listening on %s: http %d, dns %d (udp+tcp), grpc %d",
            self.config.bind_address,
            self.http_port,
            self.dns_port,
            self.grpc_port,
        )

        opening = database.open_pool(parts.store, db, self.metrics)
        self._pool_task = asyncio.create_task(opening, name="sd-pool")
        await parts.sync.start()
        parts.leases.start()
        self._ready_task = asyncio.create_task(self._mark_ready(parts), name="sd-ready")

    async def _mark_ready(self, parts: Parts) -> None:
        await parts.sync.synced.wait()
        if not self.draining:
            self.metrics.ready.set(1)
            parts.grpc.set_serving(True)
            # Everything built so far (modules, the registry copy) lives as long as the process:
            # move it out of the collector's view so full collections do not scan it again and
            # again while serving.
            gc.freeze()
            log.info("ready")

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(self.sync.synced.wait(), timeout)
        if self._pool_task is not None:
            await asyncio.wait_for(asyncio.shield(self._pool_task), timeout)

    # ---- drain and stop -------------------------------------------------------------------
    async def drain(self) -> None:
        """Turn unready at once, then give load balancers the drain period to notice."""
        self.draining = True
        self.metrics.ready.set(0)
        if self._parts is not None:
            self._parts.grpc.set_serving(False)
        log.info("draining for %.1fs", self.config.shutdown_drain_seconds)
        await asyncio.sleep(self.config.shutdown_drain_seconds)

    async def stop(self) -> None:
        """Stop what `start` started, in the one fixed order, all by one deadline
        (SHUTDOWN_TIMEOUT_SECONDS from now). Never raises: a failing step is logged and the next
        one runs. Safe after a failed start.

        1. Listeners, all at once; then blocking queries answer with what they have (their
           clients ask again elsewhere: the listener is closed), Watch streams end (UNAVAILABLE).
        2. In-flight work finishes within `in_flight_seconds`; what is left is cancelled.
        3. Background work: the pool's opener, queued writes (group commit), the lease reaper
           and renewal batches, the sync.
        4. The copy and the database pool (terminated if it cannot close by the deadline).
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout_seconds
        parts = self._parts
        if parts is not None:
            await asyncio.gather(*(_stop_listener(s, deadline) for s in parts.front_ends))
        for task in (self._pool_task, self._ready_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await _quietly("start-up task", task, deadline)
        if parts is not None:
            parts.consul.close()
            if parts.tls is not None:
                await parts.tls.stop()
            parts.answers.close()
            # writes still queued or in flight (their callers are gone with the listeners)
            committing = parts.commit.stop(max(0.0, deadline - loop.time()))
            await _quietly("group commit", committing, deadline)
            leases = parts.leases.stop(max(0.0, deadline - loop.time()))
            await _quietly("leases", leases, deadline)
            await _quietly("registry sync", parts.sync.stop(), deadline)
        self.registry.close()
        if parts is not None:
            remaining = max(0.0, deadline - loop.time())
            await _quietly("database pool", parts.store.close(remaining))
        embedded = self._database.embedded if self._database is not None else None
        if embedded is not None:
            await _quietly("embedded database", asyncio.to_thread(embedded.stop))
        leftover = [
            t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
        ]
        if leftover:
            log.debug("%d background tasks still running at stop", len(leftover))
        log.info("stopped")


async def _stop_listener(server: FrontEnd, deadline: float) -> None:
    """Stop one front-end by `deadline` at the latest (each also cuts its own in-flight work at
    `in_flight_seconds`): a stop that overruns is abandoned, one that fails is logged."""
    name = type(server).__name__
    try:
        async with asyncio.timeout_at(deadline):
            await server.stop()
    except TimeoutError:
        log.warning("%s: still stopping at the shutdown deadline; abandoned", name)
    except Exception:
        log.exception("%s: failed to stop", name)


async def _quietly(what: str, step: Awaitable[object], deadline: float | None = None) -> None:
    """Run one step of `stop`, abandoned at `deadline`: an error is logged, never raised (the
    next steps must run)."""
    try:
        async with asyncio.timeout_at(deadline):
            await step
    except TimeoutError:
        log.warning("stop: %s still running at the shutdown deadline; abandoned", what)
    except Exception:
        log.exception("stop: %s failed", what)


@asynccontextmanager
async def run_app(config: Config, *, ready_timeout: float = 30.0) -> AsyncIterator[App]:
    """Start an App, wait until it is ready, yield it, stop it (tests and embedding)."""
    app = App(config)
    try:
        await app.start()
        await app.wait_ready(ready_timeout)
        yield app
    finally:
        await app.stop()


async def serve(
    config: Config, *, migrate_first: bool, on_second_signal: Callable[[], None]
) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop in order. A second signal calls
    `on_second_signal` (the CLI exits at once)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def handle(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal %s: exiting now", signal.Signals(signum).name)
            on_second_signal()
            return
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)
    app = App(config, migrate_first=migrate_first)
    try:
        await app.start()
        await stop.wait()
        await app.drain()
    finally:
        await app.stop()
