"""Schema migrations with yoyo-migrations, from the SQL files shipped inside the package.

yoyo parses URLs itself and cannot read several hosts (`host1:5432,host2:5432`), so its
PostgreSQL backend is handed a connection that libpq opened from the whole URL: the same hosts,
`target_session_attrs`, `sslmode` and sockets that `serve` uses, the primary found the same way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from yoyo import read_migrations
from yoyo.backends import DatabaseBackend
from yoyo.backends.core.postgresql import PostgresqlBackend
from yoyo.connections import DatabaseURI
from yoyo.migrations import default_migration_table

from service_discovery import dburl
from service_discovery.config import ConfigError
from service_discovery.errors import StoreUnavailable


def migrations_dir() -> Path:
    """The installed copy (wheel) or, in a source checkout, the top-level migrations/."""
    packaged = Path(__file__).parent / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


class _LibpqBackend(PostgresqlBackend):  # type: ignore[misc]
    """yoyo's PostgreSQL backend on a connection libpq opens from the URL as written (carried
    in the DatabaseURI's args: yoyo copies a backend with the URI it was made with)."""

    def connect(self, dburi: Any) -> Any:
        connection = self.driver.connect(dburi.args["dsn"])
        connection.autocommit = True  # as yoyo does: it opens its transactions explicitly
        return connection


def _backend(url: str) -> DatabaseBackend:
    try:
        dburl.check(url)
    except dburl.BadUrl as exc:
        raise ConfigError(f"the database URL is invalid: {exc}") from None
    import psycopg2

    try:
        dburi = DatabaseURI("postgresql", None, None, None, None, None, {"dsn": url})
        backend = _LibpqBackend(dburi, default_migration_table)
    except psycopg2.Error as exc:  # refused, timed out, no read-write host, bad password
        raise StoreUnavailable("database unreachable", str(exc).strip()) from exc
    try:
        backend.init_database()  # yoyo's own tables
    except psycopg2.Error as exc:
        backend.connection.close()
        raise StoreUnavailable("database error", str(exc).strip()) from exc
    return backend


def pending(url: str) -> list[str]:
    """Ids of migrations not yet applied."""
    backend = _backend(url)
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(migrations_dir())))]
    finally:
        backend.connection.close()


def apply(url: str) -> list[str]:
    """Apply every pending migration (under yoyo's lock); returns the ids applied."""
    backend = _backend(url)
    try:
        migrations = read_migrations(str(migrations_dir()))
        with backend.lock():
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
        return [m.id for m in todo]
    finally:
        backend.connection.close()


def wait_until_current(url: str, wait_seconds: float) -> list[str]:
    """Poll until no migration is pending or the wait ends; returns what is still pending.

    An unreachable database counts as "not yet", so an init container can start before it.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            todo = pending(url)
        except StoreUnavailable:
            if time.monotonic() >= deadline:
                raise
            todo = None
        if todo == []:
            return []
        if time.monotonic() >= deadline:
            return todo or []
        time.sleep(1.0)
