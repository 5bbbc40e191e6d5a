"""The database at start, for app.py: the embedded server or DATABASE_URL's, its migrations
checked (or applied), and the write pool opened in the background, retried until it opens.

A database that cannot be reached at start is not fatal: the sync retries, /ready stays 503
until the copy is loaded, and the pool opens once its migrations are checked and current.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from service_discovery import migrate
from service_discovery.config import Config
from service_discovery.embedded import EmbeddedPostgres
from service_discovery.errors import StoreUnavailable
from service_discovery.metrics import Metrics
from service_discovery.store import Store

log = logging.getLogger(__name__)

_POOL_RETRY_FIRST, _POOL_RETRY_MAX = 0.2, 5.0  # seconds between pool attempts: doubled, capped


class MigrationsPending(RuntimeError):
    """DATABASE_URL points at a database whose schema is behind this version."""


@dataclass
class Database:
    """Where the registry lives, as `prepare` found it."""

    url: str
    embedded: EmbeddedPostgres | None = None  # started by `prepare`, stopped by App.stop
    schema_unchecked: bool = False  # not reachable at start: `open_pool` checks it first


async def prepare(config: Config, *, migrate_first: bool) -> Database:
    """Start the embedded server (no DATABASE_URL) and apply its migrations, apply them to
    DATABASE_URL's (`migrate_first`), or check that none is pending there (MigrationsPending)."""
    if not config.database_url:
        embedded = EmbeddedPostgres(config.resolved_data_dir())
        url = await asyncio.to_thread(embedded.start)
        applied = await asyncio.to_thread(migrate.apply, url)
        if applied:
            log.info("embedded database: applied migrations %s", ", ".join(applied))
        return Database(url, embedded)
    url = config.database_url
    if migrate_first:  # as the schema owner (MIGRATE_DATABASE_URL) when there is one
        owner_url = config.migrate_database_url or url
        applied = await asyncio.to_thread(migrate.apply, owner_url)
        log.info("applied migrations: %s", ", ".join(applied) or "none pending")
        return Database(url)
    try:
        todo = await asyncio.to_thread(migrate.pending, url)
    except StoreUnavailable as exc:
        log.warning("cannot check migrations yet: %s", exc)
        return Database(url, schema_unchecked=True)
    if todo:
        raise MigrationsPending(
            f"the database has {len(todo)} pending migration(s) ({', '.join(todo)}): run "
            "'service-discovery migrate' first, or start with 'serve --migrate'"
        )
    return Database(url)


async def open_pool(store: Store, database: Database, metrics: Metrics) -> None:
    """Open the write pool, retried with backoff until it opens or the caller cancels this:
    whatever the failure (the server down, a wrong password, a database not created or not
    migrated yet), the next attempt may succeed. A reason is logged when it first appears."""
    delay, attempts, last = _POOL_RETRY_FIRST, 0, ""
    while True:
        attempts += 1
        try:
            if database.schema_unchecked:  # a pool on a schema that is behind fails every write
                if todo := await asyncio.to_thread(migrate.pending, database.url):
                    raise StoreUnavailable(
                        f"pending migrations {', '.join(todo)}: run 'service-discovery migrate'"
                    )
                database.schema_unchecked = False
            await store.open()
        except StoreUnavailable as exc:
            reason = str(exc)  # with its detail: the log is for operators
        except Exception as exc:
            log.exception("database pool: unexpected failure opening it")
            metrics.internal_errors.labels("pool").inc()
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if attempts > 1:
                log.info("database pool open after %d attempts: writes accepted", attempts)
            return
        level = logging.WARNING if reason != last else logging.DEBUG
        log.log(level, "database pool: cannot open (%s); writes answer 503 until it does; "
                "retrying every %.1fs at most", reason, _POOL_RETRY_MAX)  # fmt: skip
        last = reason
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, _POOL_RETRY_MAX)
