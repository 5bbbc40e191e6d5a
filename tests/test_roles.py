"""Two database roles on the test server: a migration role that owns the schema and a runtime
role with only DML and LISTEN/NOTIFY (migrations/0010.runtime-role.sql grants it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psycopg2
import pytest
from helpers import eventually, put

from service_discovery import migrate
from service_discovery.app import run_app
from service_discovery.config import Config


def _as(url: str, user: str, database: str) -> str:
    parts = urlsplit(url)
    # the embedded server's URL has no host: its unix socket directory is in the query
    netloc = f"{user}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, path="/" + database))


@pytest.fixture
def roles(server_url: str) -> Iterator[tuple[str, str]]:
    """1. create the two roles (the README's SQL, with unique names; the runtime role's name
    given to the migration through the owner's sd.runtime_role setting) and a database owned
    by the migration role; yield (owner URL, runtime URL); drop everything afterwards."""
    tag = uuid.uuid4().hex[:10]
    owner, runtime, database = f"sd_migrate_{tag}", f"sd_runtime_{tag}", f"sd_roles_{tag}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    cur = admin.cursor()
    cur.execute(f"CREATE ROLE {owner} LOGIN")
    cur.execute(f"CREATE ROLE {runtime} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    cur.execute(f"ALTER ROLE {owner} SET sd.runtime_role = '{runtime}'")
    cur.execute(f"CREATE DATABASE {database} OWNER {owner}")
    cur.execute(f"REVOKE ALL ON DATABASE {database} FROM PUBLIC")
    cur.execute(f"GRANT CONNECT ON DATABASE {database} TO {runtime}")
    try:
        yield _as(server_url, owner, database), _as(server_url, runtime, database)
    finally:
        cur.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        cur.execute(f"DROP ROLE IF EXISTS {runtime}")
        cur.execute(f"DROP ROLE IF EXISTS {owner}")
        admin.close()


async def test_the_daemon_runs_as_the_runtime_role(
    roles: tuple[str, str], make_config: Callable[..., Config], unique_name: str
) -> None:
    """2. migrate as the owner; 3. two replicas run as the runtime role (the pending-migrations
    check reads the migration table); 4. writes, leases and NOTIFY/LISTEN work: a write on one
    replica reaches the other; 5. the runtime role cannot change the schema."""
    owner_url, runtime_url = roles
    assert migrate.apply(owner_url)
    config = make_config(database_url=runtime_url)
    async with run_app(config) as first, run_app(config) as second:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{first.http_port}") as http:
            assert (await put(http, "/service", {"name": unique_name})).status == 201
            body = {"ip": "10.7.0.1", "ttl_seconds": 30}
            assert (await put(http, f"/service/{unique_name}/register", body)).status == 200
            path = f"/service/{unique_name}/endpoints/10.7.0.1/heartbeat"
            assert (await put(http, path, None)).status == 200
        await eventually(
            lambda: (
                second.catalog.find(unique_name) is not None
                and len(second.catalog.get(unique_name).endpoints) == 1
            ),
            what="the write reaching the other replica",
        )
    conn = await asyncpg.connect(runtime_url)
    try:
        assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        for ddl in (
            "CREATE TABLE intruder (i int)",
            "DROP TABLE endpoints",
            "ALTER TABLE services ADD COLUMN x int",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "TRUNCATE endpoints",
            "DELETE FROM _yoyo_migration",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(ddl)
        await conn.execute("LISTEN sd_test_channel")
        await conn.execute("NOTIFY sd_test_channel")
    finally:
        await conn.close()


def test_migrate_uses_the_owner_url() -> None:
    owner_url, runtime_url = "postgresql://sd_migrate@db/sd", "postgresql://sd_runtime@db/sd"
    config = Config(database_url=runtime_url, migrate_database_url=owner_url)
    assert config.migration_url == owner_url
    assert Config(database_url=runtime_url).migration_url == runtime_url
