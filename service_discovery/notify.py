"""The NOTIFY payloads replicas hear their changes by: channel names and the one codec for each.

`sd_changes` (migrations/0012.notify-data.sql) is sent at the commit of every change of a
service, by `sd_bump` for a single write and by a batch of writes (`sd_notify_changes`) for all
of its changes in order, as many to a payload as fit:

    <tag>{"b": [["<service>", <version>, <previous version or null>, "<ip>" or null, <data>], ...]}

The service is its lowercased name; the previous version is 0 for a new service and null once
it is deleted; `ip` names the one endpoint that changed, or is null for a change of the service
as a whole (ports, several endpoints, creation, deletion). The data is what the change left: for
an endpoint, `[tags, ttl, expires_at, instance ID]` or null once it is gone; for the whole
service, `sd_service_json` or null once it is gone. A change too large to carry comes without
it (four elements), and a replica reads it. The tag, 32 hex digits, is
sha256(k2 || sha256(k1 || body)) under the keys in `sd_notify_key` (`NotifyKey`).

`sd_registry` carries the same changes without data or tag, for replicas of earlier releases:

    {"s": "<service>", "v": <version>, "pv": <previous version>, "ip": "<ip>" or null}

or `{"b": [[service, version, previous version, ip], ...]}` for a batch. This release does not
listen to it; `decode_bumps` reads it (and the body of an `sd_changes` payload).

`sd_leases` carries lease renewals, which move no version, sent by the store (`encode_leases`) as
a JSON array of `[service, ip, expires_at]` triples: lowercased name, canonical address, unix
time. The renewals travel in the payload itself, so no replica reads them back.

Any role that can connect to the database can NOTIFY on these channels, so a payload is checked
before anything acts on it: a change's data only under a tag made with the keys (which only the
daemon's roles can read), and every payload field by field: exactly the shape above, names and
addresses as the database writes them (a lowercased service name, an address in PostgreSQL's
`host()` form), versions that fit a bigint with `pv < v`, and expiries that are finite and no
later than the longest lease from now. Anything else raises ValueError: the sync drops the
payload and counts it, and no replica reloads over it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service_discovery.errors import InvalidInput
from service_discovery.model import (
    MAX_TTL_SECONDS,
    Endpoint,
    LeaseRenewal,
    Service,
    ip_address,
    service_name,
)
from service_discovery.writes import endpoint_of, service_of

CHANGES_CHANNEL = "sd_changes"
REGISTRY_CHANNEL = "sd_registry"  # for replicas of earlier releases
LEASES_CHANNEL = "sd_leases"
CHANNELS = (CHANGES_CHANNEL, LEASES_CHANNEL)
_TAG_CHARS = 32

# NOTIFY payloads are limited to 8000 bytes; one renewal takes at most ~130 (a 63-character
# name, a 39-character IPv6 address, a float), so 50 per message always fit.
LEASES_PER_NOTIFICATION = 50

_MAX_VERSION = 2**63 - 1  # versions are bigints
# How far a renewal's expiry may lie beyond the longest lease from now: the database's clock
# (which computes expiries) may run ahead of ours by this much.
_CLOCK_SKEW_SECONDS = 3600.0
_BUMP_KEYS = frozenset(("s", "v", "pv", "ip"))


@dataclass(frozen=True, slots=True)
class Bump:
    """One change: `service` moved from `prev_version` to `version`, with what it left when
    `carried` (an endpoint's row or the whole service; None: gone)."""

    service: str  # lowercased name
    version: int
    prev_version: int | None  # 0: the service is new; None: it was deleted
    ip: str | None  # the one endpoint that changed, or None (ports, deletion, several)
    carried: bool = False
    data: Endpoint | Service | None = None


@dataclass(frozen=True, slots=True)
class NotifyKey:
    """The keys `sd_changes` payloads are tagged with (the table sd_notify_key)."""

    k1: bytes
    k2: bytes

    def tag(self, body: str) -> str:
        inner = hashlib.sha256(self.k1 + body.encode()).digest()
        return hashlib.sha256(self.k2 + inner).hexdigest()[:_TAG_CHARS]

    def sign(self, body: str) -> str:
        """A payload as the database sends it (for tests and tools)."""
        return self.tag(body) + body


def decode_changes(payload: str, key: NotifyKey) -> list[Bump]:
    """The changes one `sd_changes` payload carries, in order (ValueError if its tag does not
    match or it is not what sd_notify_data sends: the payload is dropped whole)."""
    tag, body = payload[:_TAG_CHARS], payload[_TAG_CHARS:]
    if not hmac.compare_digest(tag.encode(), key.tag(body).encode()):
        raise ValueError("sd_changes payload: the tag does not match (not the database's)")
    changes = _batch(_json(body), (4, 5))
    return [_carried(_bump(*c[:4]), c[4]) if len(c) == 5 else _bump(*c) for c in changes]


def _carried(bump: Bump, data: Any) -> Bump:
    """`bump` with the data it carries, checked."""
    if data is None:
        value: Endpoint | Service | None = None
    elif bump.prev_version is None:
        raise ValueError("sd_changes payload: a deletion carries data")
    else:
        try:
            if bump.ip is not None:
                value = endpoint_of([bump.ip, *data])
                if not all(isinstance(t, str) for t in value.tags):
                    raise TypeError("tags")
            else:
                value = service_of(data, bump.version)
                if value.name.lower() != bump.service:
                    raise ValueError("another service's data")
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"sd_changes payload: malformed data: {exc}") from None
    return Bump(bump.service, bump.version, bump.prev_version, bump.ip, True, value)


