"""The operations clients ask for, shared by the HTTP and gRPC front-ends.

Writes validate (model), commit (store), then apply the committed state to this replica's copy
before returning, so a client reads its own writes here. Reads come from the copy only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service_discovery.config import Config
from service_discovery.errors import Conflict, InvalidInput, NotFound, NotReady, StoreUnavailable
from service_discovery.leases import Leases
from service_discovery.metrics import Metrics
from service_discovery.model import (
    Endpoint,
    EndpointChange,
    EndpointSpec,
    Limits,
    NamedPort,
    Service,
    ServiceSpec,
)
from service_discovery.registry import ChangeCallback, Registry
from service_discovery.store import Store

_CATCH_UP_SECONDS = 0.5  # how long a write waits for earlier changes before reading it all


class Catalog:
    def __init__(
        self,
        config: Config,
        store: Store,
        registry: Registry,
        leases: Leases,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.limits = Limits.from_config(config)
        self.registry = registry
        self._store = store
        self._leases = leases
        self._metrics = metrics
        # ---- reads (shared by the front-ends) ----
        # None for "absent", never an exception, and no readiness check: a front-end decides
        # what "not loaded" means on its wire (DNS: SERVFAIL). These are the registry copy's
        # own bound methods rather than methods calling them, so a DNS cache miss, which
        # reads through them, pays no extra call.
        self.find: Callable[[str], Service | None] = registry.get
        self.services: Callable[[], list[Service]] = registry.services
        self.names_for_ip: Callable[[str], tuple[str, ...]] = registry.names_for_ip
        self.subscribe: Callable[[ChangeCallback], Callable[[], None]] = registry.subscribe

    @property
    def loaded(self) -> bool:
        """True once the copy holds a full load; before that, absence proves nothing."""
        return self.registry.loaded

    @property
    def version(self) -> int:
        """The registry version: moves with every change applied to the copy."""
        return self.registry.version

    # ---- end of the shared reads ----

    # ---- reads ---------------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        """Raise NotReady until the copy is loaded: never answer "not found" before that."""
        self._loaded()

    def _loaded(self) -> Registry:
        if not self.registry.loaded:
            raise NotReady("the registry copy is not loaded yet")
        return self.registry

    def get(self, name: str) -> Service:
        svc = self._loaded().get(name)
        if svc is None:
            raise NotFound(f"service {name!r} not found")
        return svc

    def list(self) -> list[Service]:
        return self._loaded().services()

    # ---- writes --------------------------------------------------------------------------
    async def _write(self, coro):  # type: ignore[no-untyped-def]
        try:
            return await coro
        except StoreUnavailable:
            self._metrics.store_errors.inc()
            raise

    def _applied(self, svc: Service) -> Service:
        self.registry.apply(svc.version, svc.key, svc)
        return self.registry.get(svc.name) or svc

    async def create_service(self, spec: ServiceSpec) -> Service:
        return self._applied(await self._write(self._store.create_service(spec)))

    async def delete_service(self, name: str) -> None:
        version = await self._write(self._store.delete_service(name))
        self.registry.apply(version, name, None)

    async def add_named_ports(self, name: str, ports: dict[str, NamedPort]) -> Service:
        if not ports:
            raise InvalidInput("give at least one named port")
        return self._applied(await self._write(self._store.add_named_ports(name, ports)))

    async def _apply_change(self, change: EndpointChange) -> None:
        """Reflect our committed change in our copy before answering (read-your-writes).

        The copy may not hold the version just before ours yet: a concurrent write to the same
        service (ours, answered a moment later, or another replica's, on its way through
        LISTEN) committed first. Those arrive within milliseconds and in order, so wait for
        them briefly; only a copy that stays behind is fixed by reading the whole service.
        """
        registry = self.registry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CATCH_UP_SECONDS
        while not registry.apply_endpoint(change):
            remaining = deadline - loop.time()
            if remaining <= 0 or registry.closed or registry.get(change.service) is None:
                snapshot = await self._write(self._store.snapshot([change.service]))
                svc = snapshot.services.get(change.service)
                registry.apply(snapshot.version, change.service, svc)
                return
            await registry.wait_for_change(
                change.service, registry.index(change.service), remaining
            )

    async def register(self, name: str, spec: EndpointSpec) -> Endpoint:
        """Register (or update) an endpoint; returns it as stored."""
        change = await self._write(self._store.register_endpoint(name, spec))
        await self._apply_change(change)
        assert change.endpoint is not None
        return change.endpoint

    async def deregister(self, name: str, ip: str) -> None:
        await self._apply_change(await self._write(self._store.deregister_endpoint(name, ip)))

    async def heartbeat(self, name: str, ip: str) -> float:
        """Renew a lease; NotFound tells the client to register again. Returns the new expiry."""
        svc = self.get(name)
        endpoint = self.registry.endpoint(name, ip)
        if endpoint is None:
            raise NotFound(f"endpoint {ip} of service {svc.name!r} not found (register it again)")
        if endpoint.ttl_seconds is None:
            raise Conflict(f"endpoint {ip} of service {svc.name!r} has no lease (no ttl)")
        return await self._write(self._leases.renew(svc.name, ip))
