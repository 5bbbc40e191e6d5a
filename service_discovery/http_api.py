"""The HTTP JSON API (aiohttp): the design's routes plus deregistration, leases, blocking
queries, probes, metrics and /openapi.json. Handlers only translate into calls on the Catalog;
registry errors become JSON errors in one middleware (http_middlewares.py).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from service_discovery import http_middlewares, model
from service_discovery.auth import Auth, checks_services, permit
from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.errors import InvalidInput
from service_discovery.http_middlewares import X_INDEX
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, Service
from service_discovery.openapi import spec as openapi_spec
from service_discovery.readiness import Readiness
from service_discovery.watch import AnswerCache, Answers, WatchLimiter, Whole, blocking_query


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """What the HTTP front-end is configured with (app.py builds it from Config)."""

    bind_address: str
    port: int  # 0: an ephemeral port
    idle_timeout_seconds: float  # see HttpServer.start
    shutdown_timeout_seconds: float  # in-flight requests get this long at stop
    max_body_bytes: int  # larger bodies are refused with 413
    body_timeout_seconds: float  # a body must arrive within this, else 408
    watch_max_wait_seconds: float  # the cap of a blocking query's ?wait=
    ssl_context: ssl.SSLContext | None = None  # TLS (tls.py keeps it current)

    @classmethod
    def from_config(cls, config: Config, shutdown_timeout_seconds: float) -> HttpSettings:
        """The settings from Config; in-flight requests get `shutdown_timeout_seconds` (app.py
        decides, within its one deadline)."""
        return cls(
            bind_address=config.bind_address,
            port=config.http_port,
            idle_timeout_seconds=config.http_idle_timeout_seconds,
            shutdown_timeout_seconds=shutdown_timeout_seconds,
            max_body_bytes=config.http_max_body_bytes,
            body_timeout_seconds=config.http_body_timeout_seconds,
            watch_max_wait_seconds=config.watch_max_wait_seconds,
        )


CATALOG = web.AppKey("catalog", Catalog)
SETTINGS = web.AppKey("settings", HttpSettings)
METRICS = web.AppKey("metrics", Metrics)
READINESS = web.AppKey[Callable[[], Readiness]]("readiness")
WATCHES = web.AppKey("watches", WatchLimiter)


@dataclass(frozen=True, slots=True)
class Bodies:
    """The encoded bodies of GET /service/{name} and GET /services in one layout, each shared
    by every reader until what it shows changes (watch.AnswerCache)."""

    service: Answers[bytes]
    listing: Whole[bytes]


BODIES = web.AppKey[tuple[Bodies, Bodies]]("bodies")  # indexed by ?pretty: compact, indented


def _pretty(request: web.Request) -> bool:
    if not request.query_string:
        return False
    return request.query.get("pretty", "").lower() in ("1", "true", "yes")


def _json(
    request: web.Request, data: Any, status: int = 200, index: int | None = None
) -> web.Response:
    indent = 2 if _pretty(request) else None
    headers = {"X-Index": str(index)} if index is not None else None
    body = json.dumps(data, indent=indent, ensure_ascii=False)
    return web.Response(text=body, status=status, content_type="application/json", headers=headers)


async def _body(request: web.Request) -> Any:
    raw = await request.read()  # bounded by client_max_size -> 413
    if not raw.strip():
        raise InvalidInput("the request body must be a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"invalid JSON: {str(exc)[:200]}") from None


def endpoint_json(service_name: str, e: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"service_name": service_name, "ip": e.ip, "tags": list(e.tags)}
    if e.ttl_seconds is not None:
        out["ttl_seconds"] = e.ttl_seconds
        out["expires_at"] = e.expires_at
    if e.instance_id is not None:
        out["instance_id"] = e.instance_id  # the ID given through /v1/agent/service/register
    return out


def service_json(s: Service, *, endpoints: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": s.id,
        "name": s.name,
        "attributes": dict(s.attributes),
        "named_ports": {
            p.name: {
                "protocol": p.protocol,
                "port": p.port,
                "priority": p.priority,
                "weight": p.weight,
            }
            for p in s.named_ports.values()
        },
        "index": s.version,
    }
    if endpoints:
        out["endpoints"] = [endpoint_json(s.name, e) for e in s.endpoints]
    else:
        out["endpoint_count"] = len(s.endpoints)  # live ones, as the view holds them
    return out


async def _block(request: web.Request, name: str | None) -> None:
    """Hold a blocking query until the index of `name` (None: the registry) passes the client's,
    the service's live endpoints change (a lease lapsed), or the wait ends.

    A waiting query is one future in the registry, woken by the change itself: no polling, so
    thousands of watchers cost memory only. Records the index to report in X-Index, also on an
    error answer (a 404 for a deleted service), so a watcher always has an index to wait on.
    At shutdown (`_release`) no query waits: each answers with what it has.
    """
    catalog = request.app[CATALOG]
    query = request.query
    blocking = blocking_query(
        query.get("index"), query.get("wait"), request.app[SETTINGS].watch_max_wait_seconds
    )
    watches = request.app[WATCHES]
    if blocking is not None and catalog.index(name) <= blocking[0] and not watches.closing:
        index, wait = blocking
        metrics = request.app[METRICS]
        with watches.hold(request.remote or "?"):
            metrics.http_watches.inc()
            try:
                await catalog.wait_for_change(name, index, wait)
            finally:
                metrics.http_watches.dec()
    request[X_INDEX] = catalog.index(name)


async def _release(app: web.Application) -> None:
    """on_shutdown: the listener is closed and every connection closes after its answer, so a
    blocking query still waiting answers now, with what it has, and its client's next query
    goes to another replica. (Released while this listener still accepted, the client would
    ask again here at once, be answered at once, and again: a spin.)"""
    app[WATCHES].close()
    app[CATALOG].release_waiting()


def _encoded(data: Any, indent: int | None, metrics: Metrics) -> bytes:
    body = json.dumps(data, indent=indent, ensure_ascii=False).encode()
    metrics.http_encoded.inc(len(body))
    return body


def _bodies(answers: AnswerCache, catalog: Catalog, metrics: Metrics, indent: int | None) -> Bodies:
    def listing() -> bytes:
        return _encoded([service_json(s, endpoints=False) for s in catalog.list()], indent, metrics)

    return Bodies(
        answers.format(lambda svc: _encoded(service_json(svc), indent, metrics)),
        answers.whole(listing),
    )


# ---- routes ------------------------------------------------------------------------------
async def list_services(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    catalog.ensure_loaded()
    await _block(request, None)
    # Built once after each change and shared: 500 watchers released by one write cost one
    # encoding of the listing, not 500.
    body = request.app[BODIES][_pretty(request)].listing()
    headers = {"X-Index": str(catalog.index())}
    return web.Response(body=body, content_type="application/json", headers=headers)


async def get_service(request: web.Request) -> web.Response:
    name = model.service_name(request.match_info["name"])
    catalog = request.app[CATALOG]
    catalog.ensure_loaded()
    pretty = False
    if request.query_string:
        await _block(request, name)
        pretty = _pretty(request)
    svc = catalog.get(name)
    # The hot read: the encoded body is kept per view (views are rebuilt on every change).
    return web.Response(
        body=request.app[BODIES][pretty].service(svc),
        content_type="application/json",
        headers={"X-Index": str(svc.version)},
    )


@checks_services
async def create_service(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    spec = model.service_spec(await _body(request), catalog.limits)
    permit(request, spec.name)
    svc = await catalog.create_service(spec)
    return _json(request, service_json(svc), status=201, index=svc.version)


async def delete_service(request: web.Request) -> web.Response:
    await request.app[CATALOG].delete_service(model.service_name(request.match_info["name"]))
    return web.Response(status=204)


async def list_endpoints(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    svc = catalog.get(model.service_name(request.match_info["name"]))
    return _json(request, [endpoint_json(svc.name, e) for e in svc.endpoints], index=svc.version)


async def register_endpoint(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    name = model.service_name(request.match_info["name"])
    spec = model.endpoint_spec(await _body(request), catalog.limits)
    done = await catalog.register(name, spec)
    return _json(request, endpoint_json(done.service_name, done.endpoint), index=done.index)


async def register_endpoints(request: web.Request) -> web.Response:
    """Bulk registration: many endpoints as one change (one index move); with "replace": true
    they become the service's whole set."""
    catalog = request.app[CATALOG]
    name = model.service_name(request.match_info["name"])
    body = await _body(request)
    if isinstance(body, dict) and "endpoints" in body:  # {"endpoints": [...], "replace"?: bool}
        endpoints, replace = body["endpoints"], body.get("replace", False)
        if not isinstance(replace, bool):
            raise InvalidInput("replace must be true or false")
    elif isinstance(body, list):
        endpoints, replace = body, False
    else:
        raise InvalidInput('the body must be an array of endpoints or {"endpoints": [...]}')
    specs = model.endpoint_list(endpoints, catalog.limits)
    done = await catalog.register_many(name, specs, replace=replace)
    answer = {
        "service_name": done.service_name,
        "endpoints": [endpoint_json(done.service_name, e) for e in done.endpoints],
        "removed": list(done.removed),
        "index": done.index,
    }
    return _json(request, answer, index=done.index)


