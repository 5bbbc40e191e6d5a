"""How a failed database call reaches a client and the log.

One map (`translate`) from SQLSTATEs and the driver's exceptions to typed registry errors. A
client learns the kind of failure and, for the RAISE messages of this project's own SQL
functions, their words; what PostgreSQL and the driver said (hosts, ports, constraint and index
names, values) is the error's `detail`, for the log only (`FailureLog`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import parse_qs, urlsplit

import asyncpg

from service_discovery.errors import (
    AlreadyExists,
    InvalidInput,
    LimitExceeded,
    NotFound,
    RegistryError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

UNAVAILABLE_ERRORS = (  # a lost, refused or timed-out call
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.PostgresConnectionError,
)
UNAVAILABLE = "the database is unavailable"  # all a client learns of an outage
_OUTAGE_LOG_INTERVAL = 10.0  # seconds between log lines about failing database calls


def database_address(url: str) -> str:
    """host:port/database of a PostgreSQL URL, without its credentials: for log lines."""
    parts = urlsplit(url)
    # The network location may list several hosts (host1:5432,host2:5432), which urlsplit's
    # hostname and port cannot read: take it apart by hand, dropping the credentials.
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        hosts = parse_qs(parts.query).get("host", ["localhost"])[0]
    return ",".join(_with_port(h) for h in hosts.split(",")) + parts.path


def _with_port(host: str) -> str:
    has_port = "]:" in host if host.startswith("[") else ":" in host  # [::1]:5432 or db:5432
    return host if has_port else f"{host}:5432"


def unavailable(exc: BaseException, where: str = "") -> StoreUnavailable:
    """The error for a lost, refused or timed-out database call; the database's address and
    the driver's words are its detail."""
    return StoreUnavailable(
        UNAVAILABLE, f"{where + ': ' if where else ''}{type(exc).__name__}: {exc}"
    )


def _ours(exc: asyncpg.PostgresError) -> str | None:
    """The message of a RAISE in this project's SQL functions (written for clients: "service
    'x' not found", "... (the limit)"), or None for PostgreSQL's own words."""
    return exc.message if exc.server_source_function == "exec_stmt_raise" else None


def translate(exc: Exception, where: str) -> RegistryError | None:
    """The typed error for a failed call to the database at `where` (None: not a database
    failure). The one map from SQLSTATEs and the driver's exceptions to what clients see."""
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return unavailable(exc, where)
    if not isinstance(exc, asyncpg.PostgresError):
        return None
    detail = f"{type(exc).__name__}: {exc}" + (f" {exc.detail}" if exc.detail else "")
    if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
        return AlreadyExists("already exists", detail)
    if isinstance(exc, asyncpg.exceptions.ForeignKeyViolationError):
        return NotFound("service not found", detail)
    if isinstance(exc, asyncpg.exceptions.NoDataFoundError):
        return NotFound(_ours(exc) or "not found", detail)
    if isinstance(exc, asyncpg.exceptions.ProgramLimitExceededError):
        return LimitExceeded(_ours(exc) or "a database limit was exceeded", detail)
    if isinstance(exc, asyncpg.exceptions.CheckViolationError | asyncpg.exceptions.DataError):
        return InvalidInput("rejected by the database: a value is outside what it accepts", detail)
    return None


class FailureLog:
    """Log lines for failing database calls: every failure the model should have prevented (a
    constraint the database enforces), but one line per interval for unavailability, with a
    count of the others (during an outage every write fails)."""

    def __init__(self) -> None:
        self._next = 0.0
        self._quiet = 0

    def __call__(self, error: RegistryError) -> None:
        if not isinstance(error, StoreUnavailable):
            if isinstance(error, InvalidInput | AlreadyExists):
                log.warning("database refused a write: %s", error)
            return
        now = time.monotonic()
        if now < self._next:
            self._quiet += 1
            return
        more = f" ({self._quiet} more since the last line)" if self._quiet else ""
        log.warning("database call failed: %s%s", error, more)
        self._next, self._quiet = now + _OUTAGE_LOG_INTERVAL, 0
