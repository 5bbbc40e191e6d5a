"""Prometheus' HTTP service discovery (`http_sd_configs`) at GET /v1/prometheus/targets.

The answer is Prometheus' target-group list, built from the catalog's views on every call (and
encoded once per change of the registry copy when unfiltered): one group per service, named port
and set of tags (a group's labels apply to all its targets, so endpoints whose tags differ go in
groups of their own; in the usual case, one group per service and port). Labels:

    __meta_sd_service             the service's name
    __meta_sd_port_name           the named port (targets are <address>:<that port>)
    __meta_sd_port_protocol       tcp, udp or sctp
    __meta_sd_tags                the endpoints' tags, sorted, as ",a,b," (Consul SD's form)
    __meta_sd_attribute_<name>    each service attribute (name sanitized to a label name)

Filters (repeatable): ?service=<name>, ?port=<port name>, ?tag=<tag> (targets carrying all).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from service_discovery.catalog import Catalog
from service_discovery.model import Service

if TYPE_CHECKING:
    from service_discovery.consul_api import ConsulApi

PATH = "/v1/prometheus/targets"
LABEL_PREFIX = "__meta_sd_"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def label_name(text: str) -> str:
    """A Prometheus label name from any text, as Prometheus' own discoveries sanitize."""
    return _INVALID.sub("_", text)


def _target(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def target_groups(
    services: list[Service],
    *,
    names: frozenset[str] = frozenset(),
    ports: frozenset[str] = frozenset(),
    tags: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """The http_sd answer for these services (filters: empty = everything)."""
    groups: list[dict[str, Any]] = []
    for svc in services:
        if names and svc.key not in names:
            continue
        by_tags: dict[tuple[str, ...], list[str]] = {}
        for e in svc.endpoints:
            if tags <= set(e.tags):
                by_tags.setdefault(tuple(sorted(set(e.tags))), []).append(e.ip)
        if not by_tags:
            continue
        common = {LABEL_PREFIX + "service": svc.name}
        for key, value in sorted(svc.attributes.items()):
            common[LABEL_PREFIX + "attribute_" + label_name(key)] = value
        for port in sorted(svc.named_ports.values(), key=lambda p: p.name):
            if ports and port.name not in ports:
                continue
            for tag_set, ips in by_tags.items():
                labels = {
                    **common,
                    LABEL_PREFIX + "port_name": port.name,
                    LABEL_PREFIX + "port_protocol": port.protocol,
                    LABEL_PREFIX + "tags": "," + ",".join(tag_set) + "," if tag_set else "",
                }
                groups.append({"targets": [_target(ip, port.port) for ip in ips], "labels": labels})
    return groups


def add_routes(app: web.Application, catalog: Catalog, consul: ConsulApi) -> None:
    async def targets(request: web.Request) -> web.Response:
        q = request.query
        names = frozenset(n.lower() for n in q.getall("service", []))
        ports = frozenset(p.lower() for p in q.getall("port", []))
        tags = frozenset(q.getall("tag", []))
        if names or ports or tags:
            groups = target_groups(catalog.list(), names=names, ports=ports, tags=tags)
            body = json.dumps(groups, ensure_ascii=False).encode()
        else:
            body = consul.cached_global("prometheus", lambda: target_groups(catalog.list()))
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(PATH, targets)
