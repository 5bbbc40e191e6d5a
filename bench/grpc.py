"""Unary GetService over gRPC: the daemon against a minimal grpcio aio server that returns a
message of the same size, in the same run, with the same load.

1. Start the daemon (pinned to core 0 when taskset exists) on a scratch database and create one
   service over gRPC: PORTS named ports, a few attributes, ENDPOINTS endpoints.
2. Read that service's GetServiceResponse once; start the reference server (this file with
   `--reference`, also pinned to core 0, on uvloop like the daemon): the generated servicer
   answering every GetService with that message, prebuilt. That is the floor for any grpcio
   server sending a message of this size.
3. Load: WORKERS processes pinned to core 1 (never sharing the server's event loop), each with
   CHANNELS channels and CONCURRENCY calls in flight, for DURATION s and at most MAX_REQUESTS
   calls. The client sends pre-encoded requests and keeps responses as bytes, so its own CPU
   is spent on gRPC only. Targets alternate for ROUNDS rounds after a warm-up; the best round of
   each is kept. Print throughput, p50/p99 latency and daemon/reference throughput (target
   >= 0.7).
4. Idle watchers: WATCHERS Watch streams on the service from one process (core 1). Print the
   daemon's CPU use while they sit idle (against its idle CPU without them), its memory per
   stream, and the time from one write until every stream has the change.

Run: .venv/bin/python bench/grpc.py   (env DURATION=5 ROUNDS=3 WORKERS=1 CONCURRENCY=64)
Loopback only; the daemon and every process started here are stopped by PID; the database is
dropped.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# This file is bench/grpc.py: its folder must stay off sys.path, or `import grpc` finds it.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
_spec = importlib.util.spec_from_file_location("bench_common", _BENCH / "common.py")
assert _spec is not None and _spec.loader is not None
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)
ROOT, Daemon, free_port, scratch_database = (
    common.ROOT, common.Daemon, common.free_port, common.scratch_database
)  # fmt: skip
percentile, pin, cpu_seconds = common.percentile, common.pin, common.cpu_seconds
sys.path.insert(0, str(ROOT))  # service_discovery, when run from a checkout

import grpc  # noqa: E402

DURATION = float(os.environ.get("DURATION", "5"))
MAX_REQUESTS = int(os.environ.get("MAX_REQUESTS", "300000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
WORKERS = int(os.environ.get("WORKERS", "1"))
CHANNELS = int(os.environ.get("CHANNELS", "2"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "64"))
PORTS = int(os.environ.get("PORTS", "4"))
ENDPOINTS = int(os.environ.get("ENDPOINTS", "20"))
WATCHERS = int(os.environ.get("WATCHERS", "1000"))  # 0 skips the idle-watchers part
SERVER_CORE, CLIENT_CORE = 0, 1
METHOD = "/sd.DiscoveryService/GetService"
SERVICE = "bench-grpc"


# ---- the reference server ------------------------------------------------------------------
async def _reference(port: int, payload: bytes) -> None:
    """The minimal grpcio aio server: the generated servicer, one prebuilt GetServiceResponse
    (parsed from `payload`), serialised by grpcio per call as the daemon's answers are."""
    from service_discovery.proto import discovery_pb2 as pb
    from service_discovery.proto import discovery_pb2_grpc as pb_grpc

    answer = pb.GetServiceResponse.FromString(payload)

    class Minimal(pb_grpc.DiscoveryServiceServicer):
        async def GetService(  # type: ignore[override]
            self, request: pb.GetServiceRequest, context: grpc.aio.ServicerContext
        ) -> pb.GetServiceResponse:
            return answer

    server = grpc.aio.server(options=(("grpc.so_reuseport", 0),))
    pb_grpc.add_DiscoveryServiceServicer_to_server(Minimal(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def reference_main(port: int, payload_file: str) -> None:
    import uvloop

    uvloop.run(_reference(port, Path(payload_file).read_bytes()))


# ---- the load generator --------------------------------------------------------------------
async def _load(port: int, request: bytes, seconds: float, limit: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    sent = 0

    async def worker(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        nonlocal sent, errors
        while sent < limit and time.perf_counter() < deadline:
            sent += 1
            t0 = time.perf_counter()
            try:
                await call(request, timeout=10)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(CHANNELS)]
    try:
        # no (de)serializers: requests are pre-encoded and responses stay bytes
        calls = [ch.unary_unary(METHOD) for ch in channels]
        for ch in channels:
            await ch.channel_ready()
        started = time.perf_counter()
        await asyncio.gather(*(worker(calls[i % len(calls)]) for i in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    finally:
        for ch in channels:
            await ch.close()
    return {
        "count": len(latencies),
        "errors": errors,
        "elapsed": elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


def _load_process(
    port: int, request: bytes, seconds: float, limit: int, out: mp.Queue[dict[str, float]]
) -> None:
    import uvloop

    pin(CLIENT_CORE)
    out.put(uvloop.run(_load(port, request, seconds, limit)))


def run_load(port: int, request: bytes, seconds: float) -> dict[str, float]:
    """WORKERS load processes against one port; combined throughput and latency."""
    ctx = mp.get_context("spawn")
    out: mp.Queue[dict[str, float]] = ctx.Queue()
    procs = [
        ctx.Process(
            target=_load_process, args=(port, request, seconds, MAX_REQUESTS // WORKERS, out)
        )
        for _ in range(WORKERS)
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=seconds + 60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join()
    count = sum(r["count"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    return {
        "rps": count / elapsed,
        "count": count,
        "errors": sum(r["errors"] for r in results),
        "p50_ms": max(r["p50"] for r in results) * 1000,
        "p99_ms": max(r["p99"] for r in results) * 1000,
    }


# ---- idle watchers -------------------------------------------------------------------------
async def _watch(port: int, n: int, ready: Any, out: Any) -> None:
    from service_discovery.proto import discovery_pb2 as pb
    from service_discovery.proto import discovery_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        calls = [stub.Watch(pb.WatchRequest(service_name=SERVICE)) for _ in range(n)]
        for call in calls:
            await call.read()  # the snapshot: the stream is registered
        ready.set()

        async def changed(call: Any) -> float:
            await call.read()
            return time.time()

        # wall-clock times: the write is sent by the parent process on the same host
        out.put(await asyncio.wait_for(asyncio.gather(*(changed(c) for c in calls)), 60))
        for call in calls:
            call.cancel()


def _watch_process(port: int, n: int, ready: Any, out: Any) -> None:
    import uvloop

    pin(CLIENT_CORE)
    uvloop.run(_watch(port, n, ready, out))


def watchers(daemon: Any, n: int, idle: float = 3.0) -> dict[str, float]:
    """Daemon CPU while idle with and without `n` open Watch streams, memory per stream, and
    the time from one write to every stream having its message."""
    from service_discovery.proto import discovery_pb2 as pb
    from service_discovery.proto import discovery_pb2_grpc as pb_grpc

    pid = daemon.proc.pid
    before_cpu = cpu_seconds(pid)
    time.sleep(idle)
    idle_without = (cpu_seconds(pid) - before_cpu) / idle
    rss_before = daemon.rss_mib()
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_watch_process, args=(daemon.grpc_port, n, ready, out))
    proc.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("watchers did not start")
        time.sleep(0.5)
        before_cpu = cpu_seconds(pid)
        time.sleep(idle)
        idle_with = (cpu_seconds(pid) - before_cpu) / idle
        rss_after = daemon.rss_mib()
        with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            endpoint = pb.Endpoint(ip="10.99.0.1")
            sent = time.time()
            stub.RegisterEndpoint(
                pb.RegisterEndpointRequest(service_name=SERVICE, endpoint=endpoint)
            )
        delays = [t - sent for t in out.get(timeout=90)]
    finally:
        proc.join(timeout=10)
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
    return {
        "watchers": n,
        "idle_cpu_without": idle_without,
        "idle_cpu_with": idle_with,
        "kib_per_watcher": (rss_after - rss_before) * 1024 / n,
        "fanout_p50_ms": percentile(delays, 50) * 1000,
        "fanout_p99_ms": percentile(delays, 99) * 1000,
        "fanout_max_ms": max(delays) * 1000,
    }


# ---- the run -------------------------------------------------------------------------------
def _seed(port: int) -> tuple[bytes, bytes]:
    """Create the service; return (encoded GetServiceRequest, encoded GetServiceResponse)."""
    from service_discovery.proto import discovery_pb2 as pb
    from service_discovery.proto import discovery_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        ports = {f"port-{i}": pb.NamedPort(protocol="tcp", port=8000 + i) for i in range(PORTS)}
        attrs = {"team": "platform", "tier": "backend", "region": "eu-west-1"}
        stub.CreateService(
            pb.CreateServiceRequest(
                service=pb.Service(name=SERVICE, attributes=attrs, named_ports=ports)
            )
        )
        for i in range(ENDPOINTS):
            endpoint = pb.Endpoint(ip=f"10.0.{i // 250}.{i % 250 + 1}", tags=["v1", "canary"])
            stub.RegisterEndpoint(
                pb.RegisterEndpointRequest(service_name=SERVICE, endpoint=endpoint)
            )
        request = pb.GetServiceRequest(service_name=SERVICE)
        response = stub.GetService(request)
    return request.SerializeToString(), response.SerializeToString()


def _start_reference(port: int, payload_file: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--reference",
        str(port),
        str(payload_file),
    ]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(SERVER_CORE), *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    import tempfile

    with scratch_database() as url, tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(url, core=SERVER_CORE)
        reference: subprocess.Popen[bytes] | None = None
        try:
            daemon.wait_ready()
            print(daemon.settings())
            request, response = _seed(daemon.grpc_port)
            payload = Path(tmp) / "response.bin"
            payload.write_bytes(response)
            ref_port = free_port()
            reference = _start_reference(ref_port, payload)
            print(
                f"GetService response: {len(response)} bytes ({PORTS} ports, {ENDPOINTS} "
                f"endpoints); load: {WORKERS} process(es) x {CONCURRENCY} in flight over "
                f"{CHANNELS} channel(s), {DURATION:g}s per round (at most {MAX_REQUESTS} calls)"
            )
            targets = {"daemon": daemon.grpc_port, "reference": ref_port}
            for port in targets.values():  # warm-up: connections, code paths, caches
                run_load(port, request, min(1.0, DURATION))
            best: dict[str, dict[str, float]] = {}
            for round_no in range(1, ROUNDS + 1):
                for name, port in targets.items():
                    result = run_load(port, request, DURATION)
                    print(
                        f"round {round_no} {name:9s}: {result['rps']:8.0f} calls/s  "
                        f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                        f"({result['count']:.0f} calls, {result['errors']:.0f} errors)"
                    )
                    if name not in best or result["rps"] > best[name]["rps"]:
                        best[name] = result
            ratio = best["daemon"]["rps"] / best["reference"]["rps"]
            print(
                json.dumps(
                    {
                        "daemon_rps": round(best["daemon"]["rps"]),
                        "daemon_p99_ms": round(best["daemon"]["p99_ms"], 2),
                        "reference_rps": round(best["reference"]["rps"]),
                        "reference_p99_ms": round(best["reference"]["p99_ms"], 2),
                        "ratio": round(ratio, 3),
                        "target": 0.7,
                    }
                )
            )
            print(f"daemon/reference throughput: {ratio:.2f} (target >= 0.7)")
            if WATCHERS:
                w = watchers(daemon, WATCHERS)
                print(
                    f"{WATCHERS} idle Watch streams: daemon CPU {w['idle_cpu_with']:.1%} "
                    f"(without: {w['idle_cpu_without']:.1%}), ~{w['kib_per_watcher']:.1f} KiB "
                    f"each; one write reached all in p50 {w['fanout_p50_ms']:.1f} ms, "
                    f"p99 {w['fanout_p99_ms']:.1f} ms, max {w['fanout_max_ms']:.1f} ms"
                )
            return 0 if ratio >= 0.7 else 1
        finally:
            if reference is not None:
                _stop(reference)
            daemon.stop()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--reference":
        reference_main(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
