"""Run the daemon for bench/dns.sh: `run_app` from the environment's Config, on uvloop.

SIGUSR1 switches the DNS server to the invalidate-every-query mode (every query misses the
answer cache); SIGUSR2 switches it back. SIGTERM/SIGINT stop it. Prints "ready <dns port>".
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop

from service_discovery.app import run_app
from service_discovery.config import Config


async def main() -> None:
    config = Config.from_env()
    logging.basicConfig(level=logging.WARNING)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # A registry of a million endpoints (bench/scale.py) takes longer than run_app's default.
    async with run_app(config, ready_timeout=600) as app:
        assert app.dns is not None
        dns = app.dns

        def mode(miss: bool) -> None:
            dns.invalidate_every_query = miss

        loop.add_signal_handler(signal.SIGUSR1, mode, True)
        loop.add_signal_handler(signal.SIGUSR2, mode, False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"ready {app.dns_port} {app.http_port}", flush=True)
        await stop.wait()
        dns.flush_metrics()
        print(f"dns cache: hits {dns.counters.hits}, misses {dns.counters.misses}", flush=True)


if __name__ == "__main__":
    uvloop.run(main())
