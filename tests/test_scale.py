"""CI's short version of the scale bench: bench/scale.py end to end on a small registry with
three replicas (issue 18's million endpoints on ten replicas is `SERVICES=100000 make
bench-scale`). It checks that the bench still runs and that its correctness parts hold, not its
speed: every write reaches every replica, the other replicas answer every query while one
restarts, the rolling replacement's calls succeed and its queries are answered."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_scale_bench_runs_small(server_url: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": server_url,
        "SERVICES": "300",
        "PER_SERVICE": "3",
        "DURATION": "1",
        "ROUNDS": "1",
        "REPLICAS": "3",
        "WRITES": "50",
        "REGISTRATIONS": "200",
        "CHURN_SECONDS": "3",
        "QUERY_QPS": "300",
        "IDLE_SECONDS": "1",
    }
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py")],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    out = res.stdout + res.stderr
    if res.returncode != 0 and "apt-get" in out and "dnsperf" in out:
        pytest.fail(f"dnsperf could not be installed:\n{out[-3000:]}")
    assert res.returncode == 0, out[-5000:]
    text = res.stdout
    assert re.search(r"300 services: ready\s+[\d.]+s", text), text
    assert re.search(r"/healthz while loading: \d+ answers, .* \d+ errors$", text, re.M), text
    assert re.search(r"memory per endpoint .*: \d+ bytes loaded, \d+ bytes", text), text
    assert len(re.findall(r"ratio large/small: [\d.]+", text)) == 2, text  # cached, misses
    assert "  replica 2: ready" in text, text
    assert re.search(r"visible in DNS on all 3: p50 [\d.]+ ms .* within 10 s: 0$", text, re.M)
    assert re.search(r"database CPU per write with 3 listeners: \d+ µs", text), text
    assert re.search(r"registrations, .*: \d+/s", text), text
    restart = re.search(r"the other 2 answered (\d+) of (\d+) queries \((\d+) failed", text)
    assert restart and int(restart[2]) > 0 and restart[3] == "0", text
    churn = re.search(
        r"churn: (\d+) replace calls of 30 \((\d+) endpoints removed, (\d+) added", text
    )
    # 30 services replaced, 3 endpoints each, plus what the fan-out and registrations added
    assert churn and churn[1] == "30" and int(churn[2]) >= 90 and churn[3] == "90", text
    queries = re.search(r"churn DNS: (\d+) queries sent, (\d+) failed", text)
    assert queries and int(queries[1]) > 0 and queries[2] == "0", text
