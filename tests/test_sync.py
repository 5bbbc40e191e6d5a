"""The registry copy stays fresh: LISTEN/NOTIFY between replicas, and reload after the LISTEN
connection is killed (notifications sent while it was down are lost, so it must reload)."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest
from helpers import eventually, sample

from service_discovery.app import App, run_app
from service_discovery.config import Config
from service_discovery.model import EndpointSpec, ServiceSpec

pytestmark = pytest.mark.asyncio


async def test_write_on_one_replica_reaches_the_other(
    app: App, make_config: Callable[..., Config], unique_name: str
) -> None:
    async with run_app(make_config()) as other:
        await app.catalog.create_service(ServiceSpec(unique_name))
        await app.catalog.register(unique_name, EndpointSpec("10.0.0.7", ("blue",)))
        await eventually(lambda: other.registry.is_live(unique_name, "10.0.0.7"))
        svc = other.registry.get(unique_name)
        assert svc is not None and svc.endpoints[0].tags == ("blue",)
        assert other.registry.index(unique_name) == app.registry.index(unique_name)


async def test_killed_listen_connection_reconnects_and_reloads(
    app: App, make_config: Callable[..., Config], database_url: str, unique_name: str
) -> None:
    """1. kill the LISTEN backend; 2. write while it is down (that NOTIFY is lost to it);
    3. the replica reconnects, reloads, and has the write; 4. later changes still arrive."""
    async with run_app(make_config()) as victim:
        reconnects = sample(victim.metrics, "sd_sync_listen_reconnects_total")
        pid = victim.sync.listen_pid()
        admin = await asyncpg.connect(database_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await app.catalog.create_service(ServiceSpec(unique_name))
        finally:
            await admin.close()
        await eventually(lambda: victim.registry.get(unique_name) is not None, timeout=10)
        await eventually(
            lambda: sample(victim.metrics, "sd_sync_listen_reconnects_total") > reconnects
        )
        assert victim.sync.listen_pid() != pid
        await app.catalog.register(unique_name, EndpointSpec("10.0.0.8"))
        await eventually(lambda: victim.registry.is_live(unique_name, "10.0.0.8"))
