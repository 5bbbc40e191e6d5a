"""The registry's data model and every validation rule for names, addresses, ports and limits.

Front-ends parse their wire format into plain Python values and call the `parse_*` functions
here, so HTTP and gRPC reject exactly the same inputs with the same messages.

The changes that move a registry copy (a `Snapshot`, an `EndpointChange`, a `LeaseRenewal`, a
`ReapResult`) live here too: the store produces them and the copy (`registry`) consumes them,
and neither module depends on the other (nor for the mass-expiry rule: `mass_expiry`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service_discovery.config import Config
from service_discovery.endpoint import Endpoint as Endpoint  # one of the model's types
from service_discovery.errors import InvalidInput, LimitExceeded

# The rules below are stated once, here; the OpenAPI document (openapi.py) is built from them.
PROTOCOLS = ("tcp", "udp", "sctp")
# The port a service offers when one is asked for without a name (Consul's ServicePort, the
# port of Consul-style SRV names): the one named "default" (what a Consul registration's Port
# becomes), else the first by name.
DEFAULT_PORT_NAME = "default"
MAX_TTL_SECONDS = 7 * 24 * 3600
PORT_RANGE = (1, 65535)  # a named port's port
SRV_FIELD_RANGE = (0, 65535)  # a named port's priority and weight (SRV record fields)
# Name patterns in the dialect Python and JSON Schema share (no lookaround), matched whole.
# A service name is one RFC 1123 DNS label, any case (it is kept for display).
SERVICE_NAME_MAX_LENGTH = 63
SERVICE_NAME_PATTERN = f"^[A-Za-z0-9]([A-Za-z0-9-]{{0,{SERVICE_NAME_MAX_LENGTH - 2}}}[A-Za-z0-9])?$"
# A port name follows RFC 6335 5.1: letters and digits in runs joined by single hyphens, at
# least one letter, at most PORT_NAME_MAX_LENGTH characters; lowercase (input is lowered).
PORT_NAME_PATTERN = "^([a-z0-9]+-)*[a-z0-9]*[a-z][a-z0-9]*(-[a-z0-9]+)*$"
PORT_NAME_MAX_LENGTH = 15
_LABEL = re.compile(SERVICE_NAME_PATTERN)
_PORT_NAME = re.compile(PORT_NAME_PATTERN)
# An instance ID (Consul's ServiceID) travels in URL paths (/v1/agent/service/deregister/<id>):
# no slash, space or query characters. Colons and dots are in, for IDs like "web:10.0.0.7:8080".
INSTANCE_ID_MAX_LENGTH = 128
INSTANCE_ID_PATTERN = f"^[A-Za-z0-9][A-Za-z0-9._:@-]{{0,{INSTANCE_ID_MAX_LENGTH - 1}}}$"
_INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN)
# Names are matched as given, never a lowercased copy: Unicode lowercasing maps other letters
# onto ASCII ones ("\u212aafka".lower() == "kafka", a Kelvin sign), so two names that differ
# could reach one key. Tags and attribute names: printable ASCII without spaces (a tag is also
# a DNS label).
TOKEN_PATTERN = "^[!-~]+$"
_TOKEN = re.compile(TOKEN_PATTERN)


@dataclass(frozen=True, slots=True)
class NamedPort:
    name: str
    protocol: str
    port: int
    priority: int = 1
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    attributes: Mapping[str, str]
    named_ports: Mapping[str, NamedPort]
    endpoints: tuple[Endpoint, ...]
    version: int  # registry version of this service's last change: its index
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def key(self) -> str:
        name = self.name
        key = name.lower()
        return name if key == name else key  # the name itself, not a copy for indexes to keep


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Services read in one database snapshot, with the registry version that snapshot saw."""

    version: int
    services: dict[str, Service]  # lowercased name -> service


@dataclass(frozen=True, slots=True)
class EndpointChange:
    """One endpoint registered or removed: enough to update a copy that holds `prev_version`."""

    service: str  # lowercased name
    version: int
    prev_version: int
    ip: str
    endpoint: Endpoint | None  # None: removed


@dataclass(frozen=True, slots=True)
class LeaseRenewal:
    """A lease's new expiry (a heartbeat, or the reaper's renewal under the mass-expiry guard)."""

    service: str  # lowercased name
    ip: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class ReapResult:
    """What one reaper sweep did."""

    removed: int  # lapsed endpoints deleted
    leased: int  # leased endpoints before the sweep
    guarded: bool  # mass expiry everywhere: nothing deleted, every lapsed lease renewed instead
    versions: dict[str, int]  # lowercased service name -> version after its endpoints went
    renewed: list[LeaseRenewal] = field(default_factory=list)  # what the guards renewed
    guarded_services: list[str] = field(default_factory=list)  # names, each kept by its guard


