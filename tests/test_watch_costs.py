"""What watches cost the daemon is bounded, whatever the clients do: an answer is encoded once
and shared by every watcher released by one change (HTTP blocking queries, gRPC Watch streams),
open watches are capped in all as well as per client address, and no Watch message exceeds the
4 MiB a gRPC client accepts by default (a large state comes in pages).

How long the release of 500 watchers takes, and what it costs /healthz meanwhile:
bench/watches.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest
from helpers import eventually, put_ok, sample

from service_discovery.app import App, run_app
from service_discovery.config import Config
from service_discovery.grpc_codec import WatchMessages
from service_discovery.model import Endpoint, Service
from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc

CLIENT_LIMIT = 4 * 1024 * 1024  # gRPC's default max_receive_message_length
TIMEOUT = 10.0


def service(name: str, endpoints: int, *, tag_bytes: int = 0, version: int = 1) -> Service:
    tags = tuple(f"t{i}-" + "x" * 96 for i in range(tag_bytes // 100))
    eps = tuple(
        Endpoint(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", tags) for i in range(endpoints)
    )
    return Service(f"id-{name}", name, {"team": name}, {}, eps, version)


def joined(messages: list[pb.WatchResponse]) -> dict[str, pb.Service]:
    """The client's side of paging (protos/discovery.proto, WatchResponse.more): the pages' services
    in order, consecutive entries with one name joined into one service."""
    assert [m.more for m in messages] == [True] * (len(messages) - 1) + [False]
    assert len({(m.version, m.kind, m.service_name) for m in messages}) == 1
    services: dict[str, pb.Service] = {}
    order: list[str] = []
    for m in messages:
        for s in m.services:
            if order and order[-1] == s.name:
                services[s.name].endpoints.extend(s.endpoints)
            else:
                assert s.name not in services, f"{s.name} split, but not over consecutive entries"
                services[s.name] = s
                order.append(s.name)
    assert order == sorted(order, key=str.lower)
    return services


# ---- paging, as a pure function of the state ------------------------------------------------
@pytest.mark.parametrize("page_bytes", [600, 5_000, 1 << 20])
def test_watch_pages_reassemble_to_the_state(page_bytes: int) -> None:
    """1. a state of small services and one larger than a page; 2. every page stays under the
    page size (one endpoint's room aside); 3. joined back as the proto comment says, the pages
    are exactly the state."""
    state = [service("alpha", 3), service("big", 400, tag_bytes=200), service("gamma", 0)]
    sizes: list[int] = []
    pages = WatchMessages(sizes.append, page_bytes).state("snapshot", 7, state)
    messages = [pb.WatchResponse.FromString(p) for p in pages]
    assert sum(sizes) == sum(map(len, pages))
    assert all(len(p) <= page_bytes + 1_000 for p in pages)
    assert len(pages) == 1 if page_bytes == 1 << 20 else len(pages) > 1
    got = joined(messages)
    assert list(got) == ["alpha", "big", "gamma"]
    for svc in state:
        assert [e.ip for e in got[svc.name].endpoints] == [e.ip for e in svc.endpoints]
        assert dict(got[svc.name].attributes) == {"team": svc.name}
    assert {m.kind for m in messages} == {pb.SNAPSHOT} and {m.version for m in messages} == {7}


def test_an_empty_state_is_one_message() -> None:
    pages = WatchMessages(lambda _n: None).state("reload", 3, [])
    assert [pb.WatchResponse.FromString(p).more for p in pages] == [False]


# ---- gRPC Watch ---------------------------------------------------------------------------------
async def read_state(call: Any) -> list[pb.WatchResponse]:
    """The messages of one state (a snapshot or a resend), all its pages."""
    messages = []
    while True:
        msg = await asyncio.wait_for(call.read(), TIMEOUT)
        assert msg is not grpc.aio.EOF
        messages.append(msg)
        if not msg.more:
            return messages


async def test_a_snapshot_over_4_mib_comes_in_pages(
    make_config: Callable[..., Config], unique_name: str
) -> None:
    """1. the copy holds ~6 MB of services, one of them alone over a page; 2. a Watch on every
    service, through a channel with gRPC's default 4 MiB limit, gets its snapshot in pages
    (before: one message over the limit, RESOURCE_EXHAUSTED); 3. joined, they are the copy."""
    async with run_app(make_config()) as app:
        big = [service(f"{unique_name}-{i:02}", 300, tag_bytes=400, version=1) for i in range(50)]
        big.append(service(f"{unique_name}-huge", 4000, tag_bytes=300, version=1))
        for svc in big:
            app.registry.apply(app.registry.version, svc.key, svc)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            call = pb_grpc.DiscoveryServiceStub(channel).Watch(pb.WatchRequest())
            messages = await read_state(call)
            call.cancel()
        assert sum(m.ByteSize() for m in messages) > 1.5 * CLIENT_LIMIT
        assert max(m.ByteSize() for m in messages) < CLIENT_LIMIT
        got = joined(messages)
        for svc in big:
            assert len(got[svc.name].endpoints) == len(svc.endpoints), svc.name


async def test_streams_opened_at_one_version_share_the_snapshot(
    app: App, http: aiohttp.ClientSession, unique_name: str
) -> None:
    """1. ten Watch streams on every service at one version: the snapshot is encoded once;
    2. a change: the UPDATED message is encoded once, and every stream gets it; 3. a stream
    opened after the change gets a snapshot encoded anew, with the change in it."""
    await put_ok(http, "/service", {"name": unique_name})

    def encoded() -> float:
        return sample(app.metrics, "sd_grpc_watch_encoded_bytes_total")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        before = encoded()
        calls = [stub.Watch(pb.WatchRequest()) for _ in range(10)]
        snapshots = [await read_state(call) for call in calls]
        snapshot_bytes = sum(m.ByteSize() for m in snapshots[0])
        assert all(s == snapshots[0] for s in snapshots)
        assert encoded() - before == snapshot_bytes  # once, not ten times

        before = encoded()
        await put_ok(http, f"/service/{unique_name}/register", {"ip": "10.9.0.1"})
        updates = [await read_state(call) for call in calls]
        assert all(u == updates[0] for u in updates) and updates[0][0].kind == pb.UPDATED
        assert encoded() - before == updates[0][0].ByteSize()

        late = stub.Watch(pb.WatchRequest())
        fresh = joined(await read_state(late))
        assert [e.ip for e in fresh[unique_name].endpoints] == ["10.9.0.1"]
        for call in (*calls, late):
            call.cancel()


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
            await read_state(stream)
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
