"""Client of the service-discovery daemon's HTTP API: `Client` (standard library only),
`AsyncClient` (aiohttp), leases kept alive, watches, SRV-ordered resolution, typed results and
errors. The `sdctl` command line is `service_discovery_client.cli`."""

from service_discovery_client.aio import AsyncClient, AsyncLease
from service_discovery_client.client import Client
from service_discovery_client.errors import (
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    ServiceDiscoveryError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from service_discovery_client.lease import Lease
from service_discovery_client.models import (
    Address,
    Addresses,
    BadResponse,
    Endpoint,
    NamedPort,
    Renewal,
    Service,
    Services,
)

__version__ = "0.1.0"

__all__ = [
    "Address",
    "Addresses",
    "AsyncClient",
    "AsyncLease",
    "BadResponse",
    "Client",
    "Conflict",
    "Endpoint",
    "InvalidInput",
    "Lease",
    "LimitExceeded",
    "NamedPort",
    "NotFound",
    "Renewal",
    "Service",
    "ServiceDiscoveryError",
    "Services",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
]