@dataclass(frozen=True, slots=True)
class Limits:
    max_endpoints_per_service: int = 10000
    max_tags_per_endpoint: int = 32
    max_attributes: int = 64
    max_value_length: int = 1024
    max_named_ports: int = 64
    max_services: int = 100_000

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(
            max_endpoints_per_service=config.max_endpoints_per_service,
            max_tags_per_endpoint=config.max_tags_per_endpoint,
            max_attributes=config.max_attributes,
            max_value_length=config.max_value_length,
            max_named_ports=config.max_named_ports,
            max_services=config.max_services,
        )

    def check_named_ports(self, count: int, service: str) -> None:
        """LimitExceeded if a request gives a service more than its limit of named ports (the
        total after a write is checked by the database: migrations/0006.limits.sql)."""
        if count > self.max_named_ports:
            raise LimitExceeded(
                f"service {service!r} may have at most {self.max_named_ports} named ports "
                f"(the limit), not {count}"
            )


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    named_ports: dict[str, NamedPort] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    ip: str
    tags: tuple[str, ...] = ()
    ttl_seconds: int | None = None
    instance_id: str | None = None  # None keeps the ID already stored (if any)


def default_port(svc: Service, wanted: str | None = None) -> NamedPort | None:
    """The port named `wanted`, or without a name the service's default port (see
    DEFAULT_PORT_NAME); None when there is no such port."""
    if wanted is not None:
        return svc.named_ports.get(wanted.lower())
    port = svc.named_ports.get(DEFAULT_PORT_NAME)
    if port is None and svc.named_ports:
        port = svc.named_ports[min(svc.named_ports)]
    return port


