"""CI's short version of the scale bench: bench/scale.py end to end on a small registry (the
100,000-endpoint run is `make bench-scale`). It checks that the bench still runs and that its
correctness parts hold (propagation reaches the other replica, writes succeed), not its speed."""

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
        "WRITES": "50",
        "REGISTRATIONS": "200",
    }
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py")],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    out = res.stdout + res.stderr
    if res.returncode != 0 and "apt-get" in out and "dnsperf" in out:
        pytest.fail(f"dnsperf could not be installed:\n{out[-3000:]}")
    assert res.returncode == 0, out[-5000:]
    assert re.search(r"300 services:\s+[\d.]+s", res.stdout), res.stdout
    assert re.search(r"propagation .* 50 writes: p50 [\d.]+ ms", res.stdout), res.stdout
    assert re.search(r"registrations, .*: \d+/s", res.stdout), res.stdout
