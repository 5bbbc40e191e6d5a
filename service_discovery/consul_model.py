"""Consul's data model over the registry's, both ways, as pure functions (no I/O).

The mapping, written once here and documented in the README:

- a service is a Consul service; each live endpoint is an instance of it;
- an instance's ID (`ServiceID`) is the ID given at registration, stored with the endpoint, or,
  for endpoints registered natively, `<service>-<address>`;
- a synthetic node per address: the node's name and address are the endpoint's address, its ID
  a UUID derived from that address, so every replica names it alike;
- `ServiceAddress` is the endpoint's address; `ServicePort` the port named `default` (what a
  Consul registration's `Port` becomes), else the service's first named port by name, else 0
  (`?port=<name>` picks another); every named port is in `ServiceTaggedAddresses` under its
  name and in `ServiceMeta` as `sd-port-<name>`; `ServiceMeta` holds the service's attributes;
- a leased endpoint has one TTL check, `service:<ID>`, passing while the lease is live; a lapsed
  lease is not listed (as in every other answer of this daemon).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service_discovery import model
from service_discovery.errors import InvalidInput
from service_discovery.model import Endpoint, Limits, NamedPort, Service

DEFAULT_PORT_NAME = model.DEFAULT_PORT_NAME  # the named port a registration's Port becomes
PORT_META_PREFIX = "sd-port-"
CHECK_PREFIX = "service:"
SUPPORTED_CHECKS = "a TTL check ({'TTL': '10s'}); this daemon runs no HTTP, TCP, gRPC, script, "
SUPPORTED_CHECKS += "Docker, alias or OS-service checks"
_NODE_NAMESPACE = uuid.UUID("9b0b3a5e-6f1d-4f53-9a2e-3c1f0d6b7a41")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600}
_WEIGHTS = {"Passing": 1, "Warning": 1}
_RUN_CHECKS = ("http", "tcp", "udp", "grpc", "h2ping", "args", "script", "dockercontainerid",
               "aliasnode", "aliasservice", "osservice")  # fmt: skip


def parse_duration(text: str, what: str) -> float:
    """Seconds in a Go duration ("10s", "1m30s", "120000ms"), as Consul reads its durations."""
    raw = text.strip()
    if raw == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(raw):
        m = _DURATION.match(raw, pos)
        if m is None:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not raw or pos != len(raw):
        raise InvalidInput(f"{what} must be a duration such as 10s, 1m30s or 500ms")
    return total


# ---- identities ------------------------------------------------------------------------------
def instance_id(service_name: str, endpoint: Endpoint) -> str:
    return endpoint.instance_id or f"{service_name}-{endpoint.ip}"


def derived_target(instance: str) -> tuple[str, str] | None:
    """(service, ip) that a derived ID `<service>-<address>` names, or None if it is not one."""
    name, sep, ip = instance.rpartition("-")
    if not sep or not name:
        return None
    try:
        return model.service_name(name), model.ip_address(ip)
    except InvalidInput:
        return None


def check_targets(check_id: str) -> tuple[str, ...]:
    """The instance IDs a check ID may name, most literal first: `service:<id>`, and for
    `service:<id>:1` (how Consul numbers the checks of a `Checks` list) also `<id>`, since an
    ID may itself end in `:<digits>` ("web:10.0.0.7:8080"). Empty for other check IDs."""
    if not check_id.startswith(CHECK_PREFIX) or check_id == CHECK_PREFIX:
        return ()
    rest = check_id[len(CHECK_PREFIX) :]
    head, sep, tail = rest.rpartition(":")
    return (rest, head) if sep and tail.isdigit() and head else (rest,)


def node_id(ip: str) -> str:
    return str(uuid.uuid5(_NODE_NAMESPACE, ip))


# ---- ports -----------------------------------------------------------------------------------
pick_port = model.default_port  # the rule is the model's: DNS uses it too


# ---- answers ---------------------------------------------------------------------------------
def node(ip: str, datacenter: str, index: int) -> dict[str, Any]:
    return {
        "ID": node_id(ip),
        "Node": ip,
        "Address": ip,
        "Datacenter": datacenter,
        "TaggedAddresses": {"lan": ip, "wan": ip},
        "Meta": {},
        "CreateIndex": index,
        "ModifyIndex": index,
    }


def _tagged(svc: Service, ip: str) -> dict[str, Any]:
    return {p.name: {"Address": ip, "Port": p.port} for p in svc.named_ports.values()}


def _meta(svc: Service) -> dict[str, str]:
    meta = dict(svc.attributes)
    for p in svc.named_ports.values():
        meta.setdefault(PORT_META_PREFIX + p.name, str(p.port))
    return meta


def agent_service(
    svc: Service, e: Endpoint, port: NamedPort | None, datacenter: str
) -> dict[str, Any]:
    """An instance as the agent and health endpoints show it (Consul's AgentService)."""
    return {
        "ID": instance_id(svc.name, e),
        "Service": svc.name,
        "Tags": list(e.tags),
        "Address": e.ip,
        "TaggedAddresses": _tagged(svc, e.ip),
        "Meta": _meta(svc),
        "Port": port.port if port is not None else 0,
        "Weights": dict(_WEIGHTS),
        "EnableTagOverride": False,
        "Datacenter": datacenter,
        "CreateIndex": svc.version,
        "ModifyIndex": svc.version,
    }


def catalog_service(
    svc: Service, e: Endpoint, port: NamedPort | None, datacenter: str
) -> dict[str, Any]:
    """An instance as /v1/catalog/service lists it (node fields flattened, as Consul does)."""
    return {
        "ID": node_id(e.ip),
        "Node": e.ip,
        "Address": e.ip,
        "Datacenter": datacenter,
        "TaggedAddresses": {"lan": e.ip, "wan": e.ip},
        "NodeMeta": {},
        "ServiceKind": "",
        "ServiceID": instance_id(svc.name, e),
        "ServiceName": svc.name,
        "ServiceTags": list(e.tags),
        "ServiceAddress": e.ip,
        "ServiceTaggedAddresses": _tagged(svc, e.ip),
        "ServiceWeights": dict(_WEIGHTS),
        "ServiceMeta": _meta(svc),
        "ServicePort": port.port if port is not None else 0,
        "ServiceEnableTagOverride": False,
        "ServiceProxy": {},
        "ServiceConnect": {},
        "CreateIndex": svc.version,
        "ModifyIndex": svc.version,
    }


def checks(svc: Service, e: Endpoint) -> list[dict[str, Any]]:
    """The instance's checks: its lease as a passing TTL check, or none without a lease."""
    if e.ttl_seconds is None:
        return []
    sid = instance_id(svc.name, e)
    return [
        {
            "Node": e.ip,
            "CheckID": CHECK_PREFIX + sid,
            "Name": f"Service '{svc.name}' check",
            "Status": "passing",
            "Notes": f"lease of {e.ttl_seconds}s, renewed by check pass/update",
            "Output": "",
            "ServiceID": sid,
            "ServiceName": svc.name,
            "ServiceTags": list(e.tags),
            "Type": "ttl",
            "Definition": {},
            "CreateIndex": svc.version,
            "ModifyIndex": svc.version,
        }
    ]


def health_entry(
    svc: Service, e: Endpoint, port: NamedPort | None, datacenter: str
) -> dict[str, Any]:
    """An instance as /v1/health/service lists it (Consul's ServiceEntry)."""
    return {
        "Node": node(e.ip, datacenter, svc.version),
        "Service": agent_service(svc, e, port, datacenter),
        "Checks": checks(svc, e),
    }


def with_tags(endpoints: Iterable[Endpoint], tags: list[str]) -> list[Endpoint]:
    """The endpoints carrying every one of `tags` (Consul's repeated ?tag=)."""
    if not tags:
        return list(endpoints)
    return [e for e in endpoints if all(t in e.tags for t in tags)]


# ---- registration ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Registration:
    """What PUT /v1/agent/service/register asks for, in the registry's terms."""

    name: str
    instance_id: str
    ip: str
    port: int | None
    tags: tuple[str, ...]
    meta: dict[str, str]
    ttl_seconds: int | None


def _keys(body: Mapping[str, Any]) -> dict[str, Any]:
    """Keys compared as Consul's decoder does: any case, snake_case or CamelCase."""
    return {str(k).replace("_", "").lower(): v for k, v in body.items()}


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == [] or value is False


def _ttl(check: Any) -> int:
    if not isinstance(check, Mapping):
        raise InvalidInput(f"a check must be an object; supported: {SUPPORTED_CHECKS}")
    c = _keys(check)
    unsupported = [k for k in _RUN_CHECKS if not _empty(c.get(k))]
    if unsupported:
        raise InvalidInput(
            f"unsupported check ({', '.join(unsupported)}): supported is {SUPPORTED_CHECKS}"
        )
    if _empty(c.get("ttl")):
        raise InvalidInput(f"the check has no TTL: supported is {SUPPORTED_CHECKS}")
    status = c.get("status")
    if status not in (None, "", "passing"):
        raise InvalidInput(
            "a check starts passing here (a live lease); Status may only be 'passing'"
        )
    if not _empty(c.get("checkid")):
        raise InvalidInput("CheckID is fixed here: the check of instance <ID> is service:<ID>")
    if not isinstance(c["ttl"], str):
        raise InvalidInput("TTL must be a duration such as 10s")
    seconds = math.ceil(parse_duration(c["ttl"], "TTL"))
    if not 1 <= seconds <= model.MAX_TTL_SECONDS:
        raise InvalidInput(f"TTL must be from 1s to {model.MAX_TTL_SECONDS}s (7 days)")
    after = c.get("deregistercriticalserviceafter")
    if not _empty(after):
        if not isinstance(after, str):
            raise InvalidInput("DeregisterCriticalServiceAfter must be a duration such as 1m")
        parse_duration(after, "DeregisterCriticalServiceAfter")  # valid; a lapse removes at once
    return seconds


def registration(body: Any, limits: Limits) -> Registration:
    """Parse a Consul service registration; anything this daemon cannot honour is refused
    (400) with what it supports, never accepted and ignored."""
    if not isinstance(body, Mapping):
        raise InvalidInput("the body must be a JSON object (a Consul service definition)")
    b = _keys(body)
    if "name" not in b:
        raise InvalidInput("Name is required")
    name = model.service_name(b["name"])
    # the checks first: the refusal a client most needs to hear
    ttls = []
    if not _empty(b.get("check")):
        ttls.append(_ttl(b["check"]))
    listed = b.get("checks")
    if not _empty(listed):
        if not isinstance(listed, list):
            raise InvalidInput("Checks must be an array of checks")
        ttls.extend(_ttl(c) for c in listed)
    if len(ttls) > 1:
        raise InvalidInput("one TTL check per instance: it is the instance's lease")
    for key, what in (("kind", "Kind"), ("proxy", "Proxy"), ("socketpath", "SocketPath"),
                      ("taggedaddresses", "TaggedAddresses")):  # fmt: skip
        if not _empty(b.get(key)):
            raise InvalidInput(
                f"{what} is not supported: an instance here is an address with the service's "
                "named ports (no mesh, no sockets, no per-instance tagged addresses)"
            )
    connect = b.get("connect")
    if isinstance(connect, Mapping) and any(not _empty(v) for v in connect.values()):
        raise InvalidInput("Connect (service mesh) is not supported")
    for key in ("namespace", "partition"):
        if b.get(key) not in (None, "", "default"):
            raise InvalidInput(f"{key} {b[key]!r} does not exist: only 'default' (no Enterprise)")
    weights = b.get("weights")
    if not _empty(weights) and (
        not isinstance(weights, Mapping) or _keys(weights) != {"passing": 1, "warning": 1}
    ):
        raise InvalidInput(
            "Weights are not supported per instance: SRV weight is per named port "
            "(PUT /service/{name}/ports); leave Weights out or {Passing: 1, Warning: 1}"
        )
    if _empty(b.get("address")):
        raise InvalidInput("Address is required: an instance here is an IPv4 or IPv6 address")
    ip = model.ip_address(b["address"])
    port = b.get("port")
    if _empty(port) or port == 0:
        port = None
    else:
        port = model.named_port(DEFAULT_PORT_NAME, {"port": port}).port
    raw_id = b.get("id")
    return Registration(
        name=name,
        instance_id=model.instance_id(name if _empty(raw_id) else raw_id),
        ip=ip,
        port=port,
        tags=model.tags(b.get("tags"), limits),
        meta=model.attributes(b.get("meta"), limits),
        ttl_seconds=ttls[0] if ttls else None,
    )