def decode_bumps(payload: str) -> list[Bump]:
    """The changes one `sd_registry` payload names, in order (ValueError if it is not what
    sd_bump or sd_notify_changes sends)."""
    data = _json(payload)
    if isinstance(data, dict) and data.keys() == _BUMP_KEYS:
        return [_bump(data["s"], data["v"], data["pv"], data["ip"])]
    return [_bump(*c) for c in _batch(data, (4,))]


def _batch(data: Any, sizes: tuple[int, ...]) -> list[list[Any]]:
    """The changes of a `{"b": [...]}` payload, each a list of one of `sizes` fields."""
    if not isinstance(data, dict) or data.keys() != {"b"} or not isinstance(data["b"], list):
        raise ValueError('payload is not {"b": [...]} (nor, on sd_registry, one change)')
    changes = data["b"]
    if not changes or not all(isinstance(c, list) and len(c) in sizes for c in changes):
        raise ValueError(f"payload is not a list of changes of {sizes} fields")
    return changes


def _bump(service: Any, version: Any, prev_version: Any, ip: Any) -> Bump:
    """One change, every field checked."""
    v = _version(version, "v", 1)
    pv = None if prev_version is None else _version(prev_version, "pv", 0)
    if pv is not None and pv >= v:
        raise ValueError(f"sd_registry payload: pv {pv} is not below v {v}")
    if pv is None and ip is not None:
        raise ValueError("sd_registry payload: a deletion (pv null) names no endpoint")
    return Bump(_service(service), v, pv, None if ip is None else _ip(ip))


def encode_leases(renewals: Sequence[LeaseRenewal]) -> list[str]:
    """`sd_leases` payloads for some renewals, LEASES_PER_NOTIFICATION to a payload."""
    size = LEASES_PER_NOTIFICATION
    return [
        json.dumps([[r.service, r.ip, r.expires_at] for r in renewals[i : i + size]])
        for i in range(0, len(renewals), size)
    ]


def decode_leases(payload: str, now: float) -> list[LeaseRenewal]:
    """The renewals of one `sd_leases` payload, heard at unix time `now` (ValueError if any part
    of it is not what `encode_leases` sends: the payload is dropped whole)."""
    data = _json(payload)
    if not isinstance(data, list) or not 1 <= len(data) <= LEASES_PER_NOTIFICATION:
        raise ValueError(
            f"sd_leases payload is not an array of 1 to {LEASES_PER_NOTIFICATION} renewals"
        )
    latest = now + MAX_TTL_SECONDS + _CLOCK_SKEW_SECONDS
    renewals = []
    for item in data:
        if not isinstance(item, list) or len(item) != 3:
            raise ValueError("sd_leases renewal is not a [service, ip, expires_at] triple")
        name, ip, at = item
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ValueError("sd_leases renewal: expires_at is not a number")
        if not (math.isfinite(at) and 0 < at <= latest):
            raise ValueError(f"sd_leases renewal: expires_at {at!r} is not a plausible expiry")
        renewals.append(LeaseRenewal(_service(name), _ip(ip), float(at)))
    return renewals


def _json(payload: str) -> Any:
    try:
        # NaN and Infinity are not JSON: refuse them here rather than let them into a heap
        return json.loads(payload, parse_constant=_not_json)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"payload holds {constant}, which is not JSON")


def _version(value: Any, what: str, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= _MAX_VERSION:
        raise ValueError(f"sd_registry payload: {what} is not a version")
    return value


def _service(value: Any) -> str:
    """A service's key: a valid name, lowercased (as sd_bump and the store send it)."""
    try:
        name = service_name(value)
    except InvalidInput as exc:
        raise ValueError(f"payload names no valid service: {exc.message}") from None
    if name != name.lower():
        raise ValueError(f"payload service name {name!r} is not lowercased")
    return name


def _ip(value: Any) -> str:
    """An address exactly as PostgreSQL's host() writes it (what the copy is keyed by)."""
    try:
        ip = ip_address(value)
    except InvalidInput as exc:
        raise ValueError(f"payload names no valid address: {exc.message}") from None
    if ip != value:
        raise ValueError(f"payload address {value!r} is not in canonical form")
    return ip
