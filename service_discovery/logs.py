"""Log lines: their format, and the secrets kept out of them.

Every line the daemon writes goes through `RedactingFormatter`, whoever logs it (this package,
aiohttp's server and access loggers, asyncpg): a token in a query string (`?token=...`, a Consul
habit) or in an Authorization header that a parser error quotes back is written as `***`.
"""

from __future__ import annotations

import logging
import re

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
