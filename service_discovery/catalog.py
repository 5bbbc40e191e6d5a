"""The one thing a front-end talks to: reads, writes and change notification of the registry.

HTTP, gRPC and DNS (and the front-ends to come) translate their wire formats into calls here and
never reach the registry copy, the store or the leases themselves. Writes validate (model),
then go through the group commit (`commit.py`), which answers once the write is committed and
applied to this replica's copy, so a client reads its own writes here. Reads come from the copy
only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from service_discovery import writes
from service_discovery.announce import ChangeCallback
from service_discovery.changes import ChangeFeed, Encoder
from service_discovery.commit import GroupCommit
from service_discovery.errors import Conflict, InvalidInput, NotFound, NotReady, StoreUnavailable
from service_discovery.leases import Leases
from service_discovery.metrics import Metrics
from service_discovery.model import (
    Endpoint,
    EndpointSpec,
    Limits,
    NamedPort,
    Service,
    ServiceSpec,
)
from service_discovery.registry import Registry

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Registered:
    """What a registration answers with, without building the service's whole view (that
    costs O(endpoints)): the endpoint as stored, the service's name as it was created (lookups
    ignore case) and the service's index after the write."""

    service_name: str
    endpoint: Endpoint
    index: int


@dataclass(frozen=True, slots=True)
class RegisteredMany:
    """What a bulk registration answers with: the endpoints as stored, the addresses it
    removed (replace), the service's name as it was created and its index after the write."""

    service_name: str
    endpoints: tuple[Endpoint, ...]
    removed: tuple[str, ...]
    index: int


