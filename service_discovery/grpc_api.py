"""The gRPC front-end (grpc.aio on GRPC_PORT): sd.DiscoveryService, grpc.health.v1.Health and
server reflection.

Handlers only translate: protobuf messages become the plain values the model's parse functions
take (so gRPC and HTTP reject the same inputs with the same messages), and registry errors become
status codes in one place (`STATUS` and `_Call`). Reads come from the registry copy, writes go
through the Catalog (read-your-writes). Watch streams are fed by one registry subscription that
fans each change out to per-stream bounded queues: an idle watcher costs memory, never CPU.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_discovery import model
from service_discovery.auth import Auth
from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    NotReady,
    RegistryError,
    StoreUnavailable,
    TooManyRequests,
    Unauthenticated,
)
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, NamedPort, Service
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DiscoveryService"].full_name  # "sd.DiscoveryService"

# The one mapping from registry errors to gRPC status codes. LimitExceeded (a valid request over
# a configured limit: too many tags, attributes or endpoints, a value too long) is
# FAILED_PRECONDITION rather than INVALID_ARGUMENT, so clients can tell "malformed" from "over
# this deployment's limits", as HTTP does with 400 and 422.
STATUS: dict[type[RegistryError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    LimitExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    TooManyRequests: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    NotReady: grpc.StatusCode.UNAVAILABLE,
}

# Events a watch stream may hold before it is coalesced: a client that falls this far behind gets
# one RELOADED message with the full current state instead, so a stalled reader costs a bounded
# amount of memory and never loses a change.
WATCH_QUEUE_SIZE = 256

# Dead watchers (a client that vanished without closing its connection) are found by HTTP/2
# keepalive pings, so their queues are released; clients may ping us as often as every 10s.
_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared with another process
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
)

_KINDS = {
    "update": pb.UPDATED,
    "delete": pb.DELETED,
    "expire": pb.EXPIRED,
    "reload": pb.RELOADED,
}


def status_of(exc: RegistryError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


# ---- model <-> protobuf ------------------------------------------------------------------
def port_pb(p: NamedPort) -> pb.NamedPort:
    return pb.NamedPort(
        name=p.name, protocol=p.protocol, port=p.port, priority=p.priority, weight=p.weight
    )


def endpoint_pb(service_name: str, e: Endpoint) -> pb.Endpoint:
    return pb.Endpoint(
        service_name=service_name,
        ip=e.ip,
        tags=e.tags,
        ttl_seconds=e.ttl_seconds or 0,
        expires_at=e.expires_at or 0.0,
    )


def service_pb(svc: Service, *, endpoints: bool = True) -> pb.Service:
    return pb.Service(
        name=svc.name,
        attributes=svc.attributes,
        named_ports={name: port_pb(p) for name, p in svc.named_ports.items()},
        id=svc.id,
        index=svc.version,
        endpoints=[endpoint_pb(svc.name, e) for e in svc.endpoints] if endpoints else (),
    )


def _port_body(key: str, p: pb.NamedPort) -> dict[str, Any]:
    """A NamedPort message as the dict `model.named_port` parses; proto3 zeros mean "not given"."""
    if p.name and p.name.lower() != key.lower():
        raise InvalidInput(f"named port {key[:80]!r}: its name field says {p.name[:80]!r}")
    body: dict[str, Any] = {}
    if p.protocol:
        body["protocol"] = p.protocol
    if p.port:
        body["port"] = p.port
    if p.HasField("priority"):
        body["priority"] = p.priority
    if p.HasField("weight"):
        body["weight"] = p.weight
    return body


def _ports(ports: Any) -> dict[str, NamedPort]:
    return model.named_ports({key: _port_body(key, p) for key, p in ports.items()})


def _service_spec(request: pb.CreateServiceRequest, limits: model.Limits) -> model.ServiceSpec:
    if not request.HasField("service"):
        raise InvalidInput("service is required")
    s = request.service
    body = {
        "name": s.name,
        "attributes": dict(s.attributes),
        "named_ports": {key: _port_body(key, p) for key, p in s.named_ports.items()},
    }
    return model.service_spec(body, limits)


def _endpoint_spec(name: str, e: pb.Endpoint, limits: model.Limits) -> model.EndpointSpec:
    if e.service_name and e.service_name.lower() != name.lower():
        raise InvalidInput(
            f"endpoint.service_name {e.service_name[:80]!r} does not match service_name {name!r}"
        )
    body: dict[str, Any] = {"tags": list(e.tags), "ttl_seconds": e.ttl_seconds}
    if e.ip:
        body["ip"] = e.ip
    return model.endpoint_spec(body, limits)


def _peer_address(peer: str) -> str:
    """'ipv4:127.0.0.1:5000' or 'ipv6:%5B::1%5D:5000' -> the address without the port."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("ipv4", "ipv6"):
        return unquote(rest).rpartition(":")[0].strip("[]")
    return peer


