"""Typed errors: each HTTP error class of the daemon is one exception carrying the daemon's
`{"error": code, "message": ...}`, the HTTP status and the replica that answered."""

from __future__ import annotations

import json


class ServiceDiscoveryError(Exception):
    """Base class. `code` is the daemon's machine-readable error name (`not_found`,
    `already_exists`, `unavailable`, ...) or, for failures of the client itself,
    `unreachable` / `bad_response`; `status` is the HTTP status (None when no replica answered)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        address: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.address = address

    def __str__(self) -> str:
        where = f" (HTTP {self.status} from {self.address})" if self.status and self.address else ""
        return f"{self.code}: {self.message}{where}"


class InvalidInput(ServiceDiscoveryError):
    """400 (a name, address, port or body the daemon refuses) or 413 (body too large)."""


class Unauthorized(ServiceDiscoveryError):
    """401/403: a token is required, or the one given is wrong."""


class NotFound(ServiceDiscoveryError):
    """404: no such service or endpoint; for a heartbeat, the lease lapsed (register again)."""


class Conflict(ServiceDiscoveryError):
    """409: the service already exists, or a heartbeat for an endpoint without a lease."""


class LimitExceeded(ServiceDiscoveryError):
    """422: a limit of the daemon (endpoints per service, tags, attributes, lengths)."""


class Unavailable(ServiceDiscoveryError):
    """No replica could do it: connection refused or timed out on every address, or 503 (the
    database is away, the replica is not ready or draining). Worth retrying later."""


class TooManyRequests(Unavailable):
    """429: this client address holds too many open watches."""


_BY_STATUS: dict[int, type[ServiceDiscoveryError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: InvalidInput,
    422: LimitExceeded,
    429: TooManyRequests,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def from_response(status: int, body: bytes, address: str) -> ServiceDiscoveryError:
    """The exception for an error answer; the daemon's JSON body gives code and message."""
    code, message = f"http_{status}", body.decode("utf-8", "replace")[:500] or f"HTTP {status}"
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        code = data["error"]
        message = str(data.get("message", code))
    cls = _BY_STATUS.get(status, ServiceDiscoveryError)
    return cls(message, code=code, status=status, address=address)