class Catalog:
    def __init__(
        self,
        limits: Limits,
        commit: GroupCommit,
        registry: Registry,
        leases: Leases,
        metrics: Metrics,
    ) -> None:
        self.limits = limits  # what writes accept: front-ends parse their input with it
        self._registry = registry
        self._commit = commit
        self._leases = leases
        self._metrics = metrics
        self.find = registry.get  # hot-path aliases: see the reads below
        self.names_for_ip = registry.names_for_ip

    # ---- reads (shared by the front-ends) ----
    # `find` and `names_for_ip` are the copy's own bound methods, set in __init__: the DNS hot
    # path calls them per query, and a wrapper would cost one more Python call each time.
    find: Callable[[str], Service | None]
    """A service's current view, or None (no such service, or the copy is not loaded yet:
    check `loaded` first). Never raises."""
    names_for_ip: Callable[[str], tuple[str, ...]]
    """The keys of the services that have `ip` as a live endpoint, sorted (PTR answers)."""

    @property
    def loaded(self) -> bool:
        """Whether the copy is loaded: before that, nothing may be answered "not found"."""
        return self._registry.loaded

    @property
    def version(self) -> int:
        """The registry version this copy holds (the DNS serial, the listing's index)."""
        return self._registry.version

    def ensure_loaded(self) -> None:
        """Raise NotReady until the copy is loaded: never answer "not found" before that."""
        if not self._registry.loaded:
            raise NotReady("the registry copy is not loaded yet")

    def index(self, name: str | None = None) -> int:
        """The Consul-style index: of one service (moves only when it changes; for a deleted
        service, the version of the deletion; 0 for one never seen), or of the registry."""
        return self._registry.index(name)

    def get(self, name: str) -> Service:
        """A service's current view; NotReady before the load, NotFound if there is none."""
        self.ensure_loaded()
        svc = self._registry.get(name)
        if svc is None:
            raise NotFound(f"service {name!r} not found")
        return svc

    def services(self) -> list[Service]:
        """Every service, sorted by name (empty before the load: check `loaded`)."""
        return self._registry.services()

    def display_name(self, name: str) -> str | None:
        """A service's name as it was created (lookups ignore case), without building its view."""
        return self._registry.display_name(name)

    def service_count(self) -> int:
        return self._registry.service_count()

    def instance(self, instance_id: str) -> tuple[str, str] | None:
        """(service key, ip) of the endpoint registered with this instance ID (the Consul API's
        ServiceID), whether its lease is live or lapsed; None if no endpoint has it."""
        return self._registry.instance(instance_id)

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback(key, reason)` synchronously on every change of the copy (key None:
        everything was reloaded); returns the function that unsubscribes it. Callbacks run
        inside the update, so they must be quick; one that raises is logged and skipped."""
        return self._registry.subscribe(callback)

    # (last among the reads: below it, `list` in an annotation would mean this method)
    def list(self) -> list[Service]:
        """Every service, sorted by name; NotReady before the load."""
        self.ensure_loaded()
        return self._registry.services()

    async def wait_for_change(self, name: str | None, index: int, timeout: float) -> None:
        """Wait at most `timeout` seconds for what a blocking query on `name` (None: the
        listing) reports: its index passing `index`, or, for one service, its live endpoints
        changing without the index moving (a lease lapsed, or came back). Returns at once when
        the index is already past `index`, and on a reload or shutdown. One future per waiter,
        woken by the change itself: nothing polls."""
        await self._registry.wait_for_change(name, index, timeout)

    def release_waiting(self) -> None:
        """Answer every `wait_for_change` now (shutdown: the listeners are closed, so their
        clients ask again elsewhere); later waits wait as usual."""
        self._registry.release()

    def change_feed(self, encoder: Encoder[M], queue_size: int) -> ChangeFeed[M]:
        """The change streams of one front-end (gRPC Watch), its messages built by `encoder`:
        see `changes.ChangeFeed`. The caller starts and closes it."""
        return ChangeFeed(self._registry, encoder, queue_size)

    # ---- writes --------------------------------------------------------------------------
    async def create_service(self, spec: ServiceSpec) -> Service:
        self.limits.check_named_ports(len(spec.named_ports), spec.name)
        done = await self._commit.submit(writes.CreateService(spec))
        assert done.state is not None  # a creation's answer is the service it made
        return self._registry.get(spec.name) or done.state

    async def delete_service(self, name: str) -> None:
        await self._commit.submit(writes.DeleteService(name))

    async def add_named_ports(self, name: str, ports: dict[str, NamedPort]) -> Service:
        if not ports:
            raise InvalidInput("give at least one named port")
        self.limits.check_named_ports(len(ports), name)
        done = await self._commit.submit(writes.AddPorts(name, ports))
        assert done.state is not None  # new ports are answered with the service
        return self._registry.get(name) or done.state

    async def register(self, name: str, spec: EndpointSpec) -> Registered:
        """Register (or update) an endpoint; returns it as stored, with the service's name and
        index to answer with."""
        done = await self._commit.submit(writes.Register(name, spec))
        registry = self._registry
        return Registered(registry.display_name(name) or name, done.stored[0], registry.index(name))

    async def register_many(
        self, name: str, specs: tuple[EndpointSpec, ...], *, replace: bool = False
    ) -> RegisteredMany:
        """Register (or update) many endpoints as one change (one index move); with `replace`,
        the service's other endpoints go."""
        done = await self._commit.submit(writes.RegisterMany(name, specs, replace))
        registry = self._registry
        return RegisteredMany(
            registry.display_name(name) or name, done.stored, done.removed, registry.index(name)
        )

    async def deregister(self, name: str, ip: str) -> None:
        await self._commit.submit(writes.Deregister(name, ip))

    async def heartbeat(self, name: str, ip: str) -> float:
        """Renew a lease; NotFound tells the client to register again. Returns the new expiry."""
        svc = self.get(name)
        endpoint = self._registry.endpoint(name, ip)
        if endpoint is None:
            raise NotFound(f"endpoint {ip} of service {svc.name!r} not found (register it again)")
        if endpoint.ttl_seconds is None:
            raise Conflict(f"endpoint {ip} of service {svc.name!r} has no lease (no ttl)")
        try:
            return await self._leases.renew(svc.name, ip)
        except StoreUnavailable:
            self._metrics.store_errors.inc()
            raise
