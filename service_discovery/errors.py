"""Typed registry errors, raised by the model, the store and the catalog, and the one table
that says how each kind goes on the wire (HTTP status, gRPC code) for every front-end."""

from __future__ import annotations

from typing import NamedTuple


class RegistryError(Exception):
    """Base class. `code` is the stable machine-readable name used in wire errors and `message`
    what a client is told; `detail` is for the log only (database hosts and ports, driver
    errors, constraint names: nothing a client should learn). `str(error)` has both."""

    code = "internal"

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(f"{message} ({detail})" if detail else message)
        self.message = message
        self.detail = detail


class InvalidInput(RegistryError):
    code = "invalid_input"


class NotFound(RegistryError):
    code = "not_found"


class AlreadyExists(RegistryError):
    code = "already_exists"


class Conflict(RegistryError):
    """The request is well formed but the resource's state does not allow it."""

    code = "conflict"


class LimitExceeded(RegistryError):
    code = "limit_exceeded"


class Unauthenticated(RegistryError):
    code = "unauthenticated"


class Forbidden(RegistryError):
    """A valid credential that does not allow this request (read-only, or another service)."""

    code = "forbidden"


class StoreUnavailable(RegistryError):
    code = "unavailable"


class NotReady(RegistryError):
    code = "not_ready"


class TooManyRequests(RegistryError):
    code = "too_many_requests"


class Status(NamedTuple):
    """How an error kind goes on the wire: its HTTP status and its gRPC status code's name (a
    name, so that this module needs no grpc: grpc_api turns it into a grpc.StatusCode)."""

    http: int
    grpc: str


# The one table of error kind -> HTTP status -> gRPC code, for every front-end. Looked up along
# the class hierarchy (`wire_status`), so a subclass goes on the wire as its nearest listed base.
# LimitExceeded (a valid request over a configured limit: too many tags, attributes or
# endpoints, a value too long) is 422 / FAILED_PRECONDITION rather than 400 / INVALID_ARGUMENT,
# so clients can tell "malformed" from "over this deployment's limits".
STATUS: dict[type[RegistryError], Status] = {
    InvalidInput: Status(400, "INVALID_ARGUMENT"),
    Unauthenticated: Status(401, "UNAUTHENTICATED"),
    Forbidden: Status(403, "PERMISSION_DENIED"),
    NotFound: Status(404, "NOT_FOUND"),
    AlreadyExists: Status(409, "ALREADY_EXISTS"),
    Conflict: Status(409, "FAILED_PRECONDITION"),
    LimitExceeded: Status(422, "FAILED_PRECONDITION"),
    TooManyRequests: Status(429, "RESOURCE_EXHAUSTED"),
    StoreUnavailable: Status(503, "UNAVAILABLE"),
    NotReady: Status(503, "UNAVAILABLE"),
}
INTERNAL = Status(500, "INTERNAL")  # a RegistryError of no listed kind: a bug


def wire_status(error: RegistryError) -> Status:
    """The wire status of `error`: that of its class or of its nearest base in STATUS."""
    for cls in type(error).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return INTERNAL
