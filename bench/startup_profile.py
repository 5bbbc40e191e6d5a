"""Where loading the copy spends its time, in this process (no daemon, no probes): the same
snapshot read three times, each step adding one stage.

1. fetch: the rows through the cursors (PostgreSQL, the wire, asyncpg's decoding), nothing built;
2. + objects: `reads.stream_snapshot` (model objects: Endpoint, NamedPort, Service);
3. + registry: `Sync`'s load into a fresh registry copy (indexes, leases, announcements).
Each stage's share is the difference to the one before. PROFILE=1 prints the top functions of
stage 3 (cProfile).

Run: .venv/bin/python bench/startup_profile.py URL   (a database loaded as bench/startup.py does;
env DB_SNAPSHOT_CHUNK_ROWS as the daemon's).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import os
import pstats
import sys
import time

from service_discovery.config import Config
from service_discovery.metrics import Metrics
from service_discovery.reads import (
    _ALL_ENDPOINTS_SQL,
    _PORTS_SQL,
    _SERVICES_SQL,
    connect,
    stream_snapshot,
)
from service_discovery.registry import Registry
from service_discovery.sync import Sync


async def fetch_only(url: str, config: Config) -> int:
    conn = await connect(url, config.db_timeout_seconds)
    n = 0
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for sql in (
                _SERVICES_SQL.format(where=""),
                _PORTS_SQL.format(where=""),
                _ALL_ENDPOINTS_SQL,
            ):
                cursor = await conn.cursor(sql)
                while rows := await cursor.fetch(config.db_snapshot_chunk_rows):
                    n += len(rows)
    finally:
        await conn.close()
    return n


async def objects(url: str, config: Config) -> int:
    conn = await connect(url, config.db_timeout_seconds)
    n = 0
    try:
        chunks = stream_snapshot(conn, config.db_snapshot_chunk_rows, config.db_timeout_seconds)
        async for _version, services in chunks:
            n += sum(len(s.endpoints) for s in services)
            gc.freeze()  # as the sync does
    finally:
        await conn.close()
    return n


async def registry(url: str, config: Config) -> int:
    copy = Registry(config)
    sync = Sync(config, url, copy, Metrics())
    conn = await connect(url, config.db_timeout_seconds)
    try:
        await sync._load(conn)
    finally:
        await conn.close()
        copy.close()
    return copy.endpoint_count()


def timed(what: str, step: object) -> float:
    started = time.perf_counter()
    cpu = time.process_time()
    n = asyncio.run(step)  # type: ignore[arg-type]
    took, used = time.perf_counter() - started, time.process_time() - cpu
    print(f"  {what:30} {took:6.2f}s wall  {used:6.2f}s CPU here  ({n} rows/endpoints)")
    return took


def main() -> None:
    url = sys.argv[1]
    config = Config.from_env({**os.environ, "DATABASE_URL": url})
    print(f"load stages, DB_SNAPSHOT_CHUNK_ROWS={config.db_snapshot_chunk_rows}:")
    timed("1. fetch (rows only)", fetch_only(url, config))
    timed("2. + model objects", objects(url, config))
    if os.environ.get("PROFILE"):
        prof = cProfile.Profile()
        prof.enable()
        timed("3. + registry copy (profiled)", registry(url, config))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    else:
        timed("3. + registry copy", registry(url, config))


if __name__ == "__main__":
    main()
