"""For the fault tests' proxies: reach the test PostgreSQL whether its URL names a TCP host or,
as the embedded server's does, a unix socket directory (`?host=/dir`)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit


async def open_upstream(database_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(database_url)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    port = parts.port or 5432
    if socket_dir.startswith("/"):
        return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port}")
    return await asyncio.open_connection(parts.hostname or "127.0.0.1", port)


def through(database_url: str, port: int) -> str:
    """`database_url` pointed at 127.0.0.1:`port` (the proxy), same user, password, database."""
    parts = urlsplit(database_url)
    auth = parts.netloc.rpartition("@")[0]
    query = {k: v for k, v in parse_qs(parts.query).items() if k != "host"}
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, doseq=True)))
