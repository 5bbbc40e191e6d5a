"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from service_discovery import __version__, consul_openapi, model
from service_discovery.model import Limits
from service_discovery.watch import WAIT_PATTERN

# Every input schema says exactly what the server accepts (the model's rules, at this server's
# limits), so a schema-valid request is never refused with 400/422: checked by schemathesis in
# tests/test_fuzz_http.py. The rules and limits come from model.py and Config, never written
# out here. OpenAPI 3.1 for JSON Schema's propertyNames (map keys).
_NAME = {
    "type": "string",
    "maxLength": model.SERVICE_NAME_MAX_LENGTH,
    "pattern": model.SERVICE_NAME_PATTERN,
}
_PORT_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": model.PORT_NAME_MAX_LENGTH,
    "pattern": model.PORT_NAME_PATTERN,
}
_IP = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}


def _text(limits: Limits) -> dict[str, Any]:
    """An attribute value: bounded, without NUL (model._bounded_string)."""
    return {"type": "string", "maxLength": limits.max_value_length, "pattern": "^[^\\u0000]*$"}


def _token(limits: Limits) -> dict[str, Any]:
    """An attribute name or a tag: bounded, printable ASCII without spaces (model._token)."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": limits.max_value_length,
        "pattern": model.TOKEN_PATTERN,
    }


def _range(lo_hi: tuple[int, int]) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo_hi[0], "maximum": lo_hi[1]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid input",
        401: "missing or wrong bearer token",
        404: "not found",
        409: "already exists, or a state that forbids it (a heartbeat without a lease)",
        413: "body too large",
        422: "a limit was exceeded",
        429: "too many open watches",
        503: "database unavailable or registry not loaded",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": _NAME}
_IP_PARAM = {"name": "ip", "in": "path", "required": True, "schema": _IP}
_PRETTY = {"name": "pretty", "in": "query", "schema": {"type": "boolean"}}
_INDEX = {"name": "index", "in": "query", "schema": {"type": "integer", "minimum": 0}}
_WAIT = {"name": "wait", "in": "query", "schema": {"type": "string", "pattern": WAIT_PATTERN}}
_WRITE_ERRORS = (400, 401, 404, 413, 422, 503)


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def spec(limits: Limits) -> dict[str, Any]:
    """The document for a server with these limits."""
    text = _text(limits)
    attributes = {
        "type": "object",
        "maxProperties": limits.max_attributes,
        "propertyNames": _token(limits),
        "additionalProperties": text,
    }
    schemas = {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        },
        "NamedPort": {
            "type": "object",
            "required": ["port"],
            "properties": {
                "protocol": {"type": "string", "enum": list(model.PROTOCOLS)},
                "port": _range(model.PORT_RANGE),
                "priority": _range(model.SRV_FIELD_RANGE),
                "weight": _range(model.SRV_FIELD_RANGE),
            },
        },
        "NamedPorts": {
            "type": "object",
            # for the service, with those it has: a request within it may still be refused
            "maxProperties": limits.max_named_ports,
            "propertyNames": _PORT_NAME,
            "additionalProperties": _ref("NamedPort"),
        },
        "Endpoint": {
            "type": "object",
            "required": ["service_name", "ip", "tags"],
            "properties": {
                "service_name": {"type": "string"},
                "ip": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "ttl_seconds": {"type": "integer"},
                "expires_at": {"type": "number"},
                "instance_id": {"type": "string"},
            },
        },
        "Service": {
            "type": "object",
            "required": ["id", "name", "attributes", "named_ports", "index"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "attributes": {"type": "object", "additionalProperties": {"type": "string"}},
                "named_ports": _ref("NamedPorts"),
                "index": {"type": "integer"},
                "endpoints": {"type": "array", "items": _ref("Endpoint")},
                "endpoint_count": {"type": "integer", "minimum": 0},  # in listings
            },
        },
        "NewService": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": _NAME,
                "attributes": attributes,
                "named_ports": _ref("NamedPorts"),
            },
        },
        "NewEndpoint": {
            "type": "object",
            "required": ["ip"],
            "properties": {
                "ip": _IP,
                "tags": {
                    "type": "array",
                    "maxItems": limits.max_tags_per_endpoint,
                    "items": _token(limits),
                },
                "ttl_seconds": _range((0, model.MAX_TTL_SECONDS)),  # 0: no lease
            },
        },
        "NewEndpoints": {
            "oneOf": [
                _ref("NewEndpointList"),
                {
                    "type": "object",
                    "required": ["endpoints"],
                    "properties": {
                        "endpoints": _ref("NewEndpointList"),
                        "replace": {"type": "boolean"},
                    },
                },
            ]
        },
        "NewEndpointList": {
            "type": "array",
            "maxItems": limits.max_endpoints_per_service,
            "items": _ref("NewEndpoint"),
        },
        "Registered": {
            "type": "object",
            "required": ["service_name", "endpoints", "removed", "index"],
            "properties": {
                "service_name": {"type": "string"},
                "endpoints": {"type": "array", "items": _ref("Endpoint")},
                "removed": {"type": "array", "items": {"type": "string"}},
                "index": {"type": "integer"},
            },
        },
        "Lease": {
            "type": "object",
            "properties": {
                "service_name": {"type": "string"},
                "ip": {"type": "string"},
                "expires_at": {"type": "number"},
            },
        },
    }
    schemas["Readiness"] = {
        "type": "object",
        "required": ["ready", "draining", "database", "copy", "stale_seconds", "version"],
        "properties": {
            "ready": {"type": "boolean"},
            "draining": {"type": "boolean"},
            "database": {"enum": ["up", "down"]},
            "copy": {"enum": ["live", "stale"]},
            "stale_seconds": {"type": "number", "minimum": 0},
            "version": {"type": "integer", "minimum": 0},
        },
    }
    schemas["ServiceRecords"] = {
        "type": "object",
        "required": ["service", "index", "zone", "dns_port", "records", "tags_left_out"],
        "properties": {
            "service": {"type": "string"},
            "index": {"type": "integer"},
            "zone": {"type": "string"},
            "dns_port": {"type": "integer"},
            "records": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "type", "status", "answer", "additional", "count"],
                    "properties": {
                        "name": {"type": "string"},
                        "type": {"type": "string"},
                        "status": {"type": "string"},
                        "answer": {"type": "array", "items": {"type": "string"}},
                        "additional": {"type": "array", "items": {"type": "string"}},
                        "count": {"type": "integer", "minimum": 0},
                    },
                },
            },
            "tags_left_out": {"type": "integer", "minimum": 0},
        },
    }
    ports_op = {
        "summary": "Add or replace named ports",
        "parameters": [_NAME_PARAM],
        "requestBody": _body({"allOf": [_ref("NamedPorts")], "minProperties": 1}),
        "responses": {
            "200": _json(_ref("NamedPorts"), "the service's ports"),
            **_errors(*_WRITE_ERRORS),
        },
    }
    paths: dict[str, Any] = {
        "/services": {
            "get": {
                "summary": "List services (blocking query with index and wait)",
                "parameters": [_PRETTY, _INDEX, _WAIT],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Service")}, "services"),
                    **_errors(400, 401, 429, 503),
                },
            }
        },
        "/service": {
            "put": {
                "summary": "Create a service",
                "requestBody": _body(_ref("NewService")),
                "responses": {
                    "201": _json(_ref("Service"), "created"),
                    **_errors(400, 401, 409, 413, 422, 503),
                },
            }
        },
        "/service/{name}": {
            "get": {
                "summary": "Get a service with its ports and endpoints (blocking query)",
                "parameters": [_NAME_PARAM, _PRETTY, _INDEX, _WAIT],
                "responses": {
                    "200": _json(_ref("Service"), "the service"),
                    **_errors(400, 401, 404, 429, 503),
                },
            },
            "delete": {
                "summary": "Delete a service with its ports and endpoints",
                "parameters": [_NAME_PARAM],
                "responses": {"204": {"description": "deleted"}, **_errors(400, 401, 404, 503)},
            },
        },
        "/service/{name}/endpoints": {
            "get": {
                "summary": "List a service's live endpoints",
                "parameters": [_NAME_PARAM, _PRETTY],
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Endpoint")}, "endpoints"),
                    **_errors(400, 401, 404, 503),
                },
            },
            "put": {
                "summary": "Register many endpoints as one change (upsert); with replace, they "
                "become the service's whole set",
                "parameters": [_NAME_PARAM],
                "requestBody": _body(_ref("NewEndpoints")),
                "responses": {
                    "200": _json(_ref("Registered"), "registered (and removed)"),
                    **_errors(*_WRITE_ERRORS),
                },
            },
        },
        "/service/{name}/register": {
            "put": {
                "summary": "Register an endpoint (again: updates tags and lease)",
                "parameters": [_NAME_PARAM],
                "requestBody": _body(_ref("NewEndpoint")),
                "responses": {
                    "200": _json(_ref("Endpoint"), "registered"),
                    **_errors(*_WRITE_ERRORS),
                },
            }
        },
        "/service/{name}/endpoints/{ip}": {
            "delete": {
                "summary": "Deregister an endpoint",
                "parameters": [_NAME_PARAM, _IP_PARAM],
                "responses": {
                    "204": {"description": "deregistered"},
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/service/{name}/endpoints/{ip}/heartbeat": {
            "put": {
                "summary": "Renew an endpoint's lease; 404 means register again",
                "parameters": [_NAME_PARAM, _IP_PARAM],
                "responses": {
                    "200": _json(_ref("Lease"), "renewed"),
                    **_errors(400, 401, 404, 409, 503),
                },
            }
        },
        "/service/{name}/dns": {
            "get": {
                "summary": "The records DNS serves for the service's names, as zone-file lines "
                "(from the DNS server's own resolver; the dashboard shows them)",
                "parameters": [_NAME_PARAM, _PRETTY],
                "responses": {
                    "200": _json(_ref("ServiceRecords"), "the record sets"),
                    **_errors(401, 404, 503),
                },
            }
        },
        "/service/{name}/ports": {"put": ports_op},
        "/service/{name}/port": {"put": {**ports_op, "summary": "Alias of /ports (the design)"}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
        "/ready": {
            "get": {
                "summary": "Readiness: registry loaded and not draining (also with the database "
                "away); the body says how current the copy is",
                "responses": {
                    "200": _json(_ref("Readiness"), "ready"),
                    "503": _json(_ref("Readiness"), "not ready"),
                },
            }
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "ok"}}}
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": "ok"}}}
        },
    }
    # The Consul-compatible API and Prometheus' http_sd, under /v1/ (consul_openapi).
    paths.update(consul_openapi.paths(_errors))
    schemas.update(consul_openapi.schemas(limits))
    return {
        "openapi": "3.1.0",
        "info": {"title": "service-discovery", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
