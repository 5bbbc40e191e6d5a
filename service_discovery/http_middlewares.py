"""The HTTP front-end's middlewares, one job each (aiohttp's habit). Outermost first:

1. `count`: every request counted and timed by route, method and status (sd_http_*);
2. `report_index`: the index a read reports (X-Index), also on its error answers;
3. `errors`: registry and HTTP errors become JSON errors, `{"error": code, "message": ...}`,
   the only place they do (statuses from errors.STATUS); anything else is a logged 500;
4. `authorize`: bearer tokens or client certificates for writes (and reads under
   SD_PROTECT_READS), probes and the dashboard's static files open; a write limited to services
   checks the one the path names;
5. `bounded_body`: a body is refused when declared too large, and must arrive in time.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service_discovery.auth import GRANT, Auth, handler_checks_services
from service_discovery.errors import Forbidden, RegistryError, wire_status
from service_discovery.metrics import Metrics

log = logging.getLogger(__name__)

X_INDEX = web.RequestKey("x_index", int)  # set by a handler: the index its answer reports
# probes and scrapers; /v1/status/* is the liveness probe of Consul clients (consul_api)
OPEN_PATHS = frozenset(
    {"/healthz", "/ready", "/metrics", "/openapi.json", "/v1/status/leader", "/v1/status/peers"}
)
CONSUL_PREFIX = "/v1/"  # the Consul-compatible API, served on this app (consul_api)
# The dashboard's page and files (service_discovery/ui), by the route matched rather than by the
# path asked for; the API calls the page makes are checked as any other.
OPEN_ROUTES = frozenset({"/", "/ui", "/ui/", "/ui/{build}/{file}"})
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def route_of(request: web.Request) -> str:
    """The route's pattern (`/service/{name}`), the label requests are counted under."""
    route = getattr(request.match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


def chain(
    metrics: Metrics, auth: Auth, max_body_bytes: int, body_timeout_seconds: float
) -> list[Middleware]:
    """The middlewares in order, outermost first (see the module docstring)."""
    middlewares = [count(metrics), report_index, errors(metrics)]
    if auth.enabled:  # without tokens nothing is checked: skip the layer
        middlewares.append(authorize(auth))
    middlewares.append(bounded_body(max_body_bytes, body_timeout_seconds))
    return middlewares


def count(metrics: Metrics) -> Middleware:
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        elapsed = time.perf_counter() - started
        metrics.observe_http(route_of(request), request.method, response.status, elapsed)
        return response

    return count


@web.middleware
async def report_index(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A blocking read records its index (X_INDEX) before it answers: it goes out in X-Index
    even when the answer is an error (a 404 for a deleted service), so a watcher always has an
    index to wait on."""
    response = await handler(request)
    if X_INDEX in request and "X-Index" not in response.headers:
        response.headers["X-Index"] = str(request[X_INDEX])
    return response


def errors(metrics: Metrics) -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RegistryError as exc:
            status = wire_status(exc).http
            response = error_response(status, exc.code, exc.message)
            if status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="service-discovery"'
            return response
        except web.HTTPRequestEntityTooLarge as exc:
            return error_response(413, "too_large", exc.text or "request body too large")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status, "http_error")
            response = error_response(exc.status, code, exc.reason)
            if exc.status == 405:
                response.headers["Allow"] = exc.headers.get("Allow", "")
            return response
        except Exception:
            log.exception("internal error on %s %s", request.method, route_of(request))
            metrics.internal_errors.labels("http").inc()
            return error_response(500, "internal", "internal error; see the server log")

    return errors


def authorization(request: web.Request) -> str | None:
    """The request's credentials as an Authorization value. Consul clients send their token as
    `X-Consul-Token` (or, deprecated, `?token=`, which the log redaction hides): accepted on
    the Consul-compatible API's paths only, beside `Authorization: Bearer`."""
    given = request.headers.get("Authorization")
    if given is None and request.path.startswith(CONSUL_PREFIX):
        token = request.headers.get("X-Consul-Token") or request.query.get("token")
        if token:
            given = f"Bearer {token}"
    return given


def _client_cert(request: web.Request) -> bool:
    """Whether the connection presented a verified client certificate (mTLS)."""
    transport = request.transport
    return transport is not None and bool(transport.get_extra_info("peercert"))


def authorize(auth: Auth) -> Middleware:
    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and route_of(request) not in OPEN_ROUTES:
            write = request.method not in ("GET", "HEAD")
            grant = auth.authenticate(
                authorization(request), write=write, client_cert=_client_cert(request)
            )
            if grant is not None and write and grant.limited:
                # The service a write targets: named by the path (native routes), else the
                # handler checks each one it changes (auth.checks_services), else refused.
                name = request.match_info.get("name")
                if name is not None:
                    grant.permit(name)
                elif not handler_checks_services(request.match_info.handler):
                    raise Forbidden("this route is not open to a credential limited to services")
                request[GRANT] = grant
        return await handler(request)

    return authorize


def bounded_body(max_bytes: int, timeout_seconds: float) -> Middleware:
    """Refuse a declared oversized body before reading it, and read any body within
    HTTP_BODY_TIMEOUT_SECONDS: a client trickling its body (slow POST) would otherwise hold a
    handler and its connection for ever. The body is kept for the handler's read()."""

    @web.middleware
    async def bounded_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            size = request.content_length
            if size is not None and size > max_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size)
            try:
                async with asyncio.timeout(timeout_seconds):
                    await request.read()
            except TimeoutError:
                raise web.HTTPRequestTimeout(
                    text="the request body did not arrive in time"
                ) from None
        return await handler(request)

    return bounded_body
