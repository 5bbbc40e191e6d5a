"""The Consul-compatible HTTP API under /v1/: a translation layer over the Catalog.

This module owns the plumbing (routes, query rules, blocking, encoded answers, the catch-all)
and the catalog and health reads, translated with `consul_model`; the agent and status routes,
writes included, are in `consul_agent`. There is no state here but encoded answers, kept per
service view (views are rebuilt on every change) or per change of the registry, so a thousand
watchers woken by one change share one encoding. Blocking queries wait on the catalog exactly
as the native ones do: one future per waiter, counted by the one WatchLimiter (watch.py).
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from service_discovery import consul_model, model, prometheus_sd
from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.consul_agent import ConsulAgent
from service_discovery.errors import (
    InvalidInput,
    NotFound,
)
from service_discovery.metrics import Metrics
from service_discovery.model import Endpoint, NamedPort, Service
from service_discovery.watch import AnswerCache, Answers, WatchLimiter

PREFIX = "/v1/"
MAX_WAIT_SECONDS = 600.0  # Consul's cap on ?wait=
DEFAULT_WAIT_SECONDS = 300.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# How an instance is shown: (service, endpoint, port shown, datacenter) -> JSON value
Entry = Callable[[Service, Endpoint, NamedPort | None, str], Any]


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    """What the Consul-compatible API is configured with (built from Config by its caller)."""

    datacenter: str  # SD_CONSUL_DATACENTER
    own_address: str  # this replica's address, for /v1/status/leader and /v1/agent/self
    watch_max_wait_seconds: float  # the cap of ?wait= (and Consul's own 10 minutes)

    @classmethod
    def from_config(cls, config: Config) -> ConsulSettings:
        return cls(
            datacenter=config.consul_datacenter,
            own_address=config.own_address,
            watch_max_wait_seconds=config.watch_max_wait_seconds,
        )


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    summary: str
    blocking: bool = False


# The supported routes, in the order the README and the OpenAPI document list them.
ROUTES = (
    Route("GET", "/v1/catalog/services", "services with live instances, and their tags", True),
    Route("GET", "/v1/catalog/service/{service}", "a service's instances (?tag=)", True),
    Route("GET", "/v1/catalog/nodes", "the synthetic nodes: one per address", True),
    Route("GET", "/v1/catalog/node/{node}", "the instances at one address", True),
    Route("GET", "/v1/catalog/datacenters", "the one datacenter"),
    Route("GET", "/v1/health/service/{service}", "instances with checks (?passing, ?tag=)", True),
    Route("GET", "/v1/health/checks/{service}", "the TTL checks of a service's instances", True),
    Route("GET", "/v1/agent/self", "datacenter, node name and version"),
    Route("GET", "/v1/agent/services", "every instance, by ID"),
    Route("GET", "/v1/agent/service/{service_id}", "one instance"),
    Route("GET", "/v1/agent/checks", "every TTL check, by check ID"),
    Route("PUT", "/v1/agent/service/register", "register an instance (TTL check = lease)"),
    Route("PUT", "/v1/agent/service/deregister/{service_id}", "deregister an instance"),
    Route("PUT", "/v1/agent/check/pass/{check_id}", "renew the lease (heartbeat)"),
    Route("PUT", "/v1/agent/check/update/{check_id}", "Status passing renews the lease"),
    Route("GET", "/v1/status/leader", "this replica (the liveness probe of Consul clients)"),
    Route("GET", "/v1/status/peers", "this replica"),
    Route("GET", "/v1/prometheus/targets", "Prometheus http_sd_configs targets (not Consul's)"),
)

# Consul routes that clients call and this daemon answers with a reason rather than a bare 404.
_HINTS = {
    "/v1/agent/check/fail/": "a check here passes (renews the lease) or lapses: there is no "
    "critical or warning state to set; deregister the instance to take it out",
    "/v1/agent/check/warn/": "there is no warning state: a check passes or its lease lapses",
    "/v1/agent/check/register": "checks come with the service registration (one TTL check)",
    "/v1/kv/": "there is no key/value store",
    "/v1/session/": "there are no sessions or locks",
    "/v1/catalog/register": "register through /v1/agent/service/register",
    "/v1/catalog/deregister": "deregister through /v1/agent/service/deregister/<id>",
    "/v1/health/state/": "list a service's instances with /v1/health/service/<service>",
    "/v1/health/node/": "list the instances at an address with /v1/catalog/node/<address>",
}


class ConsulApi:
    """The /v1/ handlers of one HTTP app."""

    def __init__(
        self,
        settings: ConsulSettings,
        catalog: Catalog,
        metrics: Metrics,
        acl_enabled: bool,
        watches: WatchLimiter,
        answers: AnswerCache,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.datacenter = settings.datacenter
        self._metrics = metrics
        self._watches = watches  # the one limit, shared with the native API and gRPC
        self._acl = "deny" if acl_enabled else "allow"
        # Per service, in the one answer cache: the instances with the default port, encoded
        # once per service view and shared by every reader (a thousand woken watchers too).
        self._catalog_body = answers.format(self._encoder(consul_model.catalog_service))
        self._health_body = answers.format(self._encoder(consul_model.health_entry))
        self._generation = 0  # moves with every change of the copy (subscribe)
        self._global: dict[str, tuple[int, bytes]] = {}
        self._unsubscribe = catalog.subscribe(self._changed)

    def _encoder(self, entry: Entry) -> Callable[[Service], bytes]:
        def encode(svc: Service) -> bytes:
            port = consul_model.pick_port(svc, None)
            entries = [entry(svc, e, port, self.datacenter) for e in svc.endpoints]
            return json.dumps(entries, ensure_ascii=False).encode()

        return encode

    def _changed(self, _key: str | None, _reason: str) -> None:
        self._generation += 1

    def close(self) -> None:
        self._unsubscribe()

    # ---- plumbing ----------------------------------------------------------------------------
    def attach(self, app: web.Application) -> None:
        """Serve /v1/ on the HTTP front-end's app (its middlewares apply: errors, tokens,
        metrics), before that app starts."""
        self._add_routes(app)
        prometheus_sd.add_routes(app, self.catalog, self)
        # the catch-all for the rest of /v1/, after every other /v1/ route
        app.router.add_route("*", "/v1/{tail:.*}", self.unsupported)

    def _add_routes(self, app: web.Application) -> None:
        agent = ConsulAgent(self)
        handlers: dict[str, Handler] = {
            "/v1/catalog/services": self.catalog_services,
            "/v1/catalog/service/{service}": self.catalog_service,
            "/v1/catalog/nodes": self.catalog_nodes,
            "/v1/catalog/node/{node}": self.catalog_node,
            "/v1/catalog/datacenters": self.datacenters,
            "/v1/health/service/{service}": self.health_service,
            "/v1/health/checks/{service}": self.health_checks,
            "/v1/agent/self": agent.agent_self,
            "/v1/agent/services": agent.agent_services,
            "/v1/agent/service/{service_id}": agent.agent_service,
            "/v1/agent/checks": agent.agent_checks,
            "/v1/agent/service/register": agent.register,
            "/v1/agent/service/deregister/{service_id}": agent.deregister,
            "/v1/agent/check/pass/{check_id}": agent.check_pass,
            "/v1/agent/check/update/{check_id}": agent.check_update,
            "/v1/status/leader": agent.leader,
            "/v1/status/peers": agent.peers,
        }
        for route in ROUTES:
            if route.path in handlers:
                app.router.add_route(route.method, route.path, handlers[route.path])
        app.on_response_prepare.append(self._headers)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith(PREFIX):
            if "X-Consul-Index" not in response.headers:
                response.headers["X-Consul-Index"] = str(max(self.catalog.index(), 1))
            response.headers["X-Consul-KnownLeader"] = "true"
            response.headers["X-Consul-LastContact"] = "0"
            response.headers["X-Consul-Default-ACL-Policy"] = self._acl

    def reply(self, request: web.Request, data: Any, index: int | None = None) -> web.Response:
        pretty = "pretty" in request.query
        body = json.dumps(data, indent=2 if pretty else None, ensure_ascii=False).encode()
        return self.raw(body, index)

    @staticmethod
    def raw(body: bytes, index: int | None) -> web.Response:
        headers = {"X-Consul-Index": str(index)} if index is not None else None
        return web.Response(body=body, content_type="application/json", headers=headers)

    def check_query(self, request: web.Request) -> None:
        """Refuse what would otherwise be answered wrongly; accept what changes nothing here
        (stale, consistent, cached: every read comes from this replica's copy). Before the copy
        is loaded, nothing is answered (503): an empty answer would say "no instances"."""
        self.catalog.ensure_loaded()
        q = request.query
        dc = q.get("dc", "")
        if dc and dc.lower() != self.datacenter:
            raise NotFound(f"no datacenter {dc!r}: this registry is datacenter {self.datacenter!r}")
        for key in ("ns", "partition"):
            if q.get(key, "default") not in ("", "default"):
                raise InvalidInput(
                    f"{key} {q[key]!r} does not exist: only 'default' (no Enterprise)"
                )
        if q.get("peer"):
            raise InvalidInput("cluster peering is not supported")
        if "filter" in q:
            raise InvalidInput(
                "filter expressions are not supported; filter with ?tag= (repeatable), "
                "?passing and ?node-meta="
            )
        if "hash" in q:
            raise InvalidInput("hash-based blocking is not supported; block with ?index=")

    def _wait_seconds(self, raw: str | None) -> float:
        wait = DEFAULT_WAIT_SECONDS
        if raw:
            wait = consul_model.parse_duration(raw, "wait")
        wait = min(wait, MAX_WAIT_SECONDS, self.settings.watch_max_wait_seconds)
        return wait + random.uniform(0, wait / 16)

    async def _index(self, request: web.Request, name: str | None) -> int:
        """Hold a blocking query (`?index=N`) until the index moves, and return the index to
        report (never 0, as Consul promises). An index of 0, or one that differs from the
        current one (it moved on, or went backwards: the client resets), answers at once."""
        self.check_query(request)
        wait = self._wait_seconds(request.query.get("wait"))  # checked even when not blocking
        current = max(self.catalog.index(name), 1)
        raw = request.query.get("index", "")
        if not raw:
            return current
        try:
            index = int(raw)
            if index < 0:
                raise ValueError
        except ValueError:
            raise InvalidInput("index must be a non-negative integer (an X-Consul-Index)") from None
        if index == 0 or index != current or self._watches.closing:  # closing: at shutdown
            return current
        with self._watches.hold(request.remote or "?"):
            self._metrics.http_watches.inc()
            try:
                await self.catalog.wait_for_change(name, index, wait)
            finally:
                self._metrics.http_watches.dec()
        return max(self.catalog.index(name), 1)

    def cached_global(self, kind: str, build: Callable[[], Any]) -> bytes:
        """An answer over the whole registry, encoded once per change of the copy."""
        hit = self._global.get(kind)
        if hit is not None and hit[0] == self._generation:
            return hit[1]
        body = json.dumps(build(), ensure_ascii=False).encode()
        self._global[kind] = (self._generation, body)
        return body

    def _port(self, request: web.Request, svc: Service) -> tuple[str | None, NamedPort | None]:
        wanted = request.query.get("port")
        port = consul_model.pick_port(svc, wanted)
        if wanted is not None and port is None:
            raise NotFound(
                f"service {svc.name!r} has no port named {wanted!r}; it has: "
                + (", ".join(sorted(svc.named_ports)) or "none")
            )
        return wanted, port

    # ---- catalog and health ------------------------------------------------------------------
    def _instances(
        self, request: web.Request, index: int, entry: Entry, cached: Answers[bytes]
    ) -> web.Response:
        svc = self.catalog.find(request.match_info["service"])
        if svc is None or "node-meta" in request.query:
            return self.raw(b"[]", index)
        wanted, port = self._port(request, svc)
        tags = request.query.getall("tag", [])
        if tags or wanted is not None or "pretty" in request.query:
            eps = consul_model.with_tags(svc.endpoints, tags)
            return self.reply(request, [entry(svc, e, port, self.datacenter) for e in eps], index)
        return self.raw(cached(svc), index)

    async def catalog_service(self, request: web.Request) -> web.Response:
        index = await self._index(request, request.match_info["service"])
        return self._instances(request, index, consul_model.catalog_service, self._catalog_body)

    async def health_service(self, request: web.Request) -> web.Response:
        # Every listed instance is passing (a lapsed lease is not listed), so ?passing
        # changes nothing.
        index = await self._index(request, request.match_info["service"])
        return self._instances(request, index, consul_model.health_entry, self._health_body)

    async def health_checks(self, request: web.Request) -> web.Response:
        index = await self._index(request, request.match_info["service"])
        svc = self.catalog.find(request.match_info["service"])
        if svc is None:
            return self.raw(b"[]", index)
        return self.reply(
            request, [c for e in svc.endpoints for c in consul_model.checks(svc, e)], index
        )

    async def catalog_services(self, request: web.Request) -> web.Response:
        index = await self._index(request, None)
        if "node-meta" in request.query:
            return self.raw(b"{}", index)

        def build() -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for svc in self.catalog.list():
                if svc.endpoints:
                    tags = {t: None for e in svc.endpoints for t in e.tags}
                    out[svc.name] = list(tags)
            return out

        return self.raw(self.cached_global("services", build), index)

    async def catalog_nodes(self, request: web.Request) -> web.Response:
        index = await self._index(request, None)
        if "node-meta" in request.query:
            return self.raw(b"[]", index)

        def build() -> list[dict[str, Any]]:
            ips = sorted({e.ip for svc in self.catalog.list() for e in svc.endpoints})
            return [consul_model.node(ip, self.datacenter, index) for ip in ips]

        return self.raw(self.cached_global("nodes", build), index)

    async def catalog_node(self, request: web.Request) -> web.Response:
        index = await self._index(request, None)
        try:
            ip = model.ip_address(request.match_info["node"])  # a node is named by its address
        except InvalidInput:
            return self.raw(b"null", index)
        services: dict[str, Any] = {}
        for key in self.catalog.names_for_ip(ip):
            svc = self.catalog.find(key)
            e = next((e for e in svc.endpoints if e.ip == ip), None) if svc else None
            if svc is not None and e is not None:
                port = consul_model.pick_port(svc, None)
                out = consul_model.agent_service(svc, e, port, self.datacenter)
                services[out["ID"]] = out
        if not services:
            return self.raw(b"null", index)  # Consul's answer for a node it does not know
        node = consul_model.node(ip, self.datacenter, index)
        return self.reply(request, {"Node": node, "Services": services}, index)

    async def datacenters(self, request: web.Request) -> web.Response:
        return self.reply(request, [self.datacenter])

    # ---- the rest ------------------------------------------------------------------------------
    async def unsupported(self, request: web.Request) -> web.Response:
        path = request.path
        allowed = sorted({r.method for r in ROUTES if _matches(r.path, path)})
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        hint = next((h for p, h in _HINTS.items() if path.startswith(p)), None)
        supported = ", ".join(f"{r.method} {r.path}" for r in ROUTES)
        message = f"{request.method} {path} is not part of this daemon's Consul-compatible API"
        if hint:
            message += f" ({hint})"
        raise NotFound(f"{message}; supported: {supported}")


def _matches(template: str, path: str) -> bool:
    want = template.strip("/").split("/")
    got = path.strip("/").split("/")
    return len(want) == len(got) and all(
        w == g or (w.startswith("{") and g) for w, g in zip(want, got, strict=True)
    )