# ---- requests that are not protobuf ------------------------------------------------------
class _Malformed:
    """What a request that does not parse becomes, so the handler can answer INVALID_ARGUMENT
    (grpcio itself would fail the call with UNKNOWN and log an error)."""

    __slots__ = ("error", "kind")

    def __init__(self, kind: str, error: str) -> None:
        self.kind = kind
        self.error = error

    def reject(self) -> None:
        raise InvalidInput(f"malformed {self.kind}: {self.error}")


def _lenient(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return _Malformed(cls.__name__, str(exc) or "not a protobuf message")

    return parse


def _add_servicer(servicer: DiscoveryServicer, server: grpc.aio.Server) -> None:
    """Register every RPC of the service descriptor, like the generated helper, but with
    request parsers that let a malformed request reach the handler."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["DiscoveryService"].methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_lenient(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


# ---- one call: errors -> status codes, metrics -------------------------------------------
class _CallStats:
    """sd_grpc_* metric children kept per (method, code): `labels()` takes a lock and hashes its
    arguments on every call, which shows on the hot read path."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._calls: dict[tuple[str, grpc.StatusCode], Any] = {}
        self._latency: dict[str, Any] = {}

    def done(self, method: str, code: grpc.StatusCode, seconds: float | None) -> None:
        calls = self._calls.get((method, code))
        if calls is None:
            calls = self._calls[(method, code)] = self.metrics.grpc_calls.labels(method, code.name)
        calls.inc()
        if seconds is not None:
            latency = self._latency.get(method)
            if latency is None:
                latency = self._latency[method] = self.metrics.grpc_latency.labels(method)
            latency.observe(seconds)


class _Call:
    """Wraps one RPC body: the only place registry errors become status codes.

    Exceptions are swallowed here and remembered as (code, message); the handler then aborts
    with them. Anything that is not a RegistryError is a bug: logged with its traceback, counted
    in sd_internal_errors_total{frontend="grpc"}, answered INTERNAL.
    """

    __slots__ = ("_latency", "_method", "_started", "_stats", "code", "message")

    def __init__(self, stats: _CallStats, method: str, *, latency: bool = True) -> None:
        self._stats = stats
        self._method = method
        self._latency = latency
        self.code = grpc.StatusCode.OK
        self.message = ""

    def __enter__(self) -> _Call:
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        swallow = True
        if exc is None:
            swallow = False
        elif isinstance(exc, RegistryError):
            self.code, self.message = status_of(exc), exc.message
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            # the client went away (or the server cancelled the call at the end of its grace)
            self.code, swallow = grpc.StatusCode.CANCELLED, False
        elif isinstance(exc, grpc.aio.AbortError):
            self.code, swallow = grpc.StatusCode.UNKNOWN, False  # not raised by our handlers
        elif isinstance(exc, Exception):
            log.error("internal error in gRPC %s", self._method, exc_info=(et, exc, tb))  # type: ignore[arg-type]
            self._stats.metrics.internal_errors.labels("grpc").inc()
            self.code, self.message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        else:
            swallow = False
        elapsed = time.perf_counter() - self._started if self._latency else None
        self._stats.done(self._method, self.code, elapsed)
        return swallow


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Unary = Callable[["DiscoveryServicer", Req], Awaitable[Resp]]
Handler = Callable[["DiscoveryServicer", Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _unary(*, write: bool) -> Callable[[Unary[Req, Resp]], Handler[Req, Resp]]:
    """Make a handler `fn(self, request)` an RPC: authorize, run, map errors, count."""

    def decorate(fn: Unary[Req, Resp]) -> Handler[Req, Resp]:
        method = fn.__name__

        @functools.wraps(fn)
        async def handler(
            self: DiscoveryServicer, request: Req, context: grpc.aio.ServicerContext
        ) -> Resp:
            with _Call(self.stats, method) as call:
                self.authorize(context, write=write)
                if isinstance(request, _Malformed):
                    request.reject()
                return await fn(self, request)
            await context.abort(call.code, call.message)
            raise AssertionError("unreachable: abort raises")

        return handler

    return decorate


# ---- Watch -------------------------------------------------------------------------------
class _Event:
    """One registry change, shared by every stream that watches it; its message is built once."""

    __slots__ = ("_message", "key", "kind", "service", "version")

    def __init__(self, kind: int, key: str, service: Service | None, version: int) -> None:
        self.kind = kind
        self.key = key
        self.service = service
        self.version = version
        self._message: pb.WatchResponse | None = None

    def message(self) -> pb.WatchResponse:
        if self._message is None:
            svc = self.service
            self._message = pb.WatchResponse(
                version=self.version,
                kind=self.kind if svc is not None else pb.DELETED,
                service_name=svc.name if svc is not None else self.key,
                services=[service_pb(svc)] if svc is not None else (),
            )
        return self._message


class _Reload:
    """The registry reloaded everything: each stream needs the full state in its scope. The
    message for a scope is built by the first stream that sends it and shared by the others."""

    __slots__ = ("_messages",)

    def __init__(self) -> None:
        self._messages: dict[str | None, pb.WatchResponse] = {}

    def message(self, key: str | None, build: Callable[[], pb.WatchResponse]) -> pb.WatchResponse:
        msg = self._messages.get(key)
        if msg is None:
            msg = self._messages[key] = build()
        return msg


_WAKE = object()  # queue item: look at the stream's flags (closed)


class _Stream:
    """One open Watch: a bounded queue of events, filled synchronously by the registry callback."""

    __slots__ = ("closed", "key", "overflowed", "queue")

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.queue: asyncio.Queue[object] = asyncio.Queue(WATCH_QUEUE_SIZE)
        self.overflowed = False
        self.closed = False

    def push(self, item: object) -> None:
        if self.overflowed or self.closed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # the reader is behind: what it has queued is superseded by one full resend
            self.overflowed = True

    def close(self) -> None:
        self.closed = True
        if not self.queue.full():  # a full queue already wakes the reader
            self.queue.put_nowait(_WAKE)


class _Watches:
    """Every open Watch stream, indexed by the service it watches (None: all services)."""

    def __init__(self, config: Config, catalog: Catalog, metrics: Metrics) -> None:
        self._config = config
        self._catalog = catalog
        self._metrics = metrics
        self._by_key: dict[str | None, set[_Stream]] = {}
        self._per_peer: Counter[str] = Counter()
        self._unsubscribe: Callable[[], None] | None = None
        self.closing = False

    def start(self) -> None:
        self._unsubscribe = self._catalog.registry.subscribe(self._on_change)

    def close(self) -> None:
        """End every stream (UNAVAILABLE "server draining") and refuse new ones."""
        self.closing = True
        for streams in self._by_key.values():
            for stream in streams:
                stream.close()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_change(self, key: str | None, reason: str) -> None:
        # Called synchronously inside the registry's update: cost is O(streams watching `key`).
        if key is None:
            reload = _Reload()
            for streams in self._by_key.values():
                for stream in streams:
                    stream.push(reload)
            return
        watching = (*self._by_key.get(key, ()), *self._by_key.get(None, ()))
        if not watching:
            return  # no stream to tell: do not build the service's view for nobody
        registry = self._catalog.registry
        event = _Event(_KINDS.get(reason, pb.UPDATED), key, registry.get(key), registry.version)
        for stream in watching:
            stream.push(event)

    def _state(self, stream: _Stream, kind: int) -> pb.WatchResponse:
        registry = self._catalog.registry
        if stream.key is None:
            services: Iterable[Service] = registry.services()
        else:
            one = registry.get(stream.key)
            services = (one,) if one is not None else ()
        return pb.WatchResponse(
            version=registry.version, kind=kind, services=[service_pb(s) for s in services]
        )

    async def stream(self, request: pb.WatchRequest, peer: str) -> AsyncIterator[pb.WatchResponse]:
        if self.closing:
            raise NotReady("server draining")
        key = model.service_name(request.service_name).lower() if request.service_name else None
        self._catalog.ensure_loaded()  # UNAVAILABLE, not an empty snapshot, before the load
        limit = self._config.max_watches_per_client
        if self._per_peer[peer] >= limit:
            raise TooManyRequests(f"at most {limit} open watches per client address")
        stream = _Stream(key)
        # registered before the snapshot is taken, with no await between: no change is missed
        self._by_key.setdefault(key, set()).add(stream)
        self._per_peer[peer] += 1
        self._metrics.grpc_watches.inc()
        try:
            yield self._state(stream, pb.SNAPSHOT)
            while True:
                item = await stream.queue.get()
                if stream.closed:
                    raise NotReady("server draining")
                if stream.overflowed:
                    while not stream.queue.empty():  # superseded by the full state
                        stream.queue.get_nowait()
                    stream.overflowed = False
                    yield self._state(stream, pb.RELOADED)
                elif isinstance(item, _Reload):
                    yield item.message(key, lambda: self._state(stream, pb.RELOADED))
                elif isinstance(item, _Event):
                    yield item.message()
        finally:
            self._metrics.grpc_watches.dec()
            streams = self._by_key.get(key)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._by_key[key]
            self._per_peer[peer] -= 1
            if self._per_peer[peer] <= 0:
                del self._per_peer[peer]


# ---- the service -------------------------------------------------------------------------
class DiscoveryServicer(pb_grpc.DiscoveryServiceServicer):
    """sd.DiscoveryService: each method translates one request into one Catalog call."""

    def __init__(self, catalog: Catalog, auth: Auth, metrics: Metrics, watches: _Watches) -> None:
        self.catalog = catalog
        self.auth = auth
        self.stats = _CallStats(metrics)
        self.watches = watches
        # GetService answers kept per registry view: views are immutable and replaced on every
        # change, so identity says whether an answer is current (as HTTP does with its bodies)
        self._answers: dict[str, tuple[Service, pb.GetServiceResponse]] = {}

    def forget(self, key: str | None, reason: str) -> None:
        """Registry subscriber: drop kept answers of changed services (all, on a reload)."""
        if key is None:
            self._answers.clear()
        else:
            self._answers.pop(key, None)

    def authorize(self, context: grpc.aio.ServicerContext, *, write: bool) -> None:
        if not self.auth.required(write=write):  # skip reading metadata when no token is needed
            return
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = value if isinstance(value, str) else None
                break
        self.auth.check(token, write=write)

    # ---- reads (the registry copy) --------------------------------------------------------
    @_unary(write=False)
    async def GetService(self, request: pb.GetServiceRequest) -> pb.GetServiceResponse:
        svc = self.catalog.get(model.service_name(request.service_name))
        kept = self._answers.get(svc.key)
        if kept is None or kept[0] is not svc:
            kept = self._answers[svc.key] = (svc, pb.GetServiceResponse(service=service_pb(svc)))
        return kept[1]

    @_unary(write=False)
    async def ListServices(self, request: pb.ListServicesRequest) -> pb.ListServicesResponse:
        services = self.catalog.list()
        return pb.ListServicesResponse(
            services=[service_pb(s, endpoints=False) for s in services],
            version=self.catalog.registry.index(),
        )

    @_unary(write=False)
    async def LookupEndpoints(
        self, request: pb.LookupEndpointsRequest
    ) -> pb.LookupEndpointsResponse:
        svc = self.catalog.get(model.service_name(request.service_name))
        return pb.LookupEndpointsResponse(
            endpoints=[endpoint_pb(svc.name, e) for e in svc.endpoints], index=svc.version
        )

    # ---- writes (PostgreSQL, then this copy) ----------------------------------------------
    @_unary(write=True)
    async def CreateService(self, request: pb.CreateServiceRequest) -> pb.CreateServiceResponse:
        svc = await self.catalog.create_service(_service_spec(request, self.catalog.limits))
        return pb.CreateServiceResponse(service=service_pb(svc))

    @_unary(write=True)
    async def DeleteService(self, request: pb.DeleteServiceRequest) -> pb.DeleteServiceResponse:
        await self.catalog.delete_service(model.service_name(request.service_name))
        return pb.DeleteServiceResponse()

    @_unary(write=True)
    async def AddNamedPorts(self, request: pb.AddNamedPortsRequest) -> pb.AddNamedPortsResponse:
        name = model.service_name(request.service_name)
        svc = await self.catalog.add_named_ports(name, _ports(request.named_ports))
        return pb.AddNamedPortsResponse(service=service_pb(svc))

    @_unary(write=True)
    async def RegisterEndpoint(
        self, request: pb.RegisterEndpointRequest
    ) -> pb.RegisterEndpointResponse:
        name = model.service_name(request.service_name)
        if not request.HasField("endpoint"):
            raise InvalidInput("endpoint is required")
        spec = _endpoint_spec(name, request.endpoint, self.catalog.limits)
        endpoint = await self.catalog.register(name, spec)
        registry = self.catalog.registry
        return pb.RegisterEndpointResponse(
            endpoint=endpoint_pb(registry.display_name(name) or name, endpoint),
            index=registry.index(name),
        )

    @_unary(write=True)
    async def DeregisterEndpoint(
        self, request: pb.DeregisterEndpointRequest
    ) -> pb.DeregisterEndpointResponse:
        name = model.service_name(request.service_name)
        await self.catalog.deregister(name, model.ip_address(request.ip))
        return pb.DeregisterEndpointResponse()

    @_unary(write=True)
    async def Heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        name = model.service_name(request.service_name)
        expires_at = await self.catalog.heartbeat(name, model.ip_address(request.ip))
        return pb.HeartbeatResponse(expires_at=expires_at)

    # ---- Watch (server streaming) ---------------------------------------------------------
    async def Watch(  # type: ignore[override]
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchResponse]:
        # latency is not recorded: a watch lasts as long as the client wants
        with _Call(self.stats, "Watch", latency=False) as call:
            self.authorize(context, write=False)
            if isinstance(request, _Malformed):
                request.reject()
            async for message in self.watches.stream(request, _peer_address(context.peer())):
                yield message
        if call.code != grpc.StatusCode.OK:
            await context.abort(call.code, call.message)


# ---- the server --------------------------------------------------------------------------
class GrpcServer:
    """The gRPC listener's lifecycle, driven by app.py: start, set_serving, stop."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        auth: Auth,
        metrics: Metrics,
        is_ready: Callable[[], bool],
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._is_ready = is_ready
        self._unsubscribe: Callable[[], None] | None = None
        self._watches = _Watches(config, catalog, metrics)
        self._servicer = DiscoveryServicer(catalog, auth, metrics, self._watches)
        self._health = health.aio.HealthServicer()
        self._health_updates: set[asyncio.Task[None]] = set()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        config = self._config
        options = (
            *_SERVER_OPTIONS,
            ("grpc.max_receive_message_length", config.http_max_body_bytes),
        )
        server = grpc.aio.server(options=options)
        _add_servicer(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        # The health servicer starts with "" SERVING: correct that before the port opens.
        await self._set_health(self._is_ready())
        host = config.bind_address
        address = f"[{host}]:{config.grpc_port}" if ":" in host else f"{host}:{config.grpc_port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio reports a failed bind this way
            raise OSError(errno.EADDRINUSE, f"gRPC cannot listen on {address}: {exc}") from None
        self._unsubscribe = self._catalog.registry.subscribe(self._servicer.forget)
        self._watches.start()
        await server.start()
        self._server = server

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)

    def set_serving(self, serving: bool) -> None:
        """SERVING once the app is ready; NOT_SERVING while draining (app.py calls this)."""
        # HealthServicer.set is a coroutine; tasks run in creation order, so the last call wins
        task = asyncio.get_running_loop().create_task(self._set_health(serving))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, end watch streams (UNAVAILABLE "server draining"), give in-flight
        calls `grace` seconds, then cancel what is left."""
        if self._health_updates:
            await asyncio.gather(*self._health_updates, return_exceptions=True)
        await self._health.enter_graceful_shutdown()
        self._watches.close()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
