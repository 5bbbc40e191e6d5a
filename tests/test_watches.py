"""HTTP blocking queries (Consul-style `?index=N&wait=...`): they return at once when the index
is past N, else on a change or when the wait ends; every read reports X-Index; the index of a
service moves only when that service changes; a thousand watchers are held and released.

How fast (change -> answer, wait overshoot, idle CPU of waiting watchers) is bench/watches.py's
question: wall-clock budgets here would fail a correct daemon on a loaded machine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest
from helpers import eventually, put_ok, sample

from service_discovery.app import run_app
from service_discovery.config import Config

pytestmark = pytest.mark.asyncio


async def index_of(http: aiohttp.ClientSession, path: str) -> int:
    async with http.get(path) as resp:
        await resp.read()
        return int(resp.headers["X-Index"])


async def timed_get(http: aiohttp.ClientSession, path: str) -> tuple[int, int, dict, float]:
    """(status, X-Index, body, seconds taken) of one GET."""
    started = time.monotonic()
    async with http.get(path) as resp:
        body = await resp.json()
        return resp.status, int(resp.headers["X-Index"]), body, time.monotonic() - started


async def still_waiting(task: asyncio.Task, seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return not task.done()


async def test_blocking_read_returns_on_change(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    """1. read the service and its X-Index; 2. a blocking read at that index waits; 3. a
    registration releases it, with the new endpoint and a larger X-Index, long before its wait
    would end."""
    await put_ok(http, "/service", {"name": unique_name})
    index = await index_of(http, f"/service/{unique_name}")
    path = f"/service/{unique_name}?index={index}&wait=10s"
    blocked = asyncio.create_task(timed_get(http, path))
    assert await still_waiting(blocked, 0.3)
    await put_ok(http, f"/service/{unique_name}/register", {"ip": "10.7.0.1"})
    status, new_index, body, _ = await asyncio.wait_for(blocked, 2)
    assert status == 200 and new_index > index
    assert [e["ip"] for e in body["endpoints"]] == ["10.7.0.1"]
    assert body["index"] == new_index


async def test_blocking_read_times_out_with_the_same_index(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    await put_ok(http, "/service", {"name": unique_name})
    index = await index_of(http, f"/service/{unique_name}")
    status, same, _, took = await timed_get(
        http, f"/service/{unique_name}?index={index}&wait=300ms"
    )
    assert status == 200 and same == index
    assert 0.3 <= took


async def test_past_index_returns_at_once(http: aiohttp.ClientSession, unique_name: str) -> None:
    await put_ok(http, "/service", {"name": unique_name})
    index = await index_of(http, f"/service/{unique_name}")
    for path in (
        f"/service/{unique_name}?index={index - 1}&wait=10s",
        "/services?index=0&wait=10s",
    ):
        status, _, _, took = await timed_get(http, path)
        assert status == 200 and took < 10, path  # not held for its wait


async def test_service_index_moves_only_when_that_service_changes(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    """1. two services; 2. a blocking read on A is not released by changes to B, and A's index
    stays; 3. the registry listing's index moves with every change; 4. a change to A releases
    the read on A."""
    a, b = unique_name, unique_name + "-b"
    await put_ok(http, "/service", {"name": a})
    await put_ok(http, "/service", {"name": b})
    index_a = await index_of(http, f"/service/{a}")
    listing = await index_of(http, "/services")
    blocked = asyncio.create_task(timed_get(http, f"/service/{a}?index={index_a}&wait=10s"))
    await put_ok(http, f"/service/{b}/register", {"ip": "10.7.1.1"})
    await put_ok(http, f"/service/{b}/ports", {"http": {"port": 80}})
    assert await still_waiting(blocked, 0.3)
    assert await index_of(http, f"/service/{a}") == index_a
    assert await index_of(http, "/services") >= listing + 2
    assert await index_of(http, f"/service/{b}") > index_a
    await put_ok(http, f"/service/{a}/register", {"ip": "10.7.1.2"})
    status, new_a, _, _ = await asyncio.wait_for(blocked, 2)
    assert status == 200 and new_a > index_a


async def test_listing_blocks_on_registry_changes_only(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    """A blocking listing returns when a service is created, not when a lease is renewed."""
    await put_ok(http, "/service", {"name": unique_name})
    await put_ok(http, f"/service/{unique_name}/register", {"ip": "10.7.2.1", "ttl_seconds": 30})
    version = await index_of(http, "/services")
    blocked = asyncio.create_task(timed_get(http, f"/services?index={version}&wait=10s"))
    async with http.put(f"/service/{unique_name}/endpoints/10.7.2.1/heartbeat") as resp:
        assert resp.status == 200
    assert await still_waiting(blocked, 0.3)
    await put_ok(http, "/service", {"name": unique_name + "-new"})
    status, new_version, body, _ = await asyncio.wait_for(blocked, 2)
    assert status == 200 and new_version > version
    assert unique_name + "-new" in {s["name"] for s in body}


async def test_lapse_and_heartbeats(make_config: Callable[..., Config], unique_name: str) -> None:
    """1. heartbeats (which move no index) do not release a blocking read; 2. the lease lapsing
    in memory does, before its wait ends, without the endpoint and with the same index (the row
    is not reaped yet); 3. reaping it moves the index."""
    async with run_app(make_config(lease_reap_interval_seconds=3600)) as app:
        base = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            await put_ok(http, "/service", {"name": unique_name})
            await put_ok(
                http, f"/service/{unique_name}/register", {"ip": "10.7.3.1", "ttl_seconds": 1}
            )
            await put_ok(http, f"/service/{unique_name}/register", {"ip": "10.7.3.2"})
            index = await index_of(http, f"/service/{unique_name}")

            path = f"/service/{unique_name}?index={index}&wait=800ms"
            blocked = asyncio.create_task(timed_get(http, path))
            expires_at = 0.0
            while not blocked.done():
                url = f"/service/{unique_name}/endpoints/10.7.3.1/heartbeat"
                async with http.put(url) as resp:
                    assert resp.status == 200
                    expires_at = (await resp.json())["expires_at"]
                await asyncio.sleep(0.2)
            _, same, _, took = blocked.result()
            assert same == index and took >= 0.8  # released by the timeout only

            status, same, body, took = await timed_get(
                http, f"/service/{unique_name}?index={index}&wait=5s"
            )
            assert status == 200 and same == index
            assert [e["ip"] for e in body["endpoints"]] == ["10.7.3.2"]
            assert expires_at <= time.time() and took < 5  # released by the lapse, not the wait

            await app.leases.reap_once()

            async def index_moved() -> bool:  # once the reap's notification is back
                return await index_of(http, f"/service/{unique_name}") > index

            await eventually(index_moved, what="the index moved after the reap")


async def test_deleted_service_reports_its_index(
    http: aiohttp.ClientSession, unique_name: str
) -> None:
    """A deletion releases a blocking read with 404 and an X-Index, and a blocking read at that
    index then waits instead of spinning."""
    await put_ok(http, "/service", {"name": unique_name})
    index = await index_of(http, f"/service/{unique_name}")
    blocked = asyncio.create_task(timed_get(http, f"/service/{unique_name}?index={index}&wait=10s"))
    assert await still_waiting(blocked, 0.2)
    async with http.delete(f"/service/{unique_name}") as resp:
        assert resp.status == 204
    status, tombstone, body, _ = await asyncio.wait_for(blocked, 2)
    assert status == 404 and body["error"] == "not_found" and tombstone > index
    status, same, _, took = await timed_get(
        http, f"/service/{unique_name}?index={tombstone}&wait=300ms"
    )
    assert status == 404 and same == tombstone and took >= 0.3


@pytest.mark.parametrize(
    "query", ["index=abc", "index=-1", "index=1&wait=soon", "index=1&wait=-1s"]
)
async def test_bad_blocking_parameters(http: aiohttp.ClientSession, query: str) -> None:
    async with http.get(f"/services?{query}") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_input"


async def test_wait_is_capped_and_jittered(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """1. a wait longer than SD_WATCH_MAX_WAIT_SECONDS ends at the cap, not before it and long
    before the wait asked for; 2. watchers that started together end spread out by the jitter.
    (How close to the cap plus 1/16: bench/watches.py.)"""
    cap = 1.6
    async with run_app(make_config(watch_max_wait_seconds=cap)) as app:
        base = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(
            base_url=base, connector=aiohttp.TCPConnector(limit=0)
        ) as http:
            await put_ok(http, "/service", {"name": unique_name})
            index = await index_of(http, f"/service/{unique_name}")
            path = f"/service/{unique_name}?index={index}&wait=10m"
            results = await asyncio.gather(*(timed_get(http, path) for _ in range(20)))
            took = sorted(r[3] for r in results)
            assert took[0] >= cap and took[-1] < 60, took  # 10 minutes asked
            # without jitter, 20 timers set together fire within a few milliseconds
            assert took[-1] - took[0] > 0.03, took


async def test_thousand_watchers_released_by_one_change(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """1. 1,000 blocking reads on one service, all held (the gauge says so); 2. one registration
    releases every one of them with the new index. (The CPU they cost while they wait, and how
    soon they are answered: bench/watches.py and bench/leases.py.)"""
    count = 1000
    async with run_app(make_config(max_watches_per_client=count + 10)) as app:
        base = f"http://127.0.0.1:{app.http_port}"
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(
            base_url=base, connector=connector, timeout=timeout
        ) as http:
            await put_ok(http, "/service", {"name": unique_name})
            index = await index_of(http, f"/service/{unique_name}")
            path = f"/service/{unique_name}?index={index}&wait=30s"
            watchers = [asyncio.create_task(timed_get(http, path)) for _ in range(count)]

            def held() -> float:
                return sample(app.metrics, "sd_http_blocking_queries")

            await eventually(lambda: held() >= count, 20, f"{count} watchers held")
            await put_ok(http, f"/service/{unique_name}/register", {"ip": "10.7.4.1"})
            results = await asyncio.wait_for(asyncio.gather(*watchers), 20)
            assert all(r[0] == 200 and r[1] > index for r in results)
            assert all(r[2]["endpoints"][0]["ip"] == "10.7.4.1" for r in results)
            assert held() == 0


async def test_shutdown_answers_blocked_reads(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """Stopping the server answers a blocked read (with its index) instead of holding shutdown
    until the read's wait ends."""
    async with aiohttp.ClientSession() as http:
        async with run_app(make_config()) as app:
            base = f"http://127.0.0.1:{app.http_port}"
            await put_ok(http, base + "/service", {"name": unique_name})
            index = await index_of(http, f"{base}/service/{unique_name}")
            blocked = asyncio.create_task(
                timed_get(http, f"{base}/service/{unique_name}?index={index}&wait=30s")
            )
            assert await still_waiting(blocked, 0.2)
        status, same, _, took = await asyncio.wait_for(blocked, 2)
        assert status == 200 and same == index and took < 30  # not held for its wait


async def test_a_client_that_goes_away_frees_its_watch(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """A blocking read whose client disconnects (a client-side timeout) stops waiting at once:
    it no longer counts against the client's watch limit or holds memory until its wait ends."""
    async with run_app(make_config(max_watches_per_client=1)) as app:
        base = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            await put_ok(http, "/service", {"name": unique_name})
            index = await index_of(http, f"/service/{unique_name}")
            path = f"/service/{unique_name}?index={index}&wait=30s"
            with pytest.raises(asyncio.TimeoutError):
                await http.get(path, timeout=aiohttp.ClientTimeout(total=0.3))
            await eventually(
                lambda: sample(app.metrics, "sd_http_blocking_queries") == 0,
                2,
                "the abandoned watch released",
            )
            status, *_ = await timed_get(http, path.replace("30s", "100ms"))
            assert status == 200  # not 429: the slot is free again