def service_name(value: Any) -> str:
    """A service name is one RFC 1123 DNS label (case-insensitive; case is kept for display)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("service name must be a non-empty string")
    if not _LABEL.fullmatch(value):
        raise InvalidInput(
            f"invalid service name {value[:80]!a}: must be a DNS label of "
            f"1-{SERVICE_NAME_MAX_LENGTH} ASCII letters, digits and hyphens, starting and ending "
            "with a letter or digit"
        )
    return value


def instance_id(value: Any) -> str:
    """An instance ID (Consul's ServiceID): 1-128 ASCII letters, digits and . _ : @ -,
    starting with a letter or digit."""
    if not isinstance(value, str) or not _INSTANCE_ID.fullmatch(value):
        shown = value[:80] if isinstance(value, str) else value
        raise InvalidInput(
            f"invalid instance ID {shown!r}: must be 1-{INSTANCE_ID_MAX_LENGTH} ASCII letters, "
            "digits and . _ : @ -, starting with a letter or digit"
        )
    return value


def port_name(value: Any) -> str:
    """IANA service-name rule (RFC 6335 5.1): 1-15 chars, letters, digits, single hyphens;
    returned in lowercase."""
    if not isinstance(value, str):
        raise InvalidInput("port name must be a string")
    name = value.lower()
    # ASCII first: then lowering maps A-Z only; the length next: it bounds the backtracking
    if (
        not value.isascii()
        or not 1 <= len(name) <= PORT_NAME_MAX_LENGTH
        or not _PORT_NAME.fullmatch(name)
    ):
        raise InvalidInput(
            f"invalid port name {value[:80]!a}: must be 1-{PORT_NAME_MAX_LENGTH} ASCII "
            "letters, digits and single hyphens, with at least one letter, not starting or "
            "ending with a hyphen"
        )
    return value.lower()


def ip_address(value: Any) -> str:
    """An IPv4 or IPv6 address in canonical text form."""
    if not isinstance(value, str):
        raise InvalidInput("ip must be a string")
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        raise InvalidInput(f"invalid ip {value[:80]!r}: not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise InvalidInput(f"invalid ip {value[:80]!r}: scoped IPv6 addresses are not allowed")
        return _ipv6_text(addr)
    return str(addr)


def _ipv6_text(addr: ipaddress.IPv6Address) -> str:
    """The text PostgreSQL's inet output gives, so an address a client names and the one the
    database returns compare equal: an IPv4-mapped address (and one whose first 96 bits are zero,
    other than :: and ::x) ends in a dotted quad, as RFC 5952 section 5 recommends; Python 3.11
    writes hex words there (::ffff:a00:1 for ::ffff:10.0.0.1)."""
    packed = addr.packed
    if packed[:10] == bytes(10) and packed[10:12] == b"\xff\xff":
        return f"::ffff:{ipaddress.IPv4Address(packed[12:])}"
    if packed[:12] == bytes(12) and packed[12:14] != bytes(2):
        return f"::{ipaddress.IPv4Address(packed[12:])}"
    return str(addr)


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 8000.0 is the integer 8000 (JSON Schema)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer from {lo} to {hi}")
    if not lo <= value <= hi:
        raise InvalidInput(f"{what} must be an integer from {lo} to {hi}, got {value}")
    return value


def named_port(name: Any, body: Any) -> NamedPort:
    pname = port_name(name)
    if not isinstance(body, Mapping):
        raise InvalidInput(f"named port {pname!r} must be an object with protocol and port")
    protocol = body.get("protocol", "tcp")
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        allowed = ", ".join(PROTOCOLS)
        raise InvalidInput(f"named port {pname!r}: protocol must be one of {allowed}")
    if "port" not in body:
        raise InvalidInput(f"named port {pname!r}: port is required")
    return NamedPort(
        name=pname,
        protocol=protocol.lower(),
        port=_int(body["port"], f"named port {pname!r}: port", *PORT_RANGE),
        priority=_int(body.get("priority", 1), f"named port {pname!r}: priority", *SRV_FIELD_RANGE),
        weight=_int(body.get("weight", 1), f"named port {pname!r}: weight", *SRV_FIELD_RANGE),
    )


def named_ports(value: Any) -> dict[str, NamedPort]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("named_ports must be an object of name -> {protocol, port}")
    ports: dict[str, NamedPort] = {}
    for name, body in value.items():
        port = named_port(name, body)
        if port.name in ports:
            raise InvalidInput(f"named port {port.name!r} is given twice")
        ports[port.name] = port
    return ports


def _bounded_string(value: Any, what: str, limits: Limits) -> str:
    """A string a client stores (attribute name or value, tag): at most MAX_VALUE_LENGTH
    characters, no NUL (PostgreSQL text cannot hold one)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    if len(value) > limits.max_value_length:
        raise LimitExceeded(f"{what} is longer than {limits.max_value_length} characters")
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL characters")
    return value


def _token(value: Any, what: str, limits: Limits) -> str:
    """A tag or an attribute name: within the length limit, printable ASCII, no spaces."""
    text = _bounded_string(value, what, limits)
    if not text:
        raise InvalidInput(f"{what}s must not be empty")
    if not _TOKEN.fullmatch(text):
        raise InvalidInput(
            f"invalid {what} {text[:80]!a}: must be printable ASCII characters without spaces"
        )
    return text


def attributes(value: Any, limits: Limits) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("attributes must be an object of string -> string")
    if len(value) > limits.max_attributes:
        raise LimitExceeded(f"a service may have at most {limits.max_attributes} attributes")
    out: dict[str, str] = {}
    for key, val in value.items():
        _token(key, "attribute name", limits)
        out[key] = _bounded_string(val, f"attribute {key[:80]!r}", limits)
    return out


def tags(value: Any, limits: Limits) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise InvalidInput("tags must be an array of strings")
    seen: dict[str, None] = {}
    for tag in value:
        seen[_token(tag, "tag", limits)] = None
    if len(seen) > limits.max_tags_per_endpoint:
        raise LimitExceeded(f"an endpoint may have at most {limits.max_tags_per_endpoint} tags")
    return tuple(seen)


def ttl_seconds(value: Any) -> int | None:
    if value is None or value == 0:
        return None
    return _int(value, "ttl_seconds", 1, MAX_TTL_SECONDS)


def service_spec(body: Any, limits: Limits) -> ServiceSpec:
    if not isinstance(body, Mapping):
        raise InvalidInput("the body must be a JSON object with a name")
    if "name" not in body:
        raise InvalidInput("name is required")
    return ServiceSpec(
        name=service_name(body["name"]),
        attributes=attributes(body.get("attributes"), limits),
        named_ports=named_ports(body.get("named_ports")),
    )


def endpoint_spec(body: Any, limits: Limits) -> EndpointSpec:
    if not isinstance(body, Mapping):
        raise InvalidInput("the body must be a JSON object with an ip")
    if "ip" not in body:
        raise InvalidInput("ip is required")
    return EndpointSpec(
        ip=ip_address(body["ip"]),
        tags=tags(body.get("tags"), limits),
        ttl_seconds=ttl_seconds(body.get("ttl_seconds")),
    )


def endpoint_list(value: Any, limits: Limits) -> tuple[EndpointSpec, ...]:
    """A bulk registration's endpoints, each as `endpoint_spec` parses it: at most the
    endpoints-per-service limit; an address given twice counts once (the last one wins)."""
    if not isinstance(value, list | tuple):
        raise InvalidInput("endpoints must be an array of objects with an ip")
    limit = limits.max_endpoints_per_service
    if len(value) > limit:
        raise LimitExceeded(f"a service may have at most {limit} endpoints; {len(value)} given")
    specs = {spec.ip: spec for spec in (endpoint_spec(body, limits) for body in value)}
    return tuple(specs.values())
