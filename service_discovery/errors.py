"""Typed registry errors: raised by the model and the store, mapped to wire errors once per
front-end."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class; `code` is the stable machine-readable name used in JSON errors."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


class StoreUnavailable(RegistryError):
    code = "unavailable"


class NotReady(RegistryError):
    code = "not_ready"


class TooManyRequests(RegistryError):
    code = "too_many_requests"
