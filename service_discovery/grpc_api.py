"""The gRPC front-end (grpc.aio on GRPC_PORT): sd.DiscoveryService, grpc.health.v1.Health and
server reflection.

Handlers only translate (grpc_codec.py: protobuf <-> model) into calls on the Catalog, and
registry errors become status codes in one place (grpc_calls.py, with the table in errors.py). Watch
streams come from the Catalog's change feed (changes.py): an idle watcher costs memory, never CPU.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_discovery import model
from service_discovery.auth import Auth, Grant
from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.errors import InvalidInput, NotReady
from service_discovery.grpc_calls import Call, CallStats
from service_discovery.grpc_codec import (
    Malformed,
    WatchMessages,
    endpoint_pb,
    endpoint_spec,
    endpoint_specs,
    lenient,
    named_ports,
    peer_address,
    service_pb,
    service_spec,
)
from service_discovery.metrics import Metrics
from service_discovery.model import Service
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.watch import AnswerCache, WatchLimiter

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DiscoveryService"].full_name  # "sd.DiscoveryService"

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


def _add_servicer(servicer: DiscoveryServicer, server: grpc.aio.Server) -> None:
    """Register every RPC of the service descriptor, like the generated helper, but with
    request parsers that let a malformed request reach the handler. (So the servicer needs no
    generated base class: an RPC it lacks fails here, at start, not as UNIMPLEMENTED later.)"""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["DiscoveryService"].methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        # a stream's messages come serialized (once, and shared by every stream sending them)
        serialize = _as_is if method.server_streaming else response_cls.SerializeToString
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=lenient(request_cls),
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def _as_is(message: bytes) -> bytes:
    return message


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
            with Call(self.stats, method) as call:
                grant = self.authorize(context, write=write)
                if isinstance(request, Malformed):
                    request.reject()
                if grant is not None and write:
                    grant.permit(_target(request))
                return await fn(self, request)
            await context.abort(call.code, call.message)
            raise AssertionError("unreachable: abort raises")

        return handler

    return decorate


def _target(request: object) -> str:
    """The service a write request changes (every write names exactly one)."""
    if isinstance(request, pb.CreateServiceRequest):
        return request.service.name
    name = getattr(request, "service_name", None)
    if not isinstance(name, str):  # a new write RPC must say here what it targets
        raise TypeError(f"{type(request).__name__} names no service")
    return name


def _get_service_response(svc: Service) -> pb.GetServiceResponse:
    return pb.GetServiceResponse(service=service_pb(svc))


# ---- the service -------------------------------------------------------------------------
class DiscoveryServicer:
    """sd.DiscoveryService: each method translates one request into one Catalog call."""

    def __init__(
        self,
        catalog: Catalog,
        auth: Auth,
        metrics: Metrics,
        limiter: WatchLimiter,
        answers: AnswerCache,
    ) -> None:
        self.catalog = catalog
        self.auth = auth
        self.stats = CallStats(metrics)
        self._metrics = metrics
        encoder = WatchMessages(metrics.grpc_watch_encoded.inc)
        self.watches = catalog.change_feed(encoder, WATCH_QUEUE_SIZE)
        self._limiter = limiter
        self._get_service = answers.format(_get_service_response)

    def authorize(self, context: grpc.aio.ServicerContext, *, write: bool) -> Grant | None:
        """The call's Grant (None: no credential needed); raises Unauthenticated, Forbidden."""
        if not self.auth.required(write=write):  # skip reading metadata when no token is needed
            return None
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = value if isinstance(value, str) else None
                break
        # gRPC verified the client certificate (TLS_CLIENT_CA_FILE) before the call began
        client_cert = bool(context.auth_context().get("x509_pem_cert"))
        return self.auth.authenticate(token, write=write, client_cert=client_cert)

    # ---- reads (the registry copy) --------------------------------------------------------
    @_unary(write=False)
    async def GetService(self, request: pb.GetServiceRequest) -> pb.GetServiceResponse:
        svc = self.catalog.get(model.service_name(request.service_name))
        return self._get_service(svc)  # kept per view, shared by every caller

    @_unary(write=False)
    async def ListServices(self, request: pb.ListServicesRequest) -> pb.ListServicesResponse:
        services = self.catalog.list()
        return pb.ListServicesResponse(
            services=[service_pb(s, endpoints=False) for s in services],
            version=self.catalog.index(),
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
        svc = await self.catalog.create_service(service_spec(request, self.catalog.limits))
        return pb.CreateServiceResponse(service=service_pb(svc))

    @_unary(write=True)
    async def DeleteService(self, request: pb.DeleteServiceRequest) -> pb.DeleteServiceResponse:
        await self.catalog.delete_service(model.service_name(request.service_name))
        return pb.DeleteServiceResponse()

    @_unary(write=True)
    async def AddNamedPorts(self, request: pb.AddNamedPortsRequest) -> pb.AddNamedPortsResponse:
        name = model.service_name(request.service_name)
        svc = await self.catalog.add_named_ports(name, named_ports(request.named_ports))
        return pb.AddNamedPortsResponse(service=service_pb(svc))

    @_unary(write=True)
    async def RegisterEndpoint(
        self, request: pb.RegisterEndpointRequest
    ) -> pb.RegisterEndpointResponse:
        name = model.service_name(request.service_name)
        if not request.HasField("endpoint"):
            raise InvalidInput("endpoint is required")
        spec = endpoint_spec(name, request.endpoint, self.catalog.limits)
        done = await self.catalog.register(name, spec)
        return pb.RegisterEndpointResponse(
            endpoint=endpoint_pb(done.service_name, done.endpoint), index=done.index
        )

    @_unary(write=True)
    async def RegisterEndpoints(
        self, request: pb.RegisterEndpointsRequest
    ) -> pb.RegisterEndpointsResponse:
        name = model.service_name(request.service_name)
        specs = endpoint_specs(name, request.endpoints, self.catalog.limits)
        done = await self.catalog.register_many(name, specs, replace=request.replace)
        return pb.RegisterEndpointsResponse(
            endpoints=[endpoint_pb(done.service_name, e) for e in done.endpoints],
            removed=done.removed,
            index=done.index,
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
    async def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Serialized WatchResponse messages (grpc_codec.WatchMessages), paged."""
        # latency is not recorded: a watch lasts as long as the client wants
        with Call(self.stats, "Watch", latency=False) as call:
            self.authorize(context, write=False)
            if isinstance(request, Malformed):
                request.reject()
            async for message in self._watch(request, peer_address(context.peer())):
                yield message
        if call.code != grpc.StatusCode.OK:
            await context.abort(call.code, call.message)

    async def _watch(self, request: pb.WatchRequest, peer: str) -> AsyncIterator[bytes]:
        if self.watches.closing:
            raise NotReady("server draining")
        name = model.service_name(request.service_name) if request.service_name else None
        self.catalog.ensure_loaded()  # UNAVAILABLE, not an empty snapshot, before the load
        with self._limiter.hold(peer):
            self._metrics.grpc_watches.inc()
            try:
                async for message in self.watches.stream(name):
                    yield message
            finally:
                self._metrics.grpc_watches.dec()


# ---- the server --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GrpcSettings:
    """What the gRPC front-end is configured with (app.py builds it from Config)."""

    bind_address: str
    port: int  # 0: an ephemeral port
    max_message_bytes: int  # the largest request accepted (HTTP_MAX_BODY_BYTES)
    shutdown_timeout_seconds: float  # in-flight calls get this long at stop
    credentials: grpc.ServerCredentials | None = None  # TLS (tls.py keeps them current)

    @classmethod
    def from_config(cls, config: Config, shutdown_timeout_seconds: float) -> GrpcSettings:
        """The settings from Config; in-flight calls get `shutdown_timeout_seconds` (app.py
        decides, within its one deadline)."""
        return cls(
            bind_address=config.bind_address,
            port=config.grpc_port,
            max_message_bytes=config.http_max_body_bytes,
            shutdown_timeout_seconds=shutdown_timeout_seconds,
        )


class GrpcServer:
    """The gRPC listener's lifecycle, driven by app.py: start, set_serving, stop."""

    def __init__(
        self,
        settings: GrpcSettings,
        catalog: Catalog,
        auth: Auth,
        metrics: Metrics,
        is_ready: Callable[[], bool],
        watches: WatchLimiter,
        answers: AnswerCache,
    ) -> None:
        self._settings = settings
        self._is_ready = is_ready
        self._servicer = DiscoveryServicer(catalog, auth, metrics, watches, answers)
        self._health = health.aio.HealthServicer()
        self._health_updates: set[asyncio.Task[None]] = set()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        settings = self._settings
        options = (
            *_SERVER_OPTIONS,
            ("grpc.max_receive_message_length", settings.max_message_bytes),
        )
        server = grpc.aio.server(options=options)
        _add_servicer(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        # The health servicer starts with "" SERVING: correct that before the port opens.
        await self._set_health(self._is_ready())
        host, port = settings.bind_address, settings.port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if settings.credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, settings.credentials)
        except RuntimeError as exc:  # grpcio reports a failed bind this way
            raise OSError(errno.EADDRINUSE, f"gRPC cannot listen on {address}: {exc}") from None
        self._servicer.watches.start()
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

    async def stop(self) -> None:
        """Refuse new calls, then end watch streams (UNAVAILABLE "server draining": their
        clients reconnect elsewhere, since new calls are refused here), give in-flight calls the
        shutdown timeout, then cancel what is left."""
        if self._health_updates:
            await asyncio.gather(*self._health_updates, return_exceptions=True)
        await self._health.enter_graceful_shutdown()
        server, self._server = self._server, None
        if server is None:
            self._servicer.watches.close()
            return
        stopping = asyncio.ensure_future(server.stop(self._settings.shutdown_timeout_seconds))
        await asyncio.sleep(0)  # stop() refuses new calls in its first step
        self._servicer.watches.close()
        await stopping
