"""The writes a client can ask of the registry, as values, and what one of them did once
committed: what the group commit (`commit.py`) queues, the store writes in one batch, and a copy
of the registry applies. Also their form for the batch functions, both ways: any batch as JSON
for `sd_write_batch` (`to_json`, `outcome`; migrations/0005.group-commit.sql), the common one
as typed arrays for `sd_write_endpoints` (`endpoint_arrays`, `endpoint_outcome`;
migrations/0011.write-endpoints.sql). Their calls are in store.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service_discovery.errors import AlreadyExists, LimitExceeded, NotFound, RegistryError
from service_discovery.model import Endpoint, EndpointSpec, NamedPort, Service, ServiceSpec


@dataclass(frozen=True, slots=True)
class CreateService:
    spec: ServiceSpec

    @property
    def service(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class DeleteService:
    service: str


@dataclass(frozen=True, slots=True)
class AddPorts:
    service: str
    ports: Mapping[str, NamedPort]


@dataclass(frozen=True, slots=True)
class Register:
    service: str
    spec: EndpointSpec


@dataclass(frozen=True, slots=True)
class Deregister:
    service: str
    ip: str  # canonical (model.ip_address)


@dataclass(frozen=True, slots=True)
class RegisterMany:
    """Upsert many endpoints as one change (one index move); with `replace`, the service's
    other endpoints go. `specs` hold distinct addresses (model.endpoint_specs)."""

    service: str
    specs: tuple[EndpointSpec, ...]
    replace: bool = False


Write = CreateService | DeleteService | AddPorts | Register | Deregister | RegisterMany


def weight(write: Write) -> int:
    """What a write counts towards SD_WRITE_BATCH_MAX: its endpoints for a bulk registration,
    else 1."""
    return max(1, len(write.specs)) if isinstance(write, RegisterMany) else 1


@dataclass(frozen=True, slots=True)
class Committed:
    """One write as committed: the registry version it took and, for a copy of the registry
    that holds the service at `prev_version`, what changed.

    A write of one endpoint (register, deregister) gives it in `endpoints` (ip -> the endpoint
    as stored, None: removed) and is patched in. Any other write is `whole`: `state` is the
    service as that write left it (None: deleted); a bulk registration also lists in
    `endpoints` the endpoints it was given, as stored, and those it removed.
    """

    service: str  # lowercased name
    version: int
    prev_version: int
    whole: bool
    state: Service | None = None
    endpoints: tuple[tuple[str, Endpoint | None], ...] = ()

    @property
    def stored(self) -> tuple[Endpoint, ...]:
        """The endpoints this write registered, as stored (lease expiry included)."""
        return tuple(e for _, e in self.endpoints if e is not None)

    @property
    def removed(self) -> tuple[str, ...]:
        """The addresses of the endpoints this write removed."""
        return tuple(ip for ip, e in self.endpoints if e is None)


# ---- the batch function's form ------------------------------------------------------------
def _ports_json(ports: Iterable[NamedPort]) -> list[list[Any]]:
    return [[p.name, p.protocol, p.port, p.priority, p.weight] for p in ports]


def _endpoint_json(spec: EndpointSpec) -> list[Any]:
    return [spec.ip, list(spec.tags), spec.ttl_seconds]


def to_json(write: Write) -> dict[str, Any]:
    """One write as `sd_write_batch` takes it (migrations/0005.group-commit.sql)."""
    if isinstance(write, Register):
        spec = write.spec
        return {"k": "register", "s": write.service, "ip": spec.ip, "t": list(spec.tags),
                "ttl": spec.ttl_seconds, "id": spec.instance_id}  # fmt: skip
    if isinstance(write, Deregister):
        return {"k": "deregister", "s": write.service, "ip": write.ip}
    if isinstance(write, CreateService):
        spec_ = write.spec
        return {"k": "create", "s": spec_.name, "a": spec_.attributes,
                "p": _ports_json(spec_.named_ports.values())}  # fmt: skip
    if isinstance(write, AddPorts):
        return {"k": "ports", "s": write.service, "p": _ports_json(write.ports.values())}
    if isinstance(write, DeleteService):
        return {"k": "delete", "s": write.service}
    return {"k": "bulk", "s": write.service, "r": write.replace,
            "e": [_endpoint_json(e) for e in write.specs]}  # fmt: skip


def endpoint_of(row: list[Any]) -> Endpoint:
    """An endpoint as the batch functions give it: [ip, tags, ttl, expires_at, instance ID]."""
    ip, tags, ttl, expires_at, instance_id = row
    return Endpoint(ip, tuple(tags), ttl, expires_at, instance_id)


def service_of(data: dict[str, Any], version: int) -> Service:
    """A service as sd_service_json gives it, at `version`."""
    return Service(
        id=data["id"],
        name=data["name"],
        attributes=data["attributes"],
        named_ports={p[0]: NamedPort(*p) for p in data["ports"]},
        endpoints=tuple(endpoint_of(e) for e in data["endpoints"]),
        version=version,
        created_at=data["created_at"],
        updated_at=data["updated_at"],
    )


_FAILURES: dict[str, type[RegistryError]] = {
    "not_found": NotFound,
    "already_exists": AlreadyExists,
    "limit_exceeded": LimitExceeded,
}


def outcome(write: Write, row: Mapping[str, Any]) -> Committed | RegistryError:
    """What one row of `sd_write_batch` says of `write`: what it committed, or its error."""
    code = row["code"]
    if code != "ok":
        return _FAILURES.get(code, RegistryError)(row["message"])
    key, version, data = row["service"], row["version"], row["data"]
    prev = row["prev_version"] or 0  # NULL for a deletion
    if isinstance(write, Register):
        endpoint = endpoint_of(data)
        return Committed(key, version, prev, False, endpoints=((endpoint.ip, endpoint),))
    if isinstance(write, Deregister):
        return Committed(key, version, prev, False, endpoints=((write.ip, None),))
    if isinstance(write, RegisterMany):  # the copy takes the service whole: one change
        state = service_of(data["s"], version)
        held = {e.ip: e for e in state.endpoints}
        given = [(spec.ip, held.get(spec.ip)) for spec in write.specs]
        changes = given + [(str(ip), None) for ip in data["x"]]
        return Committed(key, version, prev, True, state=state, endpoints=tuple(changes))
    if isinstance(write, DeleteService):
        return Committed(key, version, prev, True)
    return Committed(key, version, prev, True, state=service_of(data, version))


# ---- the common batch's form: registrations and deregistrations as typed arrays ----------
def endpoint_arrays(batch: Sequence[Write]) -> tuple[list[Any], ...] | None:
    """The arguments of `sd_write_endpoints` for a batch of registrations (without an instance
    ID) and deregistrations of distinct endpoints: kinds, names, ips, tags (a JSON array or
    None), ttls. None for any other batch (it goes to `sd_write_batch`)."""
    kinds, names, ips, tags, ttls = [], [], [], [], []
    seen = set()
    for w in batch:
        if isinstance(w, Register) and w.spec.instance_id is None:
            spec = w.spec
            kinds.append("register")
            ips.append(spec.ip)
            tags.append(json.dumps(spec.tags) if spec.tags else None)
            ttls.append(spec.ttl_seconds)
        elif isinstance(w, Deregister):
            kinds.append("deregister")
            ips.append(w.ip)
            tags.append(None)
            ttls.append(None)
        else:
            return None
        names.append(w.service)
        seen.add((w.service.lower(), ips[-1]))
    if len(seen) != len(batch):
        return None  # two writes of one endpoint: their order matters, write by write
    return kinds, names, ips, tags, ttls


def endpoint_outcome(write: Write, row: Mapping[str, Any]) -> Committed | RegistryError:
    """What one row of `sd_write_endpoints` says of `write` (a Register or a Deregister)."""
    code = row["code"]
    if code != "ok":
        return _FAILURES.get(code, RegistryError)(row["message"])
    key, version, prev = row["service"], row["version"], row["prev_version"] or 0
    if isinstance(write, Deregister):
        return Committed(key, version, prev, False, endpoints=((write.ip, None),))
    ip = row["ip"]
    stored = Endpoint(ip, tuple(row["tags"]), row["ttl_seconds"], row["expires_at"],
                      row["instance_id"])  # fmt: skip
    return Committed(key, version, prev, False, endpoints=((ip, stored),))
