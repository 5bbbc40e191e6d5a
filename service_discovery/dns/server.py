"""The DNS listeners: UDP and TCP on one port, their limits, and the front-end's lifecycle.

This module owns the sockets: binding UDP and TCP on the same port (retrying when port 0
picked a number TCP cannot have), the UDP receive buffer, TCP framing (2-byte length prefix),
the TCP limits (open connections in all and per client address; the idle timeout, which
covers writes as well as reads), stopping with in-flight connections finished within the
shutdown timeout, and the periodic flush of the counters. Reading and answering the UDP
socket in batches is `udp`'s; what a query answers, and the per-query limits, `handler`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable

from service_discovery.config import Config
from service_discovery.dns import udp
from service_discovery.dns.answers import AnswerCache
from service_discovery.dns.counters import Counters
from service_discovery.dns.describe import ServiceRecords, describe
from service_discovery.dns.handler import QueryHandler
from service_discovery.dns.zone import CatalogReads, Zone, ZoneView
from service_discovery.metrics import Metrics
from service_discovery.model import Service

log = logging.getLogger(__name__)

_METRICS_FLUSH_SECONDS = 1.0
_BIND_ATTEMPTS = 50
_UDP_RCVBUF = 4 * 1024 * 1024  # absorb bursts; the kernel caps it at net.core.rmem_max
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, drops the queue
# The kernel's send buffer of a DNS TCP connection (Linux doubles it). Left to autotuning it
# grows to net.ipv4.tcp_wmem's maximum (4 MiB), so a client that never reads would have us
# build and queue some 60 answers of 64 KB before our writes stall; with this, a few.
_TCP_SNDBUF = 64 * 1024


class DnsServer:
    """Serves the zone over UDP and TCP on one port, answering from the catalog's reads."""

    def __init__(
        self,
        config: Config,
        catalog: CatalogReads,
        metrics: Metrics,
        *,
        invalidate_every_query: bool = False,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self.counters = Counters(metrics)
        self._answers = AnswerCache(config.dns_cache_size)
        # The zone's shape is fixed for the process: built once here, not looked up per query.
        self._zone = Zone(config)
        self._view = ZoneView(catalog)
        self._handler = QueryHandler(
            config, self._zone, self._view, self._answers, self.counters, metrics
        )
        self._handler.invalidate_every_query = invalidate_every_query
        self._flush_timer: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = catalog.subscribe(self._handler.changed)
        self._udp: udp.UdpListener | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._tcp_per_client: dict[str, int] = {}
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self._port = 0

    @property
    def port(self) -> int:
        """The bound port (UDP and TCP share it); 0 before `start`."""
        return self._port

    @property
    def invalidate_every_query(self) -> bool:
        """Benchmark mode: every query misses the answer cache."""
        return self._handler.invalidate_every_query

    @invalidate_every_query.setter
    def invalidate_every_query(self, value: bool) -> None:
        self._handler.invalidate_every_query = value
        self._handler.exact.clear()  # no answer kept from before may be served from now on

    def describe(self, service: Service) -> ServiceRecords:
        """The records this server answers for `service`'s names (the dashboard shows them)."""
        return describe(service, self._view, self._zone)

    def respond(self, data: bytes, tcp: bool, client: str | None = None) -> bytes | None:
        """The response to one query message, or None to drop it (see `QueryHandler`)."""
        return self._handler.respond(data, tcp, client)

    def clear_cache(self) -> None:
        self._handler.clear_cache()

    def cache_size(self) -> int:
        return len(self._answers)

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host = self._config.bind_address
        wanted = self._config.dns_port
        for _ in range(_BIND_ATTEMPTS if wanted == 0 else 1):
            # UDP first on the wanted (or an ephemeral) port, then TCP on the same number; with
            # port 0 another socket may hold that TCP port, so pick a new one and retry.
            sock = udp.bind(host, wanted)
            port = sock.getsockname()[1]
            try:
                tcp = await asyncio.start_server(self._serve_tcp, host, port, backlog=1024)
            except OSError as exc:
                sock.close()
                if wanted != 0 or exc.errno != errno.EADDRINUSE:
                    raise
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)
            handler = self._handler
            listener = udp.UdpListener(
                sock, handler.respond_udp, handler.needs_client, handler.exact_udp
            )
            listener.start(loop)
            self._udp, self._tcp, self._port = listener, tcp, port
            self._flush_timer = loop.call_later(_METRICS_FLUSH_SECONDS, self._periodic_flush)
            return
        raise OSError(errno.EADDRINUSE, "no port was free for both DNS UDP and TCP")

    async def stop(self) -> None:
        """Close the listeners and every open TCP connection; flush the metrics. Idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._tcp_writers):
            writer.close()  # their handlers see the stream end and return
        tasks = list(self._tcp_tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._config.shutdown_timeout_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        self.flush_metrics()

    def flush_metrics(self) -> None:
        """Add what was counted since the last flush to the Prometheus metrics."""
        self.counters.flush()

    def _periodic_flush(self) -> None:
        self.counters.flush()
        loop = asyncio.get_running_loop()
        self._flush_timer = loop.call_later(_METRICS_FLUSH_SECONDS, self._periodic_flush)

    # ---- TCP -----------------------------------------------------------------------------
    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Length-prefixed queries, answered in order, until idle, closed or not a query.

        Every wait is under the idle timeout, reads and writes alike: a client that pipelines
        queries and never reads the answers stalls our writes once its buffers are full, and
        is then cut off rather than holding its connection (and a slot of the caps) for ever.
        While a write waits, nothing more is read, so one connection holds at most the
        kernel's send buffer (_TCP_SNDBUF), the transport's write buffer (its high-water mark)
        and the reader's limit in memory, and costs the answers that fill them.
        """
        config = self._config
        client = _host(writer) or ""
        if len(self._tcp_writers) >= config.dns_tcp_max_connections:
            # over the limit: new connections are closed, open ones keep going
            self.counters.limited("tcp_connections", "closed")[0] += 1
            writer.close()
            return
        per_client = self._tcp_per_client.get(client, 0)
        if config.dns_tcp_max_connections_per_client and (
            per_client >= config.dns_tcp_max_connections_per_client
        ):
            # so that one address cannot take every connection, and TCP fallback from others
            self.counters.limited("tcp_per_client", "closed")[0] += 1
            writer.close()
            return
        with contextlib.suppress(OSError, ValueError):  # as in _reset
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _TCP_SNDBUF)
        task = asyncio.current_task()
        assert task is not None
        self._tcp_per_client[client] = per_client + 1
        self._tcp_writers.add(writer)
        self._tcp_tasks.add(task)
        gauge = self._metrics.dns_tcp_connections
        gauge.inc()
        idle = config.dns_tcp_idle_seconds
        respond = self._handler.respond
        stalled = False
        try:
            while True:
                async with asyncio.timeout(idle):
                    prefix = await reader.readexactly(2)
                    message = await reader.readexactly(int.from_bytes(prefix, "big"))
                response = respond(message, True, client)
                if response is None:
                    break  # no header or not a query: the stream cannot be trusted any more
                writer.write(len(response).to_bytes(2, "big") + response)
                try:  # drain waits only while the buffer is above its high-water mark
                    async with asyncio.timeout(idle):
                        await writer.drain()
                except TimeoutError:
                    stalled = True
                    break
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # closed by the client, idle too long, not reading, or reset: normal endings
        finally:
            try:
                await self._close(writer, stalled, idle)
            finally:
                self._tcp_writers.discard(writer)
                self._tcp_tasks.discard(task)
                gauge.dec()
                left = self._tcp_per_client.pop(client, 1) - 1
                if left:
                    self._tcp_per_client[client] = left

    async def _close(self, writer: asyncio.StreamWriter, stalled: bool, idle: float) -> None:
        """Close a connection. Answers already written get `idle` seconds more to be read; a
        client that does not read them, or whose reading stalled a write, is reset."""
        if not stalled:
            writer.close()
            if not writer.transport.get_write_buffer_size():
                return
            try:
                async with asyncio.timeout(idle):
                    await writer.wait_closed()
                return
            except ConnectionError:
                return  # reset by the client meanwhile
            except TimeoutError:
                pass
            finally:  # also when cancelled at stop: never leave behind a socket that cannot flush
                if writer.transport.get_write_buffer_size():
                    _reset(writer)
        else:
            _reset(writer)
        self.counters.limited("tcp_write_timeout", "closed")[0] += 1


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop a connection and what is queued for it, with an RST. A plain close would keep
    sending the queued answers (the kernel's copy, up to its send buffer) for as long as the
    client takes to read them, or never reads them."""
    # The socket may be gone already (the client reset it meanwhile): uvloop's stand-in for
    # it then raises ValueError (a negative descriptor), and aborting is all there is to do.
    with contextlib.suppress(OSError, ValueError):
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


def _host(writer: asyncio.StreamWriter) -> str | None:
    """The client's address of a TCP connection (None if the socket has none)."""
    peer = writer.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) else None