async def deregister_endpoint(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    name = model.service_name(request.match_info["name"])
    await catalog.deregister(name, model.ip_address(request.match_info["ip"]))
    return web.Response(status=204)


async def heartbeat(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    name = model.service_name(request.match_info["name"])
    ip = model.ip_address(request.match_info["ip"])
    expires_at = await catalog.heartbeat(name, ip)
    return _json(request, {"service_name": name, "ip": ip, "expires_at": expires_at})


async def add_ports(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    name = model.service_name(request.match_info["name"])
    ports = model.named_ports(await _body(request))
    svc = await catalog.add_named_ports(name, ports)
    return _json(request, service_json(svc)["named_ports"], index=svc.version)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 = route to me (the copy is loaded, not draining), whatever the database does; the
    body says how current the copy is."""
    state = request.app[READINESS]()
    return web.json_response(state.to_json(), status=200 if state.ready else 503)


async def get_metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def get_openapi(request: web.Request) -> web.Response:
    return _json(request, openapi_spec(request.app[CATALOG].limits))


def build_app(
    settings: HttpSettings,
    catalog: Catalog,
    metrics: Metrics,
    auth: Auth,
    readiness: Callable[[], Readiness],
    watches: WatchLimiter,
    answers: AnswerCache,
) -> web.Application:
    middlewares = http_middlewares.chain(
        metrics, auth, settings.max_body_bytes, settings.body_timeout_seconds
    )
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[CATALOG] = catalog
    app[METRICS] = metrics
    app[READINESS] = readiness
    app[WATCHES] = watches
    app[BODIES] = (_bodies(answers, catalog, metrics, None), _bodies(answers, catalog, metrics, 2))
    app.on_shutdown.append(_release)
    app.router.add_get("/services", list_services)
    app.router.add_put("/service", create_service)
    app.router.add_get("/service/{name}", get_service)
    app.router.add_delete("/service/{name}", delete_service)
    app.router.add_get("/service/{name}/endpoints", list_endpoints)
    app.router.add_put("/service/{name}/register", register_endpoint)
    app.router.add_put("/service/{name}/endpoints", register_endpoints)
    app.router.add_delete("/service/{name}/endpoints/{ip}", deregister_endpoint)
    app.router.add_put("/service/{name}/endpoints/{ip}/heartbeat", heartbeat)
    app.router.add_put("/service/{name}/ports", add_ports)
    app.router.add_put("/service/{name}/port", add_ports)  # the design's README spells it so
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/openapi.json", get_openapi)
    return app


class HttpServer:
    """The HTTP listener's lifecycle, driven by app.py: start, stop (as DnsServer, GrpcServer)."""

    def __init__(
        self,
        settings: HttpSettings,
        catalog: Catalog,
        metrics: Metrics,
        auth: Auth,
        readiness: Callable[[], Readiness],
        watches: WatchLimiter,
        answers: AnswerCache,
    ) -> None:
        self._settings = settings
        self.app = build_app(settings, catalog, metrics, auth, readiness, watches, answers)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        settings = self._settings
        runner = web.AppRunner(
            self.app,
            handle_signals=False,  # the host process owns signals (app.serve)
            access_log=None,
            shutdown_timeout=settings.shutdown_timeout_seconds,
            # A client that hangs up ends its request: a blocking query stops waiting (and
            # frees its watch slot) instead of holding memory until its wait is over.
            handler_cancellation=True,
            # Armed when a connection opens and after each response: a client that sends no
            # complete request head in this time (slowloris) or sits idle is closed, so slow
            # clients cannot pin file descriptors. Request heads are bounded by aiohttp's
            # parser limits (8190-byte lines, 128 headers: 400 beyond).
            keepalive_timeout=settings.idle_timeout_seconds,
        )
        await runner.setup()
        self._runner = runner  # from here on, stop() has something to clean up
        site = web.TCPSite(
            runner,
            settings.bind_address,
            settings.port,
            backlog=1024,
            ssl_context=settings.ssl_context,
        )
        await site.start()
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the listener; in-flight requests get the shutdown timeout. Idempotent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
