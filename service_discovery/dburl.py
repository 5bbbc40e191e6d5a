"""PostgreSQL connection URLs: the one check every command applies, so that a URL `serve`
accepts is a URL `migrate` accepts, and a malformed one stops start-up as a bad setting (exit 2)
instead of surfacing later as "database unreachable".

Both drivers read libpq's URI syntax: asyncpg (serve) and libpq itself through psycopg2 (the
migrations), including several hosts (`host1:5432,host2:5432`), `target_session_attrs`,
`sslmode`/`sslrootcert` and unix sockets (`?host=/run/postgresql`). Messages never repeat the
password.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

SCHEMES = ("postgresql", "postgres")


class BadUrl(ValueError):
    """The URL cannot name a PostgreSQL server; the message says why, without the password."""


def _ports(raw: str) -> list[str]:
    ports = raw.split(",")
    for port in ports:
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise BadUrl("every port must be an integer from 1 to 65535")
    return ports


def check(url: str) -> str:
    """The URL itself if libpq and asyncpg can both use it; BadUrl otherwise."""
    from psycopg2 import ProgrammingError
    from psycopg2.extensions import parse_dsn

    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise BadUrl("the scheme must be postgresql:// (or postgres://)")
    try:
        params = parse_dsn(url)
    except ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unparseable"
        for secret in {parts.password, unquote(parts.password or "")} - {None, ""}:
            reason = reason.replace(str(secret), "***")
        raise BadUrl(reason) from None
    hosts = params.get("host", "").split(",")
    ports = _ports(params.get("port", ""))
    if len(ports) not in (1, len(hosts)):
        raise BadUrl(f"{len(hosts)} hosts but {len(ports)} ports (give one port, or one each)")
    return url
