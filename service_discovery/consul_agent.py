"""The agent and status routes of the Consul-compatible API (/v1/agent/..., /v1/status/...):
the daemon is one Consul agent for every instance. Registrations become the catalog's own
writes (create the service with its attributes and `default` port when needed, then register
the endpoint with its instance ID and lease); checks are the lease's heartbeats.
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web

from service_discovery import __version__, consul_model
from service_discovery.auth import checks_services, permit
from service_discovery.consul_model import DEFAULT_PORT_NAME
from service_discovery.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from service_discovery.model import Endpoint, EndpointSpec, NamedPort, Service, ServiceSpec

if TYPE_CHECKING:
    from service_discovery.consul_api import ConsulApi


class ConsulAgent:
    """The handlers of /v1/agent/ and /v1/status/, over the plumbing of a ConsulApi."""

    def __init__(self, api: ConsulApi) -> None:
        self.api = api

    def _own_address(self, request: web.Request) -> tuple[str, int]:
        """This replica's address and the HTTP port the request came in on."""
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        return self.api.settings.own_address, int(sock[1]) if sock else 0

    def _server(self, request: web.Request) -> str:
        host, port = self._own_address(request)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def agent_self(self, request: web.Request) -> web.Response:
        self.api.check_query(request)
        name = socket.gethostname()
        host, port = self._own_address(request)
        return self.api.reply(
            request,
            {
                "Config": {
                    "Datacenter": self.api.datacenter,
                    "PrimaryDatacenter": self.api.datacenter,
                    "NodeName": name,
                    "NodeID": consul_model.node_id(f"{host}:{port}"),
                    "Server": True,
                    "Revision": "service-discovery",
                    "Version": __version__,
                },
                "DebugConfig": {},
                "Member": {
                    "Name": name,
                    "Addr": host,
                    "Port": port,
                    "Tags": {"dc": self.api.datacenter, "role": "consul", "build": __version__},
                    "Status": 1,
                },
                "Meta": {},
            },
        )

    def _all_instances(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for svc in self.api.catalog.list():
            port = consul_model.pick_port(svc, None)
            for e in svc.endpoints:
                entry = consul_model.agent_service(svc, e, port, self.api.datacenter)
                out[entry["ID"]] = entry
        return out

    async def agent_services(self, request: web.Request) -> web.Response:
        self.api.check_query(request)
        return self.api.raw(self.api.cached_global("agent-services", self._all_instances), None)

    async def agent_checks(self, request: web.Request) -> web.Response:
        self.api.check_query(request)

        def build() -> dict[str, Any]:
            return {
                c["CheckID"]: c
                for svc in self.api.catalog.list()
                for e in svc.endpoints
                for c in consul_model.checks(svc, e)
            }

        return self.api.raw(self.api.cached_global("agent-checks", build), None)

    def _resolve(self, instance: str) -> tuple[Service, Endpoint] | None:
        """The service and live endpoint an instance ID names (stored, else derived)."""
        held = self.api.catalog.instance(instance)
        if held is None:
            held = consul_model.derived_target(instance)
        if held is None:
            return None
        svc = self.api.catalog.find(held[0])
        e = next((e for e in svc.endpoints if e.ip == held[1]), None) if svc else None
        if svc is None or e is None or e.instance_id not in (None, instance):
            return None  # a derived ID does not name an endpoint registered with an ID
        return svc, e

    def _derived_names_endpoint(self, instance: str) -> bool:
        """Whether a derived ID may stand for its endpoint: not when that endpoint was
        registered with an ID of its own (then only that ID names it)."""
        target = consul_model.derived_target(instance)
        if target is None:
            return False
        svc = self.api.catalog.find(target[0])
        e = next((e for e in svc.endpoints if e.ip == target[1]), None) if svc else None
        return e is None or e.instance_id is None

    async def agent_service(self, request: web.Request) -> web.Response:
        self.api.check_query(request)
        found = self._resolve(request.match_info["service_id"])
        if found is None:
            raise NotFound(f"unknown service ID {request.match_info['service_id']!r}")
        svc, e = found
        port = consul_model.pick_port(svc, None)
        return self.api.reply(
            request, consul_model.agent_service(svc, e, port, self.api.datacenter)
        )

    @checks_services
    async def register(self, request: web.Request) -> web.Response:
        self.api.check_query(request)
        reg = consul_model.registration(await _body(request), self.api.catalog.limits)
        permit(request, reg.name)
        svc = self.api.catalog.find(reg.name)
        ports = {}
        if reg.port is not None:
            ports = {DEFAULT_PORT_NAME: NamedPort(DEFAULT_PORT_NAME, "tcp", reg.port)}
        if svc is None:
            try:
                svc = await self.api.catalog.create_service(ServiceSpec(reg.name, reg.meta, ports))
            except AlreadyExists:
                svc = self.api.catalog.get(reg.name)  # created meanwhile: check it as any other
        _compatible(svc, reg)
        if ports and DEFAULT_PORT_NAME not in svc.named_ports:
            svc = await self.api.catalog.add_named_ports(svc.name, ports)
        # Registering an ID again at another address moves it, as Consul replaces a service
        # registered again under its ID: the old endpoint goes first.
        held = self.api.catalog.instance(reg.instance_id)
        if held is not None and held != (svc.key, reg.ip):
            permit(request, held[0])  # the ID moves away from that service
            try:
                await self.api.catalog.deregister(*held)
            except NotFound:
                pass  # gone meanwhile
        spec = EndpointSpec(reg.ip, reg.tags, reg.ttl_seconds, reg.instance_id)
        await self.api.catalog.register(svc.name, spec)
        return web.Response(status=200)

    @checks_services
    async def deregister(self, request: web.Request) -> web.Response:
        self.api.check_query(request)
        instance = request.match_info["service_id"]
        held = self.api.catalog.instance(instance)
        if held is None and self._derived_names_endpoint(instance):
            held = consul_model.derived_target(instance)
        if held is not None:
            permit(request, held[0])
            try:
                await self.api.catalog.deregister(*held)
            except NotFound:
                pass  # as Consul: deregistering what is not there changes nothing
        return web.Response(status=200)

    async def _heartbeat(self, request: web.Request, check_id: str) -> None:
        found = None
        for instance in consul_model.check_targets(check_id):
            found = self._resolve(instance)
            if found is not None:
                break
        if found is None:
            raise NotFound(
                f"unknown check ID {check_id!r} (a lapsed lease is gone: register again)"
            )
        svc, e = found
        permit(request, svc.name)
        if e.ttl_seconds is None:
            raise NotFound(f"{check_id!r} is no TTL check: its instance was registered without")
        await self.api.catalog.heartbeat(svc.name, e.ip)

    @checks_services
    async def check_pass(self, request: web.Request) -> web.Response:
        self.api.check_query(request)
        await self._heartbeat(request, request.match_info["check_id"])
        return web.Response(status=200)

    @checks_services
    async def check_update(self, request: web.Request) -> web.Response:
        self.api.check_query(request)
        body = await _body(request)
        status = body.get("Status", body.get("status")) if isinstance(body, dict) else None
        if status != "passing":
            raise InvalidInput(
                "Status must be 'passing' (renews the lease): there is no warning or critical "
                "state here; a lease lapses by itself, or deregister the instance"
            )
        await self._heartbeat(request, request.match_info["check_id"])
        return web.Response(status=200)

    async def leader(self, request: web.Request) -> web.Response:
        return self.api.reply(request, self._server(request))

    async def peers(self, request: web.Request) -> web.Response:
        return self.api.reply(request, [self._server(request)])


def _compatible(svc: Service, reg: consul_model.Registration) -> None:
    """Refuse (409) a registration that the service's one-per-service settings contradict."""
    for key, value in reg.meta.items():
        if svc.attributes.get(key) != value:
            held = svc.attributes.get(key)
            has = f"attribute {key[:80]!r} = {held[:80]!r}" if held is not None else (
                f"no attribute {key[:80]!r}"
            )  # fmt: skip
            raise Conflict(
                f"service {svc.name!r} has {has} and this registration's Meta says "
                f"{value[:80]!r}: Meta is per service here (its attributes, set when the service "
                "is created); register with the same Meta, or none"
            )
    port = svc.named_ports.get(DEFAULT_PORT_NAME)
    if reg.port is not None and port is not None and port.port != reg.port:
        raise Conflict(
            f"service {svc.name!r} has port {DEFAULT_PORT_NAME!r} = {port.port} and this "
            f"registration asks for {reg.port}: one port per name per service here; register "
            f"with Port {port.port}, or change it with PUT /service/{svc.name}/ports"
        )


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"invalid JSON: {str(exc)[:200]}") from None
