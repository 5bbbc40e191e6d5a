"""The OpenAPI document states the model's rules and the server's limits, built from their one
definition (model.py, Config): it says what the server accepts, with any configuration."""

from __future__ import annotations

import re
from typing import Any

import pytest
from test_model import PORT_NAMES, SERVICE_NAMES

from service_discovery.model import Limits
from service_discovery.openapi import spec

SCHEMAS = spec(Limits())["components"]["schemas"]


def _accepts(schema: dict[str, Any], value: str) -> bool:
    """The string keywords this document uses: length and (ECMA-262) pattern."""
    if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
        return False
    # JSON Schema's `$` never matches before a trailing newline: Python's fullmatch agrees
    return re.fullmatch(schema["pattern"], value) is not None


@pytest.mark.parametrize(("name", "valid"), SERVICE_NAMES)
def test_service_name_schema_is_the_models_rule(name: str, valid: bool) -> None:
    assert _accepts(SCHEMAS["NewService"]["properties"]["name"], name) == valid


@pytest.mark.parametrize(("name", "valid"), [(n, v) for n, v in PORT_NAMES if n == n.lower()])
def test_port_name_schema_is_the_models_rule(name: str, valid: bool) -> None:
    assert _accepts(SCHEMAS["NamedPorts"]["propertyNames"], name) == valid


def test_limits_are_the_servers() -> None:
    limits = Limits(max_tags_per_endpoint=3, max_attributes=4, max_value_length=5)
    schemas = spec(limits)["components"]["schemas"]
    attributes = schemas["NewService"]["properties"]["attributes"]
    tags = schemas["NewEndpoint"]["properties"]["tags"]
    assert attributes["maxProperties"] == 4
    assert attributes["additionalProperties"]["maxLength"] == 5
    assert tags["maxItems"] == 3 and tags["items"]["maxLength"] == 5
