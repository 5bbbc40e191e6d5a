"""The model's name rules, as tables: what a service name and a port name may be."""

from __future__ import annotations

import pytest

from service_discovery import model
from service_discovery.errors import InvalidInput

SERVICE_NAMES = [
    ("webapp", True),
    ("Web-App-2", True),  # case is kept for display; lookups ignore it
    ("a" * 63, True),
    ("a" * 64, False),
    ("-web", False),
    ("web-", False),
    ("web.app", False),
    ("web\n", False),  # `$` alone would match before a trailing newline
    ("", False),
]
PORT_NAMES = [
    ("http", True),
    ("HTTP", True),
    ("grpc-web", True),
    ("h2", True),
    ("a" * 15, True),
    ("a" * 16, False),
    ("80", False),  # at least one letter
    ("grpc--web", False),
    ("-http", False),
    ("http-", False),
    ("http\n", False),
]


@pytest.mark.parametrize(("name", "valid"), SERVICE_NAMES)
def test_service_names(name: str, valid: bool) -> None:
    if valid:
        assert model.service_name(name) == name
    else:
        with pytest.raises(InvalidInput):
            model.service_name(name)


@pytest.mark.parametrize(("name", "valid"), PORT_NAMES)
def test_port_names(name: str, valid: bool) -> None:
    if valid:
        assert model.port_name(name) == name.lower()
    else:
        with pytest.raises(InvalidInput):
            model.port_name(name)
