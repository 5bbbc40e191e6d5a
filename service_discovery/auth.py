"""Bearer tokens and client certificates, and what each may do: shared by HTTP (native and
/v1/) and gRPC.

Tokens come from SD_API_TOKENS (read-write) and SD_API_TOKENS_FILE, whose lines are
`TOKEN [SCOPE]` (`Config.tokens`); a scope is `read`, `write` (the default: read and write
everything) or `write:PATTERN,PATTERN...`, write limited to the services whose name matches a
pattern (`*` any run of characters, as in `payments-*`). With TLS_CLIENT_CERT_AUTH=read|write a
verified client certificate grants that scope when no token is sent. With no token configured
and no certificate grant, every request is allowed; otherwise writes (and reads under
SD_PROTECT_READS) need a credential.

Authentication (`authenticate`) happens before a handler runs and yields a `Grant`; a write
limited to services is then checked against each service it targets (`Grant.permit`), by the
front-end, which knows the name (from the path, the body, or an instance ID). Tokens are never
logged or echoed: errors say only that a token was missing, malformed, not valid or not allowed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from service_discovery.config import Config, ConfigError
from service_discovery.errors import Forbidden, Unauthenticated

log = logging.getLogger(__name__)

_SCHEME = "bearer"
_PATTERN = re.compile(r"[a-z0-9*][a-z0-9*-]*")


@dataclass(frozen=True, slots=True)
class Grant:
    """What a credential allows: reads, and writes to every service or to `services` only."""

    write: bool
    services: tuple[str, ...] | None = None  # name patterns; None = every service

    @property
    def limited(self) -> bool:
        return self.write and self.services is not None

    def permit(self, service: str) -> None:
        """Raise Forbidden unless this grant may write to `service`."""
        if not self.write:
            raise Forbidden("this credential is read-only")
        if self.services is None:
            return
        name = service.lower()
        if not any(fnmatch.fnmatchcase(name, p) for p in self.services):
            raise Forbidden(
                f"this credential may not write to service {service!r} "
                f"(it is limited to {', '.join(self.services)})"
            )


READ = Grant(write=False)
WRITE = Grant(write=True)


def parse_scope(text: str) -> Grant:
    """A scope of SD_API_TOKENS_FILE: '' / write / read-write, read / read-only,
    write:PATTERN[,PATTERN...]. ValueError with what was wrong."""
    scope = text.strip().lower()
    if scope in ("", "write", "read-write", "rw"):
        return WRITE
    if scope in ("read", "read-only", "ro"):
        return READ
    kind, sep, rest = scope.partition(":")
    if kind == "write" and sep:
        patterns = tuple(p.strip() for p in rest.split(","))
        if patterns and all(_PATTERN.fullmatch(p) for p in patterns):
            return Grant(write=True, services=patterns)
    raise ValueError(
        f"unknown scope {text.strip()!r}: expected read, write or write:PATTERN[,PATTERN...] "
        "(patterns of letters, digits, - and *)"
    )


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of the length of
    # the given token, which hmac.compare_digest on the raw values would reveal.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Auth:
    """Decides whether a request may proceed and with which Grant."""

    def __init__(
        self,
        tokens: Mapping[str, Grant] | frozenset[str],
        protect_reads: bool,
        cert_grant: Grant | None = None,
    ) -> None:
        grants = tokens if isinstance(tokens, Mapping) else dict.fromkeys(tokens, WRITE)
        self._known = tuple((_digest(t), grants[t]) for t in sorted(grants))
        self.cert_grant = cert_grant  # what a verified client certificate allows
        self.enabled = bool(grants) or cert_grant is not None
        self.protect_reads = protect_reads and self.enabled

    @classmethod
    def from_config(cls, config: Config) -> Auth:
        """The Auth of these settings; ConfigError for a token line of unknown scope."""
        grants = {}
        for token, scope in config.tokens().items():
            try:
                grants[token] = parse_scope(scope)
            except ValueError as exc:
                raise ConfigError(f"SD_API_TOKENS_FILE: {exc}") from None  # the token stays out
        cert = {"none": None, "read": READ, "write": WRITE}[config.tls_client_cert_auth]
        return cls(grants, config.protect_reads, cert)

    def required(self, *, write: bool) -> bool:
        """Whether a request of this kind needs a credential at all."""
        return self.enabled and (write or self.protect_reads)

    def authenticate(
        self, authorization: str | None, *, write: bool, client_cert: bool = False
    ) -> Grant | None:
        """The Grant of a request, None when it needs no credential (then anything goes).

        `authorization` is the raw header (or gRPC metadata) value; `client_cert` whether the
        connection presented a verified client certificate; `write` whether the request changes
        the registry. Raises Unauthenticated (no valid credential) or Forbidden (a read-only
        credential on a write)."""
        if not self.required(write=write):
            return None
        if not authorization and client_cert and self.cert_grant is not None:
            grant = self.cert_grant
        else:
            grant = self._token_grant(authorization)
        if write and not grant.write:
            raise Forbidden("this credential is read-only")
        return grant

    def check(self, authorization: str | None, *, write: bool) -> None:
        """Raise unless `authorization` may make a request of this kind (any service)."""
        grant = self.authenticate(authorization, write=write)
        if grant is not None and grant.limited:
            raise Forbidden("this credential is limited to some services")

    def _token_grant(self, authorization: str | None) -> Grant:
        if not authorization:
            raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != _SCHEME or not token:
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        given = _digest(token)
        # Compare with every token without stopping at a match, so the time taken does not say
        # which token (or whether any) matched.
        found: Grant | None = None
        for known, grant in self._known:
            if hmac.compare_digest(given, known):
                found = grant
        if found is None:
            raise Unauthenticated("the bearer token is not valid")
        return found


def warn_if_exposed(auth: Auth, bind_address: str) -> None:
    """Log a WARNING when writes need no token and the listeners are reachable from other hosts:
    anyone on the network could then register their own address into any service. Loopback
    (the default) is the quick start's case and stays quiet."""
    if auth.enabled or ipaddress.ip_address(bind_address).is_loopback:
        return
    log.warning(
        "writes are unauthenticated (no SD_API_TOKENS or SD_API_TOKENS_FILE) and the listeners "
        "bind %s, not a loopback address: anyone who reaches the HTTP or gRPC port can register "
        "any address into any service. Set tokens, or BIND_ADDRESS=127.0.0.1",
        bind_address,
    )


# ---- HTTP (native and /v1/): the grant a request carries to its handler ---------------------
GRANT = web.RequestKey("grant", Grant)  # set by the authorize middleware for limited writes

H = TypeVar("H", bound=Callable[..., Any])


def checks_services(handler: H) -> H:
    """Mark a write handler that calls `permit` for every service it changes (the names are in
    its body or behind an ID): the only routes a service-limited credential may write through
    besides those whose path names the service."""
    handler.checks_services = True  # type: ignore[attr-defined]
    return handler


def handler_checks_services(handler: object) -> bool:
    return bool(getattr(handler, "checks_services", False))


def permit(request: web.Request, service: str) -> None:
    """Raise Forbidden unless the request's credential may write to `service`."""
    grant = request.get(GRANT)
    if grant is not None:
        grant.permit(service)
