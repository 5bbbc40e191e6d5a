"""The NOTIFY payloads replicas hear their changes by: channel names and the one codec for each.

`sd_registry` is sent by the SQL function `sd_bump` (migrations/0001.registry.sql) at the commit
of every change of a service, as a JSON object:

    {"s": "<lowercased service name>", "v": <its new version>,
     "pv": <its previous version (0 for a new service), or null once it is deleted>,
     "ip": "<the endpoint's address, or null>"}

`ip` is set when exactly one endpoint changed: a copy at version `pv` patches that endpoint, any
other copy reads the whole service. A batch of writes (`sd_write_batch`,
migrations/0005.group-commit.sql) sends that same object when it made one change, and else its
changes in order, as many to a payload as fit in 8000 bytes:

    {"b": [["<service>", <version>, <previous version or null>, "<ip>" or null], ...]}

Python only decodes them (`decode_bumps`).

`sd_leases` carries lease renewals, which move no version, sent by the store (`encode_leases`) as
a JSON array of `[service, ip, expires_at]` triples: lowercased name, canonical address, unix
time. The renewals travel in the payload itself, so no replica reads them back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service_discovery.model import LeaseRenewal

REGISTRY_CHANNEL = "sd_registry"
LEASES_CHANNEL = "sd_leases"
CHANNELS = (REGISTRY_CHANNEL, LEASES_CHANNEL)

# NOTIFY payloads are limited to 8000 bytes; one renewal takes at most ~130 (a 63-character
# name, a 39-character IPv6 address, a float), so 50 per message always fit.
LEASES_PER_NOTIFICATION = 50


@dataclass(frozen=True, slots=True)
class Bump:
    """One `sd_registry` notification: `service` moved from `prev_version` to `version`."""

    service: str  # lowercased name
    version: int
    prev_version: int | None  # 0: the service is new; None: it was deleted
    ip: str | None  # the one endpoint that changed, or None (ports, deletion, several)


def decode_bumps(payload: str) -> list[Bump]:
    """The changes one `sd_registry` payload names, in order (ValueError if it is malformed)."""
    data: Any = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("sd_registry payload is not a JSON object")
    try:
        if "b" in data:
            return [_bump(s, v, pv, ip) for s, v, pv, ip in data["b"]]
        return [_bump(data["s"], data["v"], data.get("pv"), data.get("ip"))]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed sd_registry payload: {exc!r}") from exc


def _bump(service: Any, version: Any, prev_version: Any, ip: Any) -> Bump:
    return Bump(
        service=str(service),
        version=int(version),
        prev_version=None if prev_version is None else int(prev_version),
        ip=None if ip is None else str(ip),
    )


def encode_leases(renewals: Sequence[LeaseRenewal]) -> list[str]:
    """`sd_leases` payloads for some renewals, LEASES_PER_NOTIFICATION to a payload."""
    size = LEASES_PER_NOTIFICATION
    return [
        json.dumps([[r.service, r.ip, r.expires_at] for r in renewals[i : i + size]])
        for i in range(0, len(renewals), size)
    ]


def decode_leases(payload: str) -> list[LeaseRenewal]:
    """The renewals of one `sd_leases` payload (ValueError if it is malformed)."""
    data: Any = json.loads(payload)
    if not isinstance(data, list):
        raise ValueError("sd_leases payload is not a JSON array")
    try:
        return [LeaseRenewal(str(s), str(ip), float(at)) for s, ip, at in data]
    except TypeError as exc:
        raise ValueError(f"malformed sd_leases payload: {exc!r}") from exc
