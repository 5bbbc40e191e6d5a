"""The lifecycle, in one place: start, ready, drain, stop.

Start: database (embedded or given; migrations), listeners, registry load. Ready means "the
copy is loaded with LISTEN established, and we are not draining". Shutdown order is fixed:
/ready and gRPC health turn unready, wait the drain period, stop listeners (in-flight work gets
SHUTDOWN_TIMEOUT_SECONDS), stop background work, close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from service_discovery import migrate
from service_discovery.auth import Auth
from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.dns import DnsServer
from service_discovery.embedded import EmbeddedPostgres
from service_discovery.errors import StoreUnavailable
from service_discovery.grpc_api import GrpcServer, GrpcSettings
from service_discovery.http_api import HttpSettings, build_app
from service_discovery.leases import Leases
from service_discovery.metrics import Metrics
from service_discovery.model import Limits
from service_discovery.registry import Registry
from service_discovery.store import Store
from service_discovery.sync import Sync
from service_discovery.watch import AnswerCache, WatchLimiter

log = logging.getLogger(__name__)


class MigrationsPending(RuntimeError):
    """DATABASE_URL points at a database whose schema is behind this version."""


class App:
    def __init__(self, config: Config, *, migrate_first: bool = False) -> None:
        self.config = config
        self.metrics = Metrics()
        self.registry = Registry(config)
        self.draining = False
        self._migrate_first = migrate_first
        self._embedded: EmbeddedPostgres | None = None
        self._runner: web.AppRunner | None = None
        self._pool_task: asyncio.Task[None] | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self.database_url = config.database_url or ""
        self.store: Store | None = None
        self.sync: Sync | None = None
        self.leases: Leases | None = None
        self.catalog: Catalog | None = None
        self.dns: DnsServer | None = None
        self.grpc: GrpcServer | None = None
        self.http_port = 0
        self.metrics.bind_registry(
            self.registry.service_count,
            self.registry.endpoint_count,
            lambda: self.registry.version,
        )
        self.registry.on_guard = lambda on: self.metrics.lease_self_preservation.set(int(on))

    # ---- state ---------------------------------------------------------------------------
    def is_ready(self) -> bool:
        return not self.draining and self.sync is not None and self.sync.synced.is_set()

    @property
    def dns_port(self) -> int:
        return self.dns.port if self.dns is not None else 0

    @property
    def grpc_port(self) -> int:
        return self.grpc.port if self.grpc is not None else 0

    # ---- start ---------------------------------------------------------------------------
    async def _prepare_database(self) -> None:
        if not self.config.database_url:
            self._embedded = EmbeddedPostgres(self.config.resolved_data_dir())
            self.database_url = await asyncio.to_thread(self._embedded.start)
            applied = await asyncio.to_thread(migrate.apply, self.database_url)
            if applied:
                log.info("embedded database: applied migrations %s", ", ".join(applied))
            return
        if self._migrate_first:
            applied = await asyncio.to_thread(migrate.apply, self.database_url)
            log.info("applied migrations: %s", ", ".join(applied) or "none pending")
            return
        try:
            todo = await asyncio.to_thread(migrate.pending, self.database_url)
        except StoreUnavailable as exc:
            # Not fatal: the sync loop retries and /ready stays 503 until the database is back.
            log.warning("cannot check migrations yet: %s", exc)
            return
        if todo:
            raise MigrationsPending(
                f"the database has {len(todo)} pending migration(s) ({', '.join(todo)}): run "
                "'service-discovery migrate' first, or start with 'serve --migrate'"
            )

    async def start(self) -> None:
        config = self.config
        await self._prepare_database()
        self.store = Store(config, self.database_url)
        self.leases = Leases(config, self.store, self.registry, self.metrics)
        self.catalog = Catalog(
            Limits.from_config(config), self.store, self.registry, self.leases, self.metrics
        )
        auth = Auth(config.tokens(), config.protect_reads)
        self.sync = Sync(config, self.database_url, self.registry, self.metrics)

        # Listeners come up first: probes and SERVFAIL/503 answers before the registry loads.
        http_settings = HttpSettings(
            max_body_bytes=config.http_max_body_bytes,
            body_timeout_seconds=config.http_body_timeout_seconds,
            watch_max_wait_seconds=config.watch_max_wait_seconds,
        )
        # one watch limit per client address and one answer cache, whatever the front-end
        watches = WatchLimiter(config.max_watches_per_client)
        self._answers = answers = AnswerCache(self.catalog)
        http_app = build_app(
            http_settings, self.catalog, self.metrics, auth, self.is_ready, watches, answers
        )
        self._runner = web.AppRunner(
            http_app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=config.shutdown_timeout_seconds,
            # A client that hangs up ends its request: a blocking query stops waiting (and
            # frees its watch slot) instead of holding memory until its wait is over.
            handler_cancellation=True,
            # Armed when a connection opens and after each response: a client that sends no
            # complete request head in this time (slowloris) or sits idle is closed, so slow
            # clients cannot pin file descriptors. Request heads are bounded by aiohttp's
            # parser limits (8190-byte lines, 128 headers: 400 beyond).
            keepalive_timeout=config.http_idle_timeout_seconds,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, config.bind_address, config.http_port, backlog=1024)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        self.dns = DnsServer(config, self.catalog, self.metrics)
        await self.dns.start()
        self.metrics.before_render.append(self.dns.flush_metrics)
        grpc_settings = GrpcSettings(
            bind_address=config.bind_address,
            port=config.grpc_port,
            max_message_bytes=config.http_max_body_bytes,
        )
        self.grpc = GrpcServer(
            grpc_settings, self.catalog, auth, self.metrics, self.is_ready, watches, answers
        )
        await self.grpc.start()
        log.info(
            "listening on %s: http %d, dns %d (udp+tcp), grpc %d",
            config.bind_address,
            self.http_port,
            self.dns_port,
            self.grpc_port,
        )

        self._pool_task = asyncio.create_task(self._open_pool(), name="sd-pool")
        await self.sync.start()
        self.leases.start()
        self._ready_task = asyncio.create_task(self._mark_ready(), name="sd-ready")

    async def _open_pool(self) -> None:
        assert self.store is not None
        delay = 0.2
        while True:
            try:
                await self.store.open()
                return
            except StoreUnavailable as exc:
                log.warning("database pool: %s; retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _mark_ready(self) -> None:
        assert self.sync is not None
        await self.sync.synced.wait()
        if not self.draining:
            self.metrics.ready.set(1)
            if self.grpc is not None:
                self.grpc.set_serving(True)
            # Everything built so far (modules, the registry copy) lives as long as the process:
            # move it out of the collector's view so full collections do not scan it again and
            # again while serving.
            gc.freeze()
            log.info("ready")

    async def wait_ready(self, timeout: float) -> None:
        assert self.sync is not None
        await asyncio.wait_for(self.sync.synced.wait(), timeout)
        if self._pool_task is not None:
            await asyncio.wait_for(asyncio.shield(self._pool_task), timeout)

    # ---- drain and stop -------------------------------------------------------------------
    async def drain(self) -> None:
        """Turn unready at once, then give load balancers the drain period to notice."""
        self.draining = True
        self.metrics.ready.set(0)
        if self.grpc is not None:
            self.grpc.set_serving(False)
        log.info("draining for %.1fs", self.config.shutdown_drain_seconds)
        await asyncio.sleep(self.config.shutdown_drain_seconds)

    async def stop(self) -> None:
        self.draining = True
        timeout = self.config.shutdown_timeout_seconds
        self.registry.close()  # blocking queries answer now with what they have
        if self.grpc is not None:
            await self.grpc.stop(timeout)
        if self.dns is not None:
            await self.dns.stop()
        if self._runner is not None:
            await self._runner.cleanup()  # waits for in-flight requests up to the timeout
        for task in (self._pool_task, self._ready_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.leases is not None:
            await self.leases.stop()
        if self.sync is not None:
            await self.sync.stop()
        if self.store is not None:
            await self.store.close(timeout)
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
        leftover = [
            t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
        ]
        if leftover:
            log.debug("%d background tasks still running at stop", len(leftover))
        log.info("stopped")


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
