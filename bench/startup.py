"""Start-up and reload of a large registry copy, and whether probes and DNS stay answered meanwhile.

1. Bulk-load SERVICES services with 2 named ports and PER_SERVICE endpoints each into a scratch
   database with SQL (versions as sd_bump would give them: service i has version i).
2. Spawn the daemon pinned to one core; from the other core, probe it in turn: GET /healthz,
   one DNS A query (UDP; SERVFAIL until loaded), GET /ready, until /ready says 200. Print time
   from spawn to /ready 200, the probes' p50/p99/max while loading, RSS and peak RSS.
3. Reload: terminate every backend of the database (the LISTEN connection among them): the
   daemon reconnects and reloads everything. Probe the same way until sd_sync_full_reloads_total
   moves: print the reload's duration, probe latencies, and how many DNS answers were not a
   NOERROR answer with records (the old copy must keep answering until the new one is in).

Run: .venv/bin/python bench/startup.py   (env SERVICES=100000 PER_SERVICE=10; any daemon setting,
e.g. DB_TIMEOUT_SECONDS, is passed through; LOADED_DATABASE_URL: a database this bench loaded
before, used as it is and kept). Loopback only; every process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Daemon, bulk_load, metric, percentile, pin, scratch_database

SERVICES = int(os.environ.get("SERVICES", "100000"))
PER_SERVICE = int(os.environ.get("PER_SERVICE", "10"))
ZONE = "svc.cluster.local"
SERVER_CORE, CLIENT_CORE = 0, 1
LIMIT_SECONDS = float(os.environ.get("LIMIT_SECONDS", "180"))  # each probing loop stops after this


def dns_query(name: str) -> bytes:
    import dns.message

    return dns.message.make_query(f"{name}.{ZONE}", "A").to_wire()


class Prober:
    """Times one /healthz and one DNS query per round, from this (other) core."""

    def __init__(self, daemon: Daemon, name: str) -> None:
        self.daemon = daemon
        self.query = dns_query(name)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)
        self.healthz: list[float] = []
        self.dns: list[float] = []
        self.dns_not_answered = 0  # not NOERROR with records (SERVFAIL while loading, or lost)

    def round(self) -> None:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(self.daemon.base + "/healthz", timeout=5) as r:
                r.read()
            self.healthz.append((time.perf_counter() - started) * 1000)
        except TimeoutError:  # a loop stalled longer than the probe waits: counted at that
            self.healthz.append((time.perf_counter() - started) * 1000)
        except OSError:
            if self.daemon.proc.poll() is not None:
                raise RuntimeError("daemon exited") from None
            return  # not listening yet
        started = time.perf_counter()
        self.sock.sendto(self.query, ("127.0.0.1", self.daemon.dns_port))
        try:
            reply = self.sock.recv(4096)
            self.dns.append((time.perf_counter() - started) * 1000)
            rcode, answers = reply[3] & 0x0F, int.from_bytes(reply[6:8], "big")
            if rcode != 0 or answers == 0:
                self.dns_not_answered += 1
        except TimeoutError:
            self.dns_not_answered += 1

    def report(self, what: str) -> None:
        for label, values in (("/healthz", self.healthz), ("DNS A", self.dns)):
            if values:
                print(f"  {label:8} during {what}: n={len(values):5d}  "
                      f"p50 {percentile(values, 50):7.1f} ms  p99 {percentile(values, 99):7.1f} "
                      f"ms  max {max(values):7.1f} ms")  # fmt: skip


def ready(daemon: Daemon) -> bool:
    try:
        with urllib.request.urlopen(daemon.base + "/ready", timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False
    except OSError:
        return False


def reloaded(daemon: Daemon) -> float:
    """sd_sync_full_reloads_total, or 0 while the daemon does not answer within 5 s."""
    try:
        return metric(daemon.base, "sd_sync_full_reloads_total")
    except OSError:
        return 0.0


def terminate_backends(url: str) -> int:
    """Cut every connection to the registry's database (the daemon's LISTEN one among them)."""
    dbname = url.rpartition("/")[2]
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    pin(CLIENT_CORE)
    endpoints = SERVICES * PER_SERVICE
    with contextlib.ExitStack() as stack:
        url = os.environ.get("LOADED_DATABASE_URL", "")  # already loaded this way: reused
        if not url:
            url = stack.enter_context(scratch_database())
            took = bulk_load(url, SERVICES, PER_SERVICE)
            print(f"bulk load: {SERVICES} services, {endpoints} endpoints, {2 * SERVICES} "
                  f"named ports in {took:.1f}s")  # fmt: skip
        daemon = Daemon(url, core=SERVER_CORE)
        try:
            print(daemon.settings())
            started = time.monotonic()
            probe = Prober(daemon, f"svc-{SERVICES // 2}")
            while not ready(daemon):
                if time.monotonic() - started > LIMIT_SECONDS:
                    raise RuntimeError("not ready in time")
                probe.round()
                time.sleep(0.01)
            took = time.monotonic() - started
            cpu = daemon.cpu_seconds()
            print(f"start-up, spawn to /ready 200 (daemon pinned to core {SERVER_CORE}): "
                  f"{took:.2f}s  (target < 10 s); the daemon's CPU meanwhile {cpu:.2f}s"
            )  # fmt: skip
            probe.report("start-up")
            print(f"  RSS {daemon.rss_mib():.1f} MiB, peak {daemon.peak_rss_mib():.1f} MiB")

            reloads = metric(daemon.base, "sd_sync_full_reloads_total")
            probe = Prober(daemon, f"svc-{SERVICES // 2}")
            for _ in range(50):  # the copy must answer before the reload starts
                probe.round()
            probe = Prober(daemon, f"svc-{SERVICES // 2}")
            cut = terminate_backends(url)
            started = time.monotonic()
            cpu = daemon.cpu_seconds()
            while reloaded(daemon) <= reloads:
                if time.monotonic() - started > LIMIT_SECONDS:
                    raise RuntimeError("no reload in time")
                for _ in range(5):
                    probe.round()
                    time.sleep(0.01)
            took = time.monotonic() - started
            cpu = daemon.cpu_seconds() - cpu
            print(f"reload after {cut} backends were terminated: {took:.2f}s to "
                  f"sd_sync_full_reloads_total + 1; the daemon's CPU meanwhile {cpu:.2f}s"
            )  # fmt: skip
            probe.report("reload")
            print(f"  DNS answers without records during the reload: {probe.dns_not_answered} "
                  f"of {len(probe.dns)}  (target 0: the old copy serves)")  # fmt: skip
            print(f"  peak RSS {daemon.peak_rss_mib():.1f} MiB")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
