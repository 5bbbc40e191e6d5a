"""gRPC wire format <-> model: protobuf messages built from views, request messages turned into
the plain values the model's parse functions take (so gRPC and HTTP reject the same inputs with
the same messages), requests that do not parse, and the Watch stream's messages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

from google.protobuf.message import DecodeError

from service_discovery import model
from service_discovery.changes import Kind
from service_discovery.errors import InvalidInput
from service_discovery.model import Endpoint, NamedPort, Service
from service_discovery.proto import discovery_pb2 as pb

_KINDS = {
    "snapshot": pb.SNAPSHOT,
    "update": pb.UPDATED,
    "delete": pb.DELETED,
    "expire": pb.EXPIRED,
    "reload": pb.RELOADED,
}


# ---- model -> protobuf -------------------------------------------------------------------
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


# A Watch message's services beyond this many bytes go in the next page (WatchResponse.more):
# well under the 4 MiB that gRPC clients accept by default, whatever the registry holds.
PAGE_BYTES = 1 << 20
_ENTRY_OVERHEAD = 6  # a repeated entry's tag and length prefix, at most


class WatchMessages:
    """The Watch stream's messages (`changes.Encoder`), serialized here, once, so that every
    stream sends the same bytes; paged at `page_bytes`. `count` hears each message's size."""

    def __init__(self, count: Callable[[int], None], page_bytes: int = PAGE_BYTES) -> None:
        self._count = count
        self._page_bytes = page_bytes

    def change(self, kind: Kind, key: str, service: Service | None, version: int) -> list[bytes]:
        name = service.name if service is not None else key
        return self._pages(kind, version, name, (service,) if service is not None else ())

    def state(self, kind: Kind, version: int, services: Sequence[Service]) -> list[bytes]:
        return self._pages(kind, version, "", services)

    def _pages(
        self, kind: Kind, version: int, name: str, services: Sequence[Service]
    ) -> list[bytes]:
        groups: list[list[pb.Service]] = [[]]
        size = 0
        for svc in services:
            for part in _split(service_pb(svc), self._page_bytes):
                n = part.ByteSize() + _ENTRY_OVERHEAD
                if groups[-1] and size + n > self._page_bytes:
                    groups.append([])
                    size = 0
                groups[-1].append(part)
                size += n
        last = len(groups) - 1
        pages = [
            pb.WatchResponse(
                version=version, kind=_KINDS[kind], service_name=name, services=group, more=i < last
            ).SerializeToString()
            for i, group in enumerate(groups)
        ]
        self._count(sum(map(len, pages)))
        return pages


def _split(msg: pb.Service, limit: int) -> list[pb.Service]:
    """`msg` as one entry, or, when larger than `limit`, as several copies that share its other
    fields and split its endpoints, in order (the client joins them back by name)."""
    if msg.ByteSize() <= limit:
        return [msg]
    head = pb.Service()
    head.CopyFrom(msg)
    del head.endpoints[:]
    room = max(limit - head.ByteSize(), 1)
    parts: list[pb.Service] = []
    size = 0
    for e in msg.endpoints:
        n = e.ByteSize() + _ENTRY_OVERHEAD
        if not parts or (size > 0 and size + n > room):
            parts.append(pb.Service())
            parts[-1].CopyFrom(head)
            size = 0
        parts[-1].endpoints.append(e)
        size += n
    return parts


# ---- protobuf -> model -------------------------------------------------------------------
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


def named_ports(ports: Any) -> dict[str, NamedPort]:
    return model.named_ports({key: _port_body(key, p) for key, p in ports.items()})


def service_spec(request: pb.CreateServiceRequest, limits: model.Limits) -> model.ServiceSpec:
    if not request.HasField("service"):
        raise InvalidInput("service is required")
    s = request.service
    body = {
        "name": s.name,
        "attributes": dict(s.attributes),
        "named_ports": {key: _port_body(key, p) for key, p in s.named_ports.items()},
    }
    return model.service_spec(body, limits)


def _endpoint_body(name: str, e: pb.Endpoint) -> dict[str, Any]:
    """An Endpoint message as the dict `model.endpoint_spec` parses."""
    if e.service_name and e.service_name.lower() != name.lower():
        raise InvalidInput(
            f"endpoint.service_name {e.service_name[:80]!r} does not match service_name {name!r}"
        )
    body: dict[str, Any] = {"tags": list(e.tags), "ttl_seconds": e.ttl_seconds}
    if e.ip:
        body["ip"] = e.ip
    return body


def endpoint_spec(name: str, e: pb.Endpoint, limits: model.Limits) -> model.EndpointSpec:
    return model.endpoint_spec(_endpoint_body(name, e), limits)


def endpoint_specs(
    name: str, endpoints: Any, limits: model.Limits
) -> tuple[model.EndpointSpec, ...]:
    """A bulk registration's Endpoint messages, by the model's rules for a list of them."""
    return model.endpoint_list([_endpoint_body(name, e) for e in endpoints], limits)


def peer_address(peer: str) -> str:
    """'ipv4:127.0.0.1:5000' or 'ipv6:%5B::1%5D:5000' -> the address without the port."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("ipv4", "ipv6"):
        return unquote(rest).rpartition(":")[0].strip("[]")
    return peer


# ---- requests that are not protobuf ------------------------------------------------------
class Malformed:
    """What a request that does not parse becomes, so the handler can answer INVALID_ARGUMENT
    (grpcio itself would fail the call with UNKNOWN and log an error)."""

    __slots__ = ("error", "kind")

    def __init__(self, kind: str, error: str) -> None:
        self.kind = kind
        self.error = error

    def reject(self) -> None:
        raise InvalidInput(f"malformed {self.kind}: {self.error}")


def lenient(cls: Any) -> Callable[[bytes], Any]:
    """A request deserializer that turns bytes that do not parse into `Malformed`."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return Malformed(cls.__name__, str(exc) or "not a protobuf message")

    return parse
