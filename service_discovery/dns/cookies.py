"""DNS cookies (RFC 7873): the COOKIE option a query carries, and the server cookie we answer.

This module owns making and checking server cookies. A server cookie is laid out as RFC 9018
describes: version 1, three reserved bytes, a 4-byte timestamp (seconds, serial arithmetic)
and an 8-byte hash of the client cookie, those 8 bytes and the client's address, keyed with
the secret. RFC 9018 hashes with SipHash-2-4, which the standard library does not offer; keyed
BLAKE2b is used instead, which is a MAC as well. Only our own replicas need to agree on it, and
they do when they share DNS_COOKIE_SECRET. A server cookie is valid for an hour (five minutes
into the future, for clocks apart) and renewed once it is half an hour old (RFC 9018 4.3).

What a valid cookie earns a client (exemption from response-rate limiting, full-size UDP
answers while limiting is on) is `handler`'s decision.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable

COOKIE = 10  # the EDNS option code
CLIENT_COOKIE_SIZE = 8
SERVER_COOKIE_SIZE = 16  # ours; RFC 7873 allows 8 to 32 bytes from other servers
_VERSION_1 = b"\x01\x00\x00\x00"  # version, then three reserved bytes
_VALID_SECONDS = 3600
_RENEW_SECONDS = 1800
_FUTURE_SECONDS = 300
_OPTION_HEAD = struct.Struct("!HH")  # option code, option length


class Cookies:
    """Makes and checks server cookies with one secret (DNS_COOKIE_SECRET, or random)."""

    __slots__ = ("_clock", "_secret")

    def __init__(self, secret: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret if secret is not None else os.urandom(16)
        self._clock = clock

    def _server_cookie(self, client_cookie: bytes, head: bytes, client: bytes) -> bytes:
        digest = hashlib.blake2b(client_cookie + head + client, key=self._secret, digest_size=8)
        return head + digest.digest()

    def answer(self, option: bytes, client: str | None) -> tuple[bytes, bool] | None:
        """For a query's COOKIE option data: (the COOKIE option to answer with, whether the
        query's server cookie is valid), or None if the option is malformed (FORMERR).

        The answer echoes the client cookie with a server cookie: the query's own while it is
        valid and fresh, else a new one for this client and this time.
        """
        size = len(option)
        if size != CLIENT_COOKIE_SIZE and not 16 <= size <= 40:  # RFC 7873 5.2.2
            return None
        client_cookie = option[:CLIENT_COOKIE_SIZE]
        address = (client or "").encode()
        now = int(self._clock())
        valid = False
        if size == CLIENT_COOKIE_SIZE + SERVER_COOKIE_SIZE and option[8:12] == _VERSION_1:
            stamp = int.from_bytes(option[12:16], "big")
            age = (now - stamp + (1 << 31)) % (1 << 32) - (1 << 31)  # serial arithmetic
            if -_FUTURE_SECONDS <= age <= _VALID_SECONDS:
                expected = self._server_cookie(client_cookie, option[8:16], address)
                valid = hmac.compare_digest(expected, option[8:])
                if valid and age <= _RENEW_SECONDS:
                    return _OPTION_HEAD.pack(COOKIE, size) + option, True
        head = _VERSION_1 + (now & 0xFFFFFFFF).to_bytes(4, "big")
        cookie = client_cookie + self._server_cookie(client_cookie, head, address)
        return _OPTION_HEAD.pack(COOKIE, len(cookie)) + cookie, valid
