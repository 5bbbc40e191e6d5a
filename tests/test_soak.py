"""Soak: mixed load with registry churn against the daemon as a subprocess, printing its RSS and
open file descriptors over time; both must stay flat and the log must stay free of errors.

The default suite runs 30 s; `make slow` runs 10 minutes. Loopback only, bounded in count and
time; the daemon is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import aiohttp
import grpc
import pytest
from helpers import Daemon, dns_a

from service_discovery.proto import discovery_pb2 as pb
from service_discovery.proto import discovery_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio

STABLE = 20  # services that stay, with 5 endpoints each, for reads


def _usage(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def _soak(database_url: str, tmp_path: Path, seconds: float) -> None:
    """1. start the daemon; create STABLE services with ports and 5 endpoints each; 2. for
    `seconds`: readers (HTTP, DNS UDP, gRPC) on the stable services while churners create a
    service, register and deregister endpoints, and delete it again; sample RSS and fds every
    tenth of the run; 3. no request failed; 4. after the first fifth (warm-up: caches and
    pools fill), RSS grows by at most 20% + 8 MiB and fds by at most 16; 5. no error in the
    log."""
    daemon = Daemon(tmp_path / "soak.log", {"DATABASE_URL": database_url, "LOGGER_LEVEL": "info"})
    prefix = f"soak{random.randrange(10**6)}"
    failures: list[str] = []
    done = {"http": 0, "dns": 0, "grpc": 0, "churn": 0}
    try:
        daemon.start()
        await daemon.wait_ready()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        async with aiohttp.ClientSession(base_url=daemon.base) as http:
            for i in range(STABLE):
                name = f"{prefix}-s{i}"
                body = {"name": name, "named_ports": {"http": {"port": 8080}}}
                async with http.put("/service", json=body) as resp:
                    assert resp.status == 201
                for j in range(5):
                    path = f"/service/{name}/register"
                    async with http.put(path, json={"ip": f"10.5.{i}.{j + 1}"}) as resp:
                        assert resp.status == 200
        deadline = time.monotonic() + seconds

        async def guarded(kind: str, step: object) -> None:
            for _ in range(10_000_000):  # bounded by the deadline long before this
                if time.monotonic() >= deadline:
                    return
                try:
                    await asyncio.wait_for(step(), 10)  # type: ignore[operator]
                    done[kind] += 1
                except Exception as exc:  # every failure is the test's finding
                    failures.append(f"{kind}: {exc!r}"[:300])
                await asyncio.sleep(0.002)

        async with (
            aiohttp.ClientSession(base_url=daemon.base) as http,
            grpc.aio.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel,
        ):
            stub = pb_grpc.DiscoveryServiceStub(channel)

            async def http_read() -> None:
                name = f"{prefix}-s{random.randrange(STABLE)}"
                async with http.get(f"/service/{name}") as resp:
                    assert resp.status == 200
                    assert len((await resp.json())["endpoints"]) == 5

            async def dns_read() -> None:
                i = random.randrange(STABLE)
                assert len(await dns_a(daemon.dns_port, f"{prefix}-s{i}")) == 5

            async def grpc_read() -> None:
                name = f"{prefix}-s{random.randrange(STABLE)}"
                got = await stub.GetService(pb.GetServiceRequest(service_name=name), timeout=5)
                assert len(got.service.endpoints) == 5

            churn_ids = iter(range(10_000_000))

            async def churn() -> None:
                name = f"{prefix}-c{next(churn_ids)}"
                body = {"name": name, "named_ports": {"grpc": {"port": 9090}}}
                async with http.put("/service", json=body) as resp:
                    assert resp.status == 201, await resp.text()
                for j in range(3):
                    path = f"/service/{name}/register"
                    async with http.put(path, json={"ip": f"10.4.0.{j + 1}"}) as resp:
                        assert resp.status == 200, await resp.text()
                async with http.delete(f"/service/{name}/endpoints/10.4.0.1") as resp:
                    assert resp.status == 204
                async with http.delete(f"/service/{name}") as resp:
                    assert resp.status == 204

            samples: list[tuple[float, float, int]] = []

            async def sampler() -> None:
                started = time.monotonic()
                while time.monotonic() < deadline:
                    rss, fds = _usage(pid)
                    samples.append((time.monotonic() - started, rss, fds))
                    await asyncio.sleep(seconds / 10)

            tasks = [guarded("http", http_read) for _ in range(3)]
            tasks += [guarded("dns", dns_read) for _ in range(2)]
            tasks += [guarded("grpc", grpc_read)]
            tasks += [guarded("churn", churn) for _ in range(2)]
            await asyncio.wait_for(asyncio.gather(sampler(), *tasks), seconds + 60)
        samples.append((seconds, *_usage(pid)))

        print(f"\nsoak {seconds:.0f}s, requests: {done}")
        print("    t(s)   RSS(MiB)   fds")
        for t, rss, fds in samples:
            print(f"  {t:6.0f}   {rss:8.1f}   {fds:4d}")
        assert failures == [], failures[:10]
        assert min(done.values()) > 0, done
        warm = [s for s in samples if s[0] >= seconds / 5]
        base_rss, base_fds = warm[0][1], warm[0][2]
        assert max(s[1] for s in warm) <= base_rss * 1.2 + 8, samples
        assert max(s[2] for s in warm) <= base_fds + 16, samples
        daemon.kill(2)  # SIGINT: an orderly stop, so the log ends as in production
        assert await daemon.wait_exit(30) == 0
        log = daemon.log.read_text()
        bad = [ln for ln in log.splitlines() if " ERROR " in ln or "Traceback" in ln]
        assert bad == [], bad[:10]
    finally:
        daemon.stop()


async def test_soak_short(database_url: str, tmp_path: Path) -> None:
    await _soak(database_url, tmp_path, 30)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_soak_10_minutes(database_url: str, tmp_path: Path) -> None:
    await _soak(database_url, tmp_path, 600)
