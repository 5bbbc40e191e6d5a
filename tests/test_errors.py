"""The one table of error kind -> HTTP status -> gRPC code (errors.STATUS), looked up along the
class hierarchy by every front-end."""

from __future__ import annotations

import grpc

from service_discovery import errors
from service_discovery.errors import STATUS, NotFound, RegistryError, Status, wire_status
from service_discovery.grpc_calls import status_of


def test_every_error_kind_has_a_wire_status() -> None:
    kinds = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, RegistryError) and cls is not RegistryError
    }
    assert kinds == set(STATUS)
    for status in STATUS.values():
        assert grpc.StatusCode[status.grpc].name == status.grpc


def test_a_subclass_goes_on_the_wire_as_its_base() -> None:
    """A subclass of NotFound is a 404 / NOT_FOUND, not a 500 (HTTP once looked up the exact
    type); the base class itself is internal."""

    class ServiceGone(NotFound):
        pass

    assert wire_status(ServiceGone("gone")) == Status(404, "NOT_FOUND")
    assert status_of(ServiceGone("gone")) == grpc.StatusCode.NOT_FOUND
    assert wire_status(RegistryError("base class")) == Status(500, "INTERNAL")
