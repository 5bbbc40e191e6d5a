"""Bearer-token write protection, shared by HTTP and gRPC.

Tokens come from SD_API_TOKENS and SD_API_TOKENS_FILE (`Config.tokens`). With none configured,
every request is allowed; with some, writes (and reads under SD_PROTECT_READS) need
`Authorization: Bearer <token>`. Tokens are never logged or echoed: errors say only that a token
was missing, malformed or not valid.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging

from service_discovery.errors import Unauthenticated

log = logging.getLogger(__name__)

_SCHEME = "bearer"


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of the length of
    # the given token, which hmac.compare_digest on the raw values would reveal.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Auth:
    """Decides whether a request may proceed; `check` raises Unauthenticated when it may not."""

    def __init__(self, tokens: frozenset[str], protect_reads: bool) -> None:
        self._digests = tuple(_digest(t) for t in sorted(tokens))
        self.enabled = bool(tokens)
        self.protect_reads = protect_reads and self.enabled

    def required(self, *, write: bool) -> bool:
        """Whether a request of this kind needs a token at all."""
        return self.enabled and (write or self.protect_reads)

    def check(self, authorization: str | None, *, write: bool) -> None:
        """Raise Unauthenticated unless `authorization` ("Bearer <token>") is acceptable.

        `authorization` is the raw header (or gRPC metadata) value; `write` says whether the
        request changes the registry.
        """
        if not self.required(write=write):
            return
        if not authorization:
            raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != _SCHEME or not token:
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        given = _digest(token)
        # Compare with every token without stopping at a match, so the time taken does not say
        # which token (or whether any) matched.
        ok = False
        for known in self._digests:
            ok |= hmac.compare_digest(given, known)
        if not ok:
            raise Unauthenticated("the bearer token is not valid")


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
