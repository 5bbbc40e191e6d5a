"""What watches cost the daemon is bounded, whatever the clients do: an answer is encoded once
and shared by every watcher released by one change, and open watches are capped in all as well
as per client address.

How long the release of 500 watchers takes, and what it costs /healthz meanwhile:
bench/watches.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
import grpc
import pytest
from helpers import eventually, put_ok, sample

from service_discovery.app import run_app
from service_discovery.config import Config
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc

TIMEOUT = 10.0


# ---- HTTP blocking queries -----------------------------------------------------------------------
async def test_watchers_released_by_one_write_share_one_listing(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """1. 50 blocking `/services` queries (half of them ?pretty) wait at the registry's index;
    2. one write releases them all, each with the new listing; 3. the listing was encoded once
    per layout for all 50 (sd_http_encoded_bytes), not once per watcher."""
    async with run_app(make_config()) as app:
        base = f"http://127.0.0.1:{app.http_port}"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(base_url=base, connector=connector) as http:
            for i in range(20):
                await put_ok(http, "/service", {"name": f"{unique_name}-{i}"})
            async with http.get("/services") as resp:
                index = int(resp.headers["X-Index"])

            async def watch(pretty: bool) -> tuple[int, bytes]:
                query = f"index={index}&wait=30s" + ("&pretty=true" if pretty else "")
                async with http.get(f"/services?{query}") as resp:
                    return int(resp.headers["X-Index"]), await resp.read()

            watchers = [asyncio.create_task(watch(i % 2 == 1)) for i in range(50)]
            await eventually(
                lambda: sample(app.metrics, "sd_http_blocking_queries") == 50, 20, "50 held"
            )
            before = sample(app.metrics, "sd_http_encoded_bytes_total")
            await put_ok(http, "/service", {"name": f"{unique_name}-new"})
            answers = await asyncio.wait_for(asyncio.gather(*watchers), 20)
            built = sample(app.metrics, "sd_http_encoded_bytes_total") - before
        compact = {body for i, (_, body) in enumerate(answers) if i % 2 == 0}
        pretty = {body for i, (_, body) in enumerate(answers) if i % 2 == 1}
        assert len(compact) == 1 and len(pretty) == 1
        assert len({i for i, _ in answers}) == 1 and answers[0][0] > index
        (compact_body,), (pretty_body,) = compact, pretty
        assert json.loads(compact_body) == json.loads(pretty_body)
        assert f"{unique_name}-new" in {s["name"] for s in json.loads(compact_body)}
        assert built == len(compact_body) + len(pretty_body)


async def test_open_watches_are_capped_in_all(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """1. SD_MAX_WATCHES=3, far under the per-address limit; 2. two blocking queries and a
    Watch stream are held; 3. a fourth watch, HTTP or gRPC, is refused (429 /
    RESOURCE_EXHAUSTED) naming the server-wide limit; 4. once one ends, a watch is admitted."""
    async with run_app(make_config(max_watches=3, max_watches_per_client=100)) as app:
        base = f"http://127.0.0.1:{app.http_port}"
        async with (
            aiohttp.ClientSession(base_url=base) as http,
            grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel,
        ):
            stub = pb_grpc.DiscoveryServiceStub(channel)
            await put_ok(http, "/service", {"name": unique_name})
            async with http.get(f"/service/{unique_name}") as resp:
                index = int(resp.headers["X-Index"])
            path = f"/service/{unique_name}?index={index}&wait=30s"

            async def hold() -> int:
                async with http.get(path) as resp:
                    return resp.status

            held = [asyncio.create_task(hold()) for _ in range(2)]
            stream = stub.Watch(pb.WatchRequest(service_name=unique_name))
            await asyncio.wait_for(stream.read(), TIMEOUT)
            await eventually(
                lambda: sample(app.metrics, "sd_http_blocking_queries") == 2, 10, "2 held"
            )
            async with http.get(path) as resp:
                assert resp.status == 429
                assert "at most 3 open watches on this server" in (await resp.json())["message"]
            refused = stub.Watch(pb.WatchRequest())
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await refused.read()
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "on this server" in (error.value.details() or "")

            stream.cancel()

            async def admitted() -> bool:
                async with http.get(path.replace("30s", "10ms")) as resp:
                    return resp.status == 200

            await eventually(admitted, 10, "a watch admitted again")
            for task in held:
                task.cancel()
