"""Bearer-token write protection, shared by HTTP and gRPC. Tokens are compared in constant time
and never logged: errors say only that a token was missing or wrong."""

from __future__ import annotations

import hmac

from service_discovery.errors import Unauthenticated


class Auth:
    def __init__(self, tokens: frozenset[str], protect_reads: bool) -> None:
        self._tokens = [t.encode() for t in sorted(tokens)]
        self.enabled = bool(tokens)
        self.protect_reads = protect_reads and self.enabled

    def check(self, authorization: str | None, *, write: bool) -> None:
        """Raise Unauthenticated unless `authorization` ("Bearer <token>") is acceptable."""
        if not self.enabled or not (write or self.protect_reads):
            return
        if not authorization:
            raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        given = token.strip().encode()
        # compare against every token, without stopping early, so timing says nothing
        ok = False
        for known in self._tokens:
            ok |= hmac.compare_digest(given, known)
        if not ok:
            raise Unauthenticated("the bearer token is not valid")
