"""Typed results: what the daemon's JSON answers mean, as frozen dataclasses. Each keeps the
decoded JSON it came from in `raw` (not compared), so `sdctl -o json` prints exactly what the
API returned."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from service_discovery_client.errors import ServiceDiscoveryError


class BadResponse(ServiceDiscoveryError):
    """The daemon answered with JSON this client does not understand (a version mismatch)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="bad_response")


@dataclass(frozen=True)
class NamedPort:
    protocol: str
    port: int
    priority: int = 1
    weight: int = 1

    def as_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "port": self.port,
            "priority": self.priority,
            "weight": self.weight,
        }


@dataclass(frozen=True)
class Endpoint:
    service_name: str
    ip: str
    tags: tuple[str, ...] = ()
    ttl_seconds: int | None = None  # None: no lease, stays until deregistered
    expires_at: float | None = None  # Unix time the lease lapses unless renewed
    raw: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Service:
    """A service. `endpoints` are the live ones; `services()` leaves it empty (the listing does
    not carry endpoints). `index` is the Consul-style index of the answer (X-Index). `stale`:
    the last good answer, served because no replica could be reached."""

    name: str
    id: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    named_ports: dict[str, NamedPort] = field(default_factory=dict)
    endpoints: tuple[Endpoint, ...] = ()
    index: int = 0
    stale: bool = False
    raw: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Renewal:
    """A heartbeat's answer: the lease now lapses at `expires_at` (Unix time), durably."""

    service_name: str
    ip: str
    expires_at: float
    raw: Any = field(default=None, compare=False, repr=False)


class Services(list[Service]):
    """`services()`'s answer: a list of `Service` (without endpoints); `registry_index` is the
    registry's index (X-Index of /services; each service's own is its `index`), `stale` when
    served from the last good answer."""

    def __init__(
        self, items: Iterable[Service] = (), *, registry_index: int = 0, stale: bool = False
    ) -> None:
        super().__init__(items)
        self.registry_index = registry_index
        self.stale = stale


class Address(NamedTuple):
    """One target of `resolve()`: compares equal to the tuple `(ip, port)`."""

    ip: str
    port: int


class Addresses(list[Address]):
    """`resolve()`'s answer: a list of `Address`; `stale` when served from the last good answer
    because no replica could be reached."""

    def __init__(self, items: Iterable[Address] = (), *, stale: bool = False) -> None:
        super().__init__(items)
        self.stale = stale


# ---- decoding ------------------------------------------------------------------------------------
def _dict(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadResponse(f"expected a JSON object for {what}, got {type(data).__name__}")
    return data


def endpoint(data: Any) -> Endpoint:
    d = _dict(data, "an endpoint")
    try:
        ttl = d.get("ttl_seconds")
        expires = d.get("expires_at")
        return Endpoint(
            service_name=str(d["service_name"]),
            ip=str(d["ip"]),
            tags=tuple(str(t) for t in d.get("tags", ())),
            ttl_seconds=int(ttl) if ttl is not None else None,
            expires_at=float(expires) if expires is not None else None,
            raw=data,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadResponse(f"malformed endpoint: {exc!r}") from None


def named_ports(data: Any) -> dict[str, NamedPort]:
    try:
        return {
            str(name): NamedPort(
                protocol=str(p["protocol"]),
                port=int(p["port"]),
                priority=int(p.get("priority", 1)),
                weight=int(p.get("weight", 1)),
            )
            for name, p in _dict(data, "named ports").items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadResponse(f"malformed named ports: {exc!r}") from None


def service(data: Any, index: int) -> Service:
    d = _dict(data, "a service")
    try:
        return Service(
            name=str(d["name"]),
            id=str(d["id"]) if d.get("id") is not None else None,
            attributes={str(k): str(v) for k, v in _dict(d.get("attributes", {}), "").items()},
            named_ports=named_ports(d.get("named_ports", {})),
            endpoints=tuple(endpoint(e) for e in d.get("endpoints", ())),
            index=int(d["index"]) if "index" in d else index,
            raw=data,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadResponse(f"malformed service: {exc!r}") from None


def services(data: Any, index: int) -> Services:
    if not isinstance(data, list):
        raise BadResponse("expected a JSON list of services")
    return Services((service(s, index) for s in data), registry_index=index)


def renewal(data: Any) -> Renewal:
    d = _dict(data, "a heartbeat answer")
    try:
        return Renewal(str(d["service_name"]), str(d["ip"]), float(d["expires_at"]), raw=data)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadResponse(f"malformed heartbeat answer: {exc!r}") from None


# ---- SRV order -----------------------------------------------------------------------------------
def srv_order(
    targets: Iterable[tuple[int, int, Address]], rng: random.Random | None = None
) -> list[Address]:
    """Order (priority, weight, address) triples the way RFC 2782 tells a client to try SRV
    targets: lowest priority first; within one priority, a weighted random order, so load
    spreads by weight. Addresses of weight 0 come after the weighted ones of their priority."""
    rng = rng or random.Random()
    by_priority: dict[int, list[tuple[int, Address]]] = {}
    for priority, weight, address in targets:
        by_priority.setdefault(priority, []).append((max(weight, 0), address))
    ordered: list[Address] = []
    for priority in sorted(by_priority):
        pool = by_priority[priority]
        while pool:
            total = sum(w for w, _ in pool)
            if total == 0:
                pick = rng.randrange(len(pool))
            else:
                point, running, pick = rng.uniform(0, total), 0, 0
                for i, (w, _) in enumerate(pool):
                    running += w
                    if w and running >= point:
                        pick = i
                        break
            ordered.append(pool.pop(pick)[1])
    return ordered
