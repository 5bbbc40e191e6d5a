from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    SNAPSHOT: _ClassVar[ChangeKind]
    UPDATED: _ClassVar[ChangeKind]
    DELETED: _ClassVar[ChangeKind]
    EXPIRED: _ClassVar[ChangeKind]
    RELOADED: _ClassVar[ChangeKind]
CHANGE_KIND_UNSPECIFIED: ChangeKind
SNAPSHOT: ChangeKind
UPDATED: ChangeKind
DELETED: ChangeKind
EXPIRED: ChangeKind
RELOADED: ChangeKind

class NamedPort(_message.Message):
    __slots__ = ("name", "protocol", "port", "priority", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    protocol: str
    port: int
    priority: int
    weight: int
    def __init__(self, name: _Optional[str] = ..., protocol: _Optional[str] = ..., port: _Optional[int] = ..., priority: _Optional[int] = ..., weight: _Optional[int] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "attributes", "named_ports", "id", "index", "endpoints")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NamedPortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: NamedPort
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[NamedPort, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    NAMED_PORTS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    attributes: _containers.ScalarMap[str, str]
    named_ports: _containers.MessageMap[str, NamedPort]
    id: str
    index: int
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., named_ports: _Optional[_Mapping[str, NamedPort]] = ..., id: _Optional[str] = ..., index: _Optional[int] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("service_name", "ip", "tags", "ttl_seconds", "expires_at")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    ip: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    expires_at: float
    def __init__(self, service_name: _Optional[str] = ..., ip: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., expires_at: _Optional[float] = ...) -> None: ...

class GetServiceRequest(_message.Message):
    __slots__ = ("service_name",)
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    def __init__(self, service_name: _Optional[str] = ...) -> None: ...

class GetServiceResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class CreateServiceRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class CreateServiceResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services", "version")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    version: int
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class AddNamedPortsRequest(_message.Message):
    __slots__ = ("service_name", "named_ports")
    class NamedPortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: NamedPort
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[NamedPort, _Mapping]] = ...) -> None: ...
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    NAMED_PORTS_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    named_ports: _containers.MessageMap[str, NamedPort]
    def __init__(self, service_name: _Optional[str] = ..., named_ports: _Optional[_Mapping[str, NamedPort]] = ...) -> None: ...

class AddNamedPortsResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class LookupEndpointsRequest(_message.Message):
    __slots__ = ("service_name",)
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    def __init__(self, service_name: _Optional[str] = ...) -> None: ...

class LookupEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "index")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    index: int
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., index: _Optional[int] = ...) -> None: ...

class RegisterEndpointRequest(_message.Message):
    __slots__ = ("service_name", "endpoint")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    endpoint: Endpoint
    def __init__(self, service_name: _Optional[str] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class RegisterEndpointResponse(_message.Message):
    __slots__ = ("endpoint", "index")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    index: int
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., index: _Optional[int] = ...) -> None: ...

class DeleteServiceRequest(_message.Message):
    __slots__ = ("service_name",)
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    def __init__(self, service_name: _Optional[str] = ...) -> None: ...

class DeleteServiceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegisterEndpointsRequest(_message.Message):
    __slots__ = ("service_name", "endpoints", "replace")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    replace: bool
    def __init__(self, service_name: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., replace: _Optional[bool] = ...) -> None: ...

class RegisterEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "removed", "index")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    removed: _containers.RepeatedScalarFieldContainer[str]
    index: int
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., removed: _Optional[_Iterable[str]] = ..., index: _Optional[int] = ...) -> None: ...

class DeregisterEndpointRequest(_message.Message):
    __slots__ = ("service_name", "ip")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    ip: str
    def __init__(self, service_name: _Optional[str] = ..., ip: _Optional[str] = ...) -> None: ...

class DeregisterEndpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("service_name", "ip")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    ip: str
    def __init__(self, service_name: _Optional[str] = ..., ip: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("expires_at",)
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    expires_at: float
    def __init__(self, expires_at: _Optional[float] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("service_name", "version")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    version: int
    def __init__(self, service_name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("version", "kind", "service_name", "services", "more")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    version: int
    kind: ChangeKind
    service_name: str
    services: _containers.RepeatedCompositeFieldContainer[Service]
    more: bool
    def __init__(self, version: _Optional[int] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., service_name: _Optional[str] = ..., services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...
