"""Schema migrations with yoyo-migrations, from the SQL files shipped inside the package."""

from __future__ import annotations

import time
from pathlib import Path

from yoyo import get_backend, read_migrations
from yoyo.backends import DatabaseBackend

from service_discovery.errors import StoreUnavailable


def migrations_dir() -> Path:
    """The installed copy (wheel) or, in a source checkout, the top-level migrations/."""
    packaged = Path(__file__).parent / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def _backend(url: str) -> DatabaseBackend:
    try:
        return get_backend(url)
    except Exception as exc:  # psycopg2 raises its own OperationalError for refused connections
        raise StoreUnavailable("database unreachable", str(exc).strip()) from exc


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
