"""The /v1/ part of the OpenAPI document: every route of `consul_api.ROUTES`, with schemas that
state what the server accepts (schemathesis checks that a schema-valid request is never
refused with 400/422) and what it answers. Consul's own optional parameters that change
nothing here (stale, consistent, cached, dc, ns) are accepted but not listed.
"""

from __future__ import annotations

from typing import Any

from service_discovery import model
from service_discovery.consul_api import ROUTES
from service_discovery.model import Limits

_STR = {"type": "string"}
_INT = {"type": "integer"}
_STRINGS = {"type": "array", "items": _STR}
_STR_MAP = {"type": "object", "additionalProperties": _STR}
_NAME = {"type": "string", "maxLength": model.SERVICE_NAME_MAX_LENGTH,
         "pattern": model.SERVICE_NAME_PATTERN}  # fmt: skip
_WAIT = "^[0-9]{1,4}(ms|s|m)$"
_INDEX_HEADER = {"X-Consul-Index": {"schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _text(limits: Limits, min_length: int = 1) -> dict[str, Any]:
    """A Meta value (a value of the service's attributes): bounded, without NUL."""
    return {"type": "string", "minLength": min_length, "maxLength": limits.max_value_length,
            "pattern": "^[^\\u0000]*$"}  # fmt: skip


def _token(limits: Limits) -> dict[str, Any]:
    """A tag or a Meta key (an attribute name): bounded, printable ASCII without spaces."""
    return {"type": "string", "minLength": 1, "maxLength": limits.max_value_length,
            "pattern": model.TOKEN_PATTERN}  # fmt: skip


def schemas(limits: Limits) -> dict[str, Any]:
    """The /v1/ schemas, at this server's limits (model.py's rules, Config's numbers)."""
    return {
        "ConsulNode": _object(
            ["ID", "Node", "Address", "Datacenter"],
            ID=_STR, Node=_STR, Address=_STR, Datacenter=_STR, TaggedAddresses=_STR_MAP,
            Meta=_STR_MAP, CreateIndex=_INT, ModifyIndex=_INT,
        ),
        "ConsulAgentService": _object(
            ["ID", "Service", "Tags", "Address", "Port", "Meta"],
            ID=_STR, Service=_STR, Tags=_STRINGS, Address=_STR, Port=_INT, Meta=_STR_MAP,
            TaggedAddresses={"type": "object", "additionalProperties": _object(
                ["Address", "Port"], Address=_STR, Port=_INT)},
            Weights=_object(["Passing", "Warning"], Passing=_INT, Warning=_INT),
            EnableTagOverride={"type": "boolean"}, Datacenter=_STR, CreateIndex=_INT,
            ModifyIndex=_INT,
        ),
        "ConsulCheck": _object(
            ["Node", "CheckID", "Status", "ServiceID", "ServiceName"],
            Node=_STR, CheckID=_STR, Name=_STR, Status={"type": "string", "enum": ["passing"]},
            Notes=_STR, Output=_STR, ServiceID=_STR, ServiceName=_STR, ServiceTags=_STRINGS,
            Type=_STR, Definition={"type": "object"}, CreateIndex=_INT, ModifyIndex=_INT,
        ),
        "ConsulCatalogService": _object(
            ["ID", "Node", "Address", "Datacenter", "ServiceID", "ServiceName", "ServiceAddress",
             "ServicePort", "ServiceTags", "ServiceMeta"],
            ID=_STR, Node=_STR, Address=_STR, Datacenter=_STR, TaggedAddresses=_STR_MAP,
            NodeMeta=_STR_MAP, ServiceKind=_STR, ServiceID=_STR, ServiceName=_STR,
            ServiceTags=_STRINGS, ServiceAddress=_STR, ServiceTaggedAddresses={"type": "object"},
            ServiceWeights={"type": "object"}, ServiceMeta=_STR_MAP, ServicePort=_INT,
            ServiceEnableTagOverride={"type": "boolean"}, ServiceProxy={"type": "object"},
            ServiceConnect={"type": "object"}, CreateIndex=_INT, ModifyIndex=_INT,
        ),
        "ConsulServiceEntry": _object(
            ["Node", "Service", "Checks"],
            Node=_ref("ConsulNode"), Service=_ref("ConsulAgentService"),
            Checks={"type": "array", "items": _ref("ConsulCheck")},
        ),
        "ConsulRegistration": {
            "type": "object",
            "required": ["Name", "Address"],
            "additionalProperties": False,
            "properties": {
                "Name": _NAME,
                "ID": {"type": "string", "pattern": model.INSTANCE_ID_PATTERN},
                "Address": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
                # 0 or absent: no port
                "Port": {"type": "integer", "minimum": 0, "maximum": model.PORT_RANGE[1]},
                "Tags": {"type": "array", "maxItems": limits.max_tags_per_endpoint,
                         "items": _token(limits)},
                "Meta": {"type": "object", "maxProperties": limits.max_attributes,
                         "propertyNames": _token(limits),
                         "additionalProperties": _text(limits, min_length=0)},
                "EnableTagOverride": {"type": "boolean"},
                "Check": {
                    "type": "object",
                    "required": ["TTL"],
                    "additionalProperties": False,
                    "properties": {
                        # whole seconds up to 99999 (< model.MAX_TTL_SECONDS); the server takes
                        # any Go duration from 1 s to 7 days
                        "TTL": {"type": "string", "pattern": "^[1-9][0-9]{0,4}s$"},
                        "DeregisterCriticalServiceAfter": {
                            "type": "string", "pattern": "^[0-9]{1,5}(s|m|h)$"},
                        "Name": _STR,
                        "Notes": _STR,
                    },
                },
            },
        },
        "ConsulCheckUpdate": {
            "type": "object",
            "required": ["Status"],
            "additionalProperties": False,
            "properties": {"Status": {"type": "string", "enum": ["passing"]}, "Output": _STR},
        },
        "PrometheusTargetGroup": _object(["targets", "labels"], targets=_STRINGS, labels=_STR_MAP),
    }  # fmt: skip


_PATH_PARAMS = {
    "service": {"name": "service", "in": "path", "required": True, "schema": _STR},
    "node": {"name": "node", "in": "path", "required": True, "schema": _STR},
    "service_id": {"name": "service_id", "in": "path", "required": True, "schema": _STR},
    "check_id": {"name": "check_id", "in": "path", "required": True, "schema": _STR},
}
_BLOCKING = [
    {"name": "index", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "wait", "in": "query", "schema": {"type": "string", "pattern": _WAIT}},
]  # fmt: skip
_TAG = {"name": "tag", "in": "query", "schema": {"type": "array", "items": _STR},
        "style": "form", "explode": True}  # fmt: skip
_PORT = {"name": "port", "in": "query",
         "schema": {"type": "string", "maxLength": model.PORT_NAME_MAX_LENGTH,
                    "pattern": model.PORT_NAME_PATTERN}}  # fmt: skip
_PASSING = {"name": "passing", "in": "query", "schema": {"type": "boolean"}}
_FILTERS = {"name": "service", "in": "query", "schema": _STRINGS, "style": "form", "explode": True}

# path -> (extra query parameters, request body schema, 200 answer schema or None for no body)
_OPS: dict[str, tuple[list[dict[str, Any]], str | None, dict[str, Any] | None]] = {
    "/v1/catalog/services": ([], None, {"type": "object", "additionalProperties": _STRINGS}),
    "/v1/catalog/service/{service}": (
        [_TAG, _PORT], None, {"type": "array", "items": _ref("ConsulCatalogService")}),
    "/v1/catalog/nodes": ([], None, {"type": "array", "items": _ref("ConsulNode")}),
    "/v1/catalog/node/{node}": ([], None, {"type": ["object", "null"]}),
    "/v1/catalog/datacenters": ([], None, _STRINGS),
    "/v1/health/service/{service}": (
        [_TAG, _PORT, _PASSING], None, {"type": "array", "items": _ref("ConsulServiceEntry")}),
    "/v1/health/checks/{service}": ([], None, {"type": "array", "items": _ref("ConsulCheck")}),
    "/v1/agent/self": ([], None, {"type": "object", "required": ["Config"]}),
    "/v1/agent/services": (
        [], None, {"type": "object", "additionalProperties": _ref("ConsulAgentService")}),
    "/v1/agent/service/{service_id}": ([], None, _ref("ConsulAgentService")),
    "/v1/agent/checks": ([], None, {"type": "object", "additionalProperties": _ref("ConsulCheck")}),
    "/v1/agent/service/register": ([], "ConsulRegistration", None),
    "/v1/agent/service/deregister/{service_id}": ([], None, None),
    "/v1/agent/check/pass/{check_id}": ([], None, None),
    "/v1/agent/check/update/{check_id}": ([], "ConsulCheckUpdate", None),
    "/v1/status/leader": ([], None, _STR),
    "/v1/status/peers": ([], None, _STRINGS),
    "/v1/prometheus/targets": (
        [_FILTERS, {**_FILTERS, "name": "port"}, {**_TAG}], None,
        {"type": "array", "items": _ref("PrometheusTargetGroup")}),
}  # fmt: skip


def paths(errors: Any) -> dict[str, Any]:
    """The /v1/ paths; `errors(*codes)` gives the document's error responses."""
    out: dict[str, Any] = {}
    for route in ROUTES:
        extra, body, answer = _OPS[route.path]
        params = [p for name, p in _PATH_PARAMS.items() if "{" + name + "}" in route.path]
        params += extra + (_BLOCKING if route.blocking else [])
        ok: dict[str, Any] = {"description": route.summary}
        if answer is not None:
            ok["content"] = {"application/json": {"schema": answer}}
        if route.blocking:
            ok["headers"] = _INDEX_HEADER
        op: dict[str, Any] = {
            "summary": route.summary,
            "parameters": params,
            "responses": {"200": ok},
        }
        if body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(body)}},
            }
        if route.method == "PUT":
            op["responses"].update(errors(400, 401, 404, 409, 413, 422, 503))
        else:
            op["responses"].update(errors(400, 401, 404, 429, 503))
        out.setdefault(route.path, {})[route.method.lower()] = op
    return out
