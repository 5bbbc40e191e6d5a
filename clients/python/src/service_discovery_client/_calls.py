"""The HTTP API as data: one `Call` per operation (method, path, body, which statuses are
answers, how to decode them, whether a retry is safe). No I/O here: the sync and the async
client run the same calls, so they give the same results by construction."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

from service_discovery_client import models
from service_discovery_client.models import Endpoint, NamedPort, Renewal, Service, Services

T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    address: str

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            raise models.BadResponse(f"not JSON from {self.address}: {self.body[:80]!r}") from None

    @property
    def index(self) -> int:
        try:
            return int(self.headers.get("x-index", "0"))
        except ValueError:
            return 0


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API operation. `parse` turns an answer whose status is in `accept` into the result;
    any other status becomes a typed error. `idempotent`: doing it twice is the same as once,
    so it may be retried after a timeout or a 503. `cache_key`: keep the last good result and
    serve it through `mark_stale` when no replica answers. `gone_ok`: a deletion whose 404
    after an attempt that may have reached the daemon means the earlier attempt did it.
    `wait`: a blocking query; the answer may take this many seconds more than the timeout."""

    method: str
    path: str
    parse: Callable[[Response], T]
    body: Any = None
    query: tuple[tuple[str, str], ...] = ()
    idempotent: bool = True
    accept: frozenset[int] = frozenset({200})
    cache_key: str | None = None
    mark_stale: Callable[[T], T] | None = None
    gone_ok: bool = False
    wait: float = 0.0

    def target(self) -> str:
        return self.path + ("?" + urlencode(self.query) if self.query else "")

    def payload(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body).encode()


def _q(part: str) -> str:
    return quote(part, safe="")


def _none(_resp: Response) -> None:
    return None


def _stale_service(svc: Service) -> Service:
    return replace(svc, stale=True)


def _stale_services(items: Services) -> Services:
    return Services(
        (replace(s, stale=True) for s in items), registry_index=items.registry_index, stale=True
    )


def service(name: str) -> Call[Service]:
    return Call(
        "GET",
        f"/service/{_q(name)}",
        lambda r: models.service(r.json(), r.index),
        cache_key=f"service:{name.lower()}",
        mark_stale=_stale_service,
    )


def services() -> Call[Services]:
    return Call(
        "GET",
        "/services",
        lambda r: models.services(r.json(), r.index),
        cache_key="services",
        mark_stale=_stale_services,
    )


def endpoints(name: str) -> Call[list[Endpoint]]:
    def parse(r: Response) -> list[Endpoint]:
        data = r.json()
        if not isinstance(data, list):
            raise models.BadResponse("expected a JSON list of endpoints")
        return [models.endpoint(e) for e in data]

    return Call("GET", f"/service/{_q(name)}/endpoints", parse)


def create_service(
    name: str,
    attributes: Mapping[str, str] | None,
    named_ports: Mapping[str, NamedPort | Mapping[str, Any]] | None,
) -> Call[Service]:
    body: dict[str, Any] = {"name": name}
    if attributes:
        body["attributes"] = dict(attributes)
    if named_ports:
        body["named_ports"] = ports_body(named_ports)
    # Not idempotent: a second attempt after the first one went through would be a 409.
    return Call(
        "PUT",
        "/service",
        lambda r: models.service(r.json(), r.index),
        body=body,
        idempotent=False,
        accept=frozenset({201}),
    )


def delete_service(name: str) -> Call[None]:
    return Call("DELETE", f"/service/{_q(name)}", _none, accept=frozenset({204}), gone_ok=True)


def ports_body(ports: Mapping[str, NamedPort | Mapping[str, Any]]) -> dict[str, Any]:
    return {k: (v.as_json() if isinstance(v, NamedPort) else dict(v)) for k, v in ports.items()}


def set_ports(
    name: str, ports: Mapping[str, NamedPort | Mapping[str, Any]]
) -> Call[dict[str, NamedPort]]:
    """Adds or replaces named ports (idempotent); the answer is all the service's ports."""
    return Call(
        "PUT",
        f"/service/{_q(name)}/ports",
        lambda r: models.named_ports(r.json()),
        body=ports_body(ports),
    )


def register(name: str, ip: str, tags: Sequence[str], ttl: int | None) -> Call[Endpoint]:
    body: dict[str, Any] = {"ip": ip, "tags": list(tags)}
    if ttl is not None:
        body["ttl_seconds"] = ttl
    # Registering the same address again updates it: idempotent.
    return Call(
        "PUT", f"/service/{_q(name)}/register", lambda r: models.endpoint(r.json()), body=body
    )


def deregister(name: str, ip: str) -> Call[None]:
    return Call(
        "DELETE",
        f"/service/{_q(name)}/endpoints/{_q(ip)}",
        _none,
        accept=frozenset({204}),
        gone_ok=True,
    )


def heartbeat(name: str, ip: str) -> Call[Renewal]:
    return Call(
        "PUT",
        f"/service/{_q(name)}/endpoints/{_q(ip)}/heartbeat",
        lambda r: models.renewal(r.json()),
    )


# ---- blocking queries ----------------------------------------------------------------------------
def _wait_param(wait: float) -> str:
    return f"{max(1, round(wait * 1000))}ms"


def watch_service(name: str, index: int | None, wait: float) -> Call[tuple[int, Service | None]]:
    """GET /service/{name}, blocking past `index` when given; a 404 (no such service, or
    deleted) is an answer too, with the index to wait on next."""

    def parse(r: Response) -> tuple[int, Service | None]:
        if r.status == 404:
            return r.index, None
        return r.index, models.service(r.json(), r.index)

    query = () if index is None else (("index", str(index)), ("wait", _wait_param(wait)))
    return Call(
        "GET",
        f"/service/{_q(name)}",
        parse,
        query=query,
        accept=frozenset({200, 404}),
        wait=0.0 if index is None else wait * 17 / 16,  # the daemon adds up to 1/16
    )


def watch_services(index: int | None, wait: float) -> Call[tuple[int, Services]]:
    query = () if index is None else (("index", str(index)), ("wait", _wait_param(wait)))
    return Call(
        "GET",
        "/services",
        lambda r: (r.index, models.services(r.json(), r.index)),
        query=query,
        wait=0.0 if index is None else wait * 17 / 16,
    )
