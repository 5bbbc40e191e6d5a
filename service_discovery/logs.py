"""Log lines: their format, and the secrets kept out of them.

Every line the daemon writes goes through `RedactingFormatter`, whoever logs it (this package,
aiohttp's server and access loggers, asyncpg): a token in a query string (`?token=...`, a Consul
habit) or in an Authorization header that a parser error quotes back is written as `***`.
`MalformedRequests` keeps a client that sends garbage from flooding the log.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# `token=` as a query parameter (also `access_token=`, `X-Consul-Token=`), and the credentials
# of an Authorization header (`Authorization: Bearer <token>`, or gRPC's ('authorization',
# 'Bearer <token>')). A value ends where a URL's query value or a quoted header line does.
_SECRET = re.compile(
    r"(?i)(\b[\w-]*token=|\bauthorization['\"]?[:,]\s*['\"]?(?:bearer|basic)\s+)[^&\s\"'<>#\\]+"
)


def redact(text: str) -> str:
    """`text` with the value of every token it quotes replaced by ***."""
    return _SECRET.sub(r"\1***", text)


class RedactingFormatter(logging.Formatter):
    """A Formatter whose whole output (message, exception, stack) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class MalformedRequests(logging.Filter):
    """For aiohttp's server logger, which logs every request it cannot parse at ERROR with a
    traceback: such a record becomes one WARNING line (the peer and the parser's complaint,
    which quotes the bad line), at most one per `interval` seconds; the next line that is
    written says how many were left out meanwhile. Not installed at LOGGER_LEVEL=debug."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = self._clock()
        if now < self._next:
            self._left_out += 1
            return False
        self._next = now + self._interval
        lines = (line.strip() for line in str(exc).splitlines())
        complaint = " ".join(line for line in lines if line.strip("^"))
        more = f" ({self._left_out} more left out)" if self._left_out else ""
        self._left_out = 0
        record.msg, record.args = f"{record.getMessage()}: {complaint}{more}", None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True
