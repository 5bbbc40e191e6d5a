"""HTTP read throughput against a minimal aiohttp reference, and registrations per second.

1. Start the daemon (one core) on a scratch database; create a service with 5 endpoints.
2. Start a minimal aiohttp server (same core, uvloop, no access log) returning a body of the
   same size.
3. wrk (one thread, 50 connections, pinned to the other core) against each for DURATION s,
   alternating ROUNDS times;
   print requests/s, p99 and the ratio. Target: ratio >= 0.7.
4. 50 concurrent clients register N endpoints; print registrations/s.

Run: .venv/bin/python bench/http_bench.py   (env DURATION=10 REGISTRATIONS=5000)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, Daemon, ensure_apt, free_port, register_many, scratch_database

DURATION = int(os.environ.get("DURATION", "5"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
REGISTRATIONS = int(os.environ.get("REGISTRATIONS", "5000"))
SERVER_CORE, CLIENT_CORE = 0, 1

REFERENCE = """
import sys, uvloop
from aiohttp import web
body = open(sys.argv[2], "rb").read()
async def handler(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/service/{name}", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            loop=uvloop.new_event_loop())
"""


def put(url: str, body: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status in (200, 201), r.status


def wrk(url: str) -> tuple[float, float]:
    cmd = ["wrk", "-t1", "-c50", f"-d{DURATION}s", "--latency", url]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(CLIENT_CORE), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} errors against {url}")
    return rps, p99_ms


def main() -> None:
    ensure_apt("wrk")
    with scratch_database() as url:
        daemon = Daemon(url, core=SERVER_CORE)
        ref = None
        try:
            daemon.wait_ready()
            print(daemon.settings())
            put(daemon.base + "/service", {"name": "webapp", "attributes": {"attr-1": "value-1"}})
            put(daemon.base + "/service/webapp/ports", {"http": {"protocol": "tcp", "port": 8000}})
            for i in range(5):
                put(daemon.base + "/service/webapp/register", {"ip": f"10.0.0.{i + 1}"})
            with urllib.request.urlopen(daemon.base + "/service/webapp") as r:
                body = r.read()
            body_file = Path(f"/tmp/sd-bench-body-{os.getpid()}.json")
            body_file.write_bytes(body)
            port = free_port()
            ref = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CORE), PY, "-c", REFERENCE, str(port), str(body_file)]
            )
            time.sleep(1.0)
            # Alternate the two, ROUNDS times, and take the medians: this machine's speed drifts.
            runs_ours, runs_theirs = [], []
            for _ in range(ROUNDS):
                runs_ours.append(wrk(daemon.base + "/service/webapp"))
                runs_theirs.append(wrk(f"http://127.0.0.1:{port}/service/webapp"))
            ours = tuple(statistics.median(r[i] for r in runs_ours) for i in (0, 1))
            theirs = tuple(statistics.median(r[i] for r in runs_theirs) for i in (0, 1))
            # each round's pair ran back to back, so its ratio is the least disturbed by drift
            pair_ratios = [o[0] / t[0] for o, t in zip(runs_ours, runs_theirs, strict=True)]
            print(f"GET /service/{{name}}, body {len(body)} bytes, wrk -t1 -c50 -d{DURATION}s, "
                  f"median of {ROUNDS} alternating rounds, servers pinned to one core")  # fmt: skip
            print(f"  service-discovery : {ours[0]:10.0f} req/s  p99 {ours[1]:7.2f} ms")
            print(f"  minimal aiohttp   : {theirs[0]:10.0f} req/s  p99 {theirs[1]:7.2f} ms")
            print(f"  ratio of medians  : {ours[0] / theirs[0]:.2f}")
            print(f"  per-round ratios  : {', '.join(f'{r:.2f}' for r in pair_ratios)}")
            print(f"  median ratio      : {statistics.median(pair_ratios):.2f}  (target >= 0.7)")
            put(daemon.base + "/service", {"name": "regbench"})
            targets = [
                ("regbench", f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}")
                for i in range(REGISTRATIONS)
            ]
            rate = asyncio.run(register_many(daemon.base, targets, timeout=300))
            print(f"PUT /service/{{name}}/register, 50 concurrent clients, {REGISTRATIONS} "
                  f"endpoints: {rate:.0f} registrations/s")  # fmt: skip
            print(f"daemon peak RSS: {daemon.peak_rss_mib():.1f} MiB")
            body_file.unlink()
        finally:
            if ref is not None:
                ref.terminate()
                ref.wait()
            daemon.stop()


if __name__ == "__main__":
    main()
